"""Accounts for a lab's server: who may look (viewer), review (reviewer) and choose the served model (admin). Once an
account exists, serve requires a valid token on every /v1 route and records each review under its account. A token
is shown once, when it is made; only its hash is stored (HOME/accounts.sqlite)."""

from __future__ import annotations

from typing import Annotated

import typer

from cellmorphnet.cli._options import JsonFlag, home_of
from cellmorphnet.cli.output import output

NAME = "users"
app = typer.Typer(no_args_is_help=True, add_completion=False)

UserArg = Annotated[str, typer.Argument(help="The account's name (a person's, as reviews will show it).",
                                        show_default=False)]  # fmt: skip


def _accounts(ctx: typer.Context, *, read_only: bool = False):
    from cellmorphnet.serve.accounts import Accounts, accounts_path

    return Accounts(accounts_path(home_of(ctx)), read_only=read_only)


def _show_token(name: str, token: str, as_json: bool, data: dict) -> None:
    def human() -> None:
        output.info(f"The token of {name} (shown this once; only its hash is kept):")
        output.out.print(token, soft_wrap=True, markup=False)

    output.result({**data, "token": token}, human, as_json=as_json)


@app.command("add")
def add(
    ctx: typer.Context,
    name: UserArg,
    role: Annotated[str, typer.Option("--role", help="viewer, reviewer or admin.")] = "reviewer",
    as_json: JsonFlag = False,
) -> None:
    """Add an account and print its token once."""
    with _accounts(ctx) as accounts:
        first = not accounts.any()
        account, token = accounts.add(name, role)
    _show_token(account.name or name, token, as_json, account.to_dict())
    if first:
        output.info("This is the first account: serve now requires a valid token on every /v1 route.")


@app.command("token")
def new_token(ctx: typer.Context, name: UserArg, as_json: JsonFlag = False) -> None:
    """Give an account a new token (the old one stops working at once)."""
    with _accounts(ctx) as accounts:
        token = accounts.new_token(name)
    _show_token(name, token, as_json, {"name": name})


@app.command("remove")
def remove(ctx: typer.Context, name: UserArg, as_json: JsonFlag = False) -> None:
    """Remove an account (its reviews keep its name)."""
    with _accounts(ctx) as accounts:
        accounts.remove(name)
        left = len(accounts.list())
    output.result({"removed": name, "accounts": left},
                  lambda: output.info(f"Removed {name}; {left} account{'s' if left != 1 else ''} left."
                                      + ("" if left else " serve is open again to the shared --token alone.")),
                  as_json=as_json)  # fmt: skip


@app.command("list")
def list_accounts(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The accounts and their roles (never their tokens)."""
    from cellmorphnet.serve.accounts import accounts_path

    if not accounts_path(home_of(ctx)).is_file():
        rows = []
    else:
        with _accounts(ctx, read_only=True) as accounts:
            rows = accounts.list()

    def human() -> None:
        if not rows:
            output.info("No accounts: serve uses the shared --token (or none). Add one with: cellmorphnet users add "
                        "NAME --role reviewer")  # fmt: skip
            return
        from rich.table import Table

        table = Table(title=f"{len(rows)} account{'s' if len(rows) != 1 else ''}", title_justify="left")
        table.add_column("name", overflow="fold")
        table.add_column("role")
        table.add_column("added", overflow="fold")
        for a in rows:
            table.add_row(a.name or "", a.role, (a.created or "")[:19].replace("T", " "))
        output.out.print(table)

    output.result([a.to_dict() for a in rows], human, as_json=as_json)
