"""Who may use the server: the bearer token (a dependency of every ``/v1`` route), the host names it answers
(against DNS rebinding) and the origins whose POSTs it serves."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def trusted_hosts(bound: str, allowed: list[str] | None = None) -> list[str]:
    """The ``Host`` header values the server answers: the address it is bound to, the loopback names and ``allowed``
    (``--allowed-host``). Bound to every interface (0.0.0.0 or ::), any name, unless ``allowed`` narrows it.

    A server that answers any ``Host`` is open to DNS rebinding: a web page whose name is made to resolve to
    127.0.0.1 is then same-origin with the local server, and its scripts can read the answers.
    """
    if bound in ("0.0.0.0", "::", ""):
        return [*LOOPBACK_NAMES, *allowed] if allowed else ["*"]
    name = f"[{bound}]" if ":" in bound else bound
    return sorted({name.lower(), *LOOPBACK_NAMES, *(a.lower() for a in allowed or [])})


class OriginCheck:
    """Refuse a state-changing request (POST...) whose ``Origin`` is neither the server's own nor a CORS origin.

    A browser sends a form POST to any server without asking (no CORS preflight), and the server would act on
    it: any web page could use a local server that has no token. Such a request carries the page's ``Origin``,
    so it is refused here (403), with or without a token. Requests without ``Origin`` (curl, scripts) pass.
    """

    def __init__(self, app, allowed: list[str] | None = None) -> None:
        self.app = app
        self.allowed = {o.rstrip("/") for o in allowed or []}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
            if origin is not None and origin.decode("latin-1") not in {own, *self.allowed}:
                response = JSONResponse({"detail": "Cross-origin requests are refused (see --cors-origin)."}, 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_token_value(token: str | None) -> None:
    """Refuse an empty token (``--token ''``): every client would pass with ``Authorization: Bearer ``."""
    from cellmorphnet.errors import ConfigError

    if token is not None and not token.strip():
        raise ConfigError("The token is empty: every client would pass with 'Authorization: Bearer '.",
                          hint="Give a real token, or leave out --token (and unset CELLMORPHNET_TOKEN).")  # fmt: skip


def bearer_guard(token: str | None, accounts=None) -> Callable[[Request], None]:
    """The dependency of every ``/v1`` route: who the request comes from, kept in ``request.state.account``.

    With ``accounts`` (a ``serve.accounts.Accounts``) that hold any account, ``Authorization: Bearer <token>`` must
    be an account's token or the shared ``token``; with none, the shared ``token`` alone (nothing when it is None).
    The shared token's holder, and anyone on a server with neither, acts as an unnamed admin (one-person use)."""
    from cellmorphnet.serve.accounts import ANONYMOUS_ADMIN

    check_token_value(token)
    expected = token.encode("utf-8") if token is not None else b""

    def refuse() -> None:
        raise HTTPException(401, "A valid 'Authorization: Bearer <token>' header is required.",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    def check_token(request: Request) -> None:
        with_accounts = accounts is not None and accounts.any()
        request.state.account = ANONYMOUS_ADMIN
        if token is None and not with_accounts:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer":
            refuse()
        # HTTP headers arrive as bytes, which Starlette hands over decoded as Latin-1: encoding them back gives the
        # bytes the client sent (UTF-8 for a non-ASCII token), compared with the token's own UTF-8 bytes
        sent = value.strip().encode("latin-1")
        if token is not None and secrets.compare_digest(sent, expected):
            return
        account = accounts.authenticate(value) if with_accounts and sent.isascii() else None
        if account is None:
            refuse()
        request.state.account = account

    return check_token


def require(right: str) -> Callable[[Request], None]:
    """A route's dependency: the request's account must have ``right`` (``serve.accounts.RIGHTS``), else 403."""

    def check_right(request: Request) -> None:
        account = getattr(request.state, "account", None)
        if account is None or not account.may(right):
            role = getattr(account, "role", "none")
            raise HTTPException(403, f"A {role} may not do this (it needs the right to {right}).")

    return check_right
