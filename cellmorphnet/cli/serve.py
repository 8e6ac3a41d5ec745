"""Serve a run over HTTP: a REST API (/v1, OpenAPI at /docs) and a web page at / for the people around you.

Loads the model once and classifies uploads exactly as infer does. Binds to 127.0.0.1 unless told
otherwise; on a network, set a token. Needs the serve extra: pipx install "cellmorphnet\\[serve]".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import DeviceOption, EngineOption, LabOption, MaxCellsOption, home_of
from cellmorphnet.cli.output import output
from cellmorphnet.serve.settings import Limits

LIMITS = Limits()  # the flags' defaults (one place: serve/settings.py)
MB = 1024 * 1024

NAME = "serve"
ENV_TOKEN = "CELLMORPHNET_TOKEN"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def command(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="A run name or folder, 'latest', or the model that ships with cellmorphnet "
                                   "\\[default: this home's served model: the last 'lab promote', else bloodmnist].",
                                   show_default=False)
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    device: DeviceOption = "auto",
    engine: EngineOption = "auto",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar=ENV_TOKEN, help="Require 'Authorization: Bearer TOKEN' on every /v1 route.",
                     show_default=False),
    ] = None,  # fmt: skip
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Allow browser pages from this origin to call the API (repeatable).",
                     show_default=False),
    ] = None,  # fmt: skip
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="Also answer requests addressed to this host name (repeatable); "
                     "by default only the bound address and localhost (any, with 0.0.0.0).", show_default=False),
    ] = None,  # fmt: skip
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Images per forward pass across requests (1: no micro-batching).")
    ] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option("--batch-wait-ms", help="How long to wait for other requests to join a batch.")
    ] = 5.0,
    max_files: Annotated[int, typer.Option("--max-files", help="Files per request.")] = LIMITS.max_files,
    max_file_mb: Annotated[
        float, typer.Option("--max-file-mb", help="Size of one file, in MB.")
    ] = LIMITS.max_file_bytes / MB,
    max_request_mb: Annotated[
        float, typer.Option("--max-request-mb", help="Size of one request, in MB.")
    ] = LIMITS.max_request_bytes / MB,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", help="Decoded size of one image (decompression bombs).")
    ] = LIMITS.max_pixels / 1e6,
    max_request_megapixels: Annotated[
        float, typer.Option("--max-request-megapixels", help="Decoded size of all the images of one request.")
    ] = LIMITS.max_request_pixels / 1e6,
    max_concurrent_sets: Annotated[
        int, typer.Option("--max-concurrent-sets", help="Requests decoding their images at the same time (each "
                          "holds at most --max-request-megapixels decoded).")
    ] = LIMITS.max_concurrent_sets,
    reviews_db: Annotated[
        Path | None, typer.Option("--reviews", help="The review database \\[default: HOME/reviews.sqlite].",
                                  show_default=False)
    ] = None,
    extra_class: Annotated[
        list[str] | None,
        typer.Option("--extra-class", help="A class reviewers may give besides the model's (repeatable), e.g. "
                     "smudge or blast; train --init adds it to the adapted model.", show_default=False),
    ] = None,  # fmt: skip
    max_connections: Annotated[
        int, typer.Option("--max-connections", help="Open connections; past this, requests are answered 503.")
    ] = 100,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", help="Seconds a connection has to send a request's headers.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", help="Seconds an upload may fall behind --min-upload-kbps before it "
                            "is cut off (408).")
    ] = LIMITS.body_timeout_s,
    min_upload_kbps: Annotated[
        float, typer.Option("--min-upload-kbps", help="The slowest upload served, in KB/s (after --body-timeout).")
    ] = LIMITS.min_upload_rate / 1000,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", help="Seconds one request's work (decoding, finding cells, the model) "
                            "may take; past it the request is answered 503 and its worker freed.")
    ] = LIMITS.request_timeout_s,
    max_json_kb: Annotated[
        float, typer.Option("--max-json-kb", help="Size of a JSON body (a review), in KB.")
    ] = LIMITS.max_json_bytes / 1024,
    max_cells: MaxCellsOption = None,
    lab: LabOption = None,
    adapt_steps: Annotated[
        int | None, typer.Option("--adapt-steps", help="Optimizer steps of an adaptation started from the review page "
                                 "\\[default: train --init's, 300].", show_default=False)
    ] = None,
) -> None:
    from cellmorphnet.errors import ConfigError
    from cellmorphnet.runs import folders as runs

    if not 1 <= port <= 65535:
        raise ConfigError("--port must be between 1 and 65535.")
    if min(max_files, max_file_mb, max_request_mb, max_megapixels, max_request_megapixels, max_concurrent_sets,
           max_connections) <= 0:
        raise ConfigError("The --max-* limits must be positive.")
    if min(header_timeout, body_timeout, min_upload_kbps, request_timeout, max_json_kb) <= 0:
        raise ConfigError("--header-timeout, --body-timeout, --min-upload-kbps, --request-timeout and --max-json-kb "
                          "must be positive.")  # fmt: skip
    import os

    if token is None and os.environ.get(ENV_TOKEN) is not None:  # set but empty: Typer reads it as unset
        token = os.environ[ENV_TOKEN]
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError:
        hint = 'pipx install "cellmorphnet[serve]" (or pip install "cellmorphnet[serve]").'
        raise ConfigError("cellmorphnet serve needs its extra packages.", hint=hint) from None
    from cellmorphnet.serve.app import create_app
    from cellmorphnet.serve.connections import OverloadNotices, protocol_class
    from cellmorphnet.serve.security import check_token_value, trusted_hosts
    from cellmorphnet.serve.service import ModelService

    check_token_value(token)  # before the model loads

    from cellmorphnet.labs.served import run_name, served_run

    home = home_of(ctx)
    if adapt_steps is not None and adapt_steps <= 0:
        raise ConfigError("--adapt-steps must be positive.")
    run_dir = runs.resolve_run(run, home) if run is not None else served_run(home)[1]
    _check_port(host, port)
    limits = Limits(max_file_bytes=int(max_file_mb * MB), max_request_bytes=int(max_request_mb * MB),
                    max_files=max_files, max_pixels=int(max_megapixels * 1_000_000),
                    max_request_pixels=int(max_request_megapixels * 1_000_000),
                    max_concurrent_sets=max_concurrent_sets, body_timeout_s=body_timeout,
                    min_upload_rate=min_upload_kbps * 1000, request_timeout_s=request_timeout,
                    max_json_bytes=int(max_json_kb * 1024))  # fmt: skip
    output.info(f"Loading {run_dir.name} …")

    def load(folder: Path, lab_name: str | None = None) -> ModelService:
        return ModelService(folder, checkpoint, device, max_batch=max_batch, max_wait_ms=batch_wait_ms, limits=limits,
                            max_cells=max_cells, lab=lab_name, home=home, engine=engine).warm_up()  # fmt: skip

    service = load(run_dir, lab)  # a broken run fails here, before the port opens
    from cellmorphnet.reviews.store import ReviewStore, check_class_name, store_path
    from cellmorphnet.serve.accounts import Accounts, accounts_path
    from cellmorphnet.serve.desk import Desk

    accounts = Accounts(accounts_path(home))
    people = len(accounts.list())
    if people:
        output.info(f"{people} account{'s' if people != 1 else ''} (cellmorphnet users list): every /v1 route needs a "
                    "valid token" + (", or the shared --token." if token else "."))  # fmt: skip
    elif host not in LOCAL_HOSTS and not token:
        output.warn(f"Listening on {host} without a token: anyone who can reach this machine can use the model. "
                     f"Set --token or {ENV_TOKEN}, or add accounts (cellmorphnet users add).")  # fmt: skip
    extra = [check_class_name(c) for c in extra_class or []]
    store = ReviewStore(reviews_db or store_path(home), [*service.classes, *extra])
    desk = Desk(home, store, load, served=(run_name(run_dir, home), run_dir), device=device, adapt_steps=adapt_steps)
    app = create_app(service, token=token, cors_origins=cors_origin or None, hosts=trusted_hosts(host, allowed_host),
                     reviews=store, accounts=accounts, desk=desk)  # fmt: skip
    shown = f"[{host}]" if ":" in host else host
    from cellmorphnet.inference.engine import is_engine

    on = "ONNX Runtime, cpu" if is_engine(service.rm.model) else f"PyTorch, {service.rm.device}"
    output.info(f"Serving {run_dir.name} ({len(service.classes)} classes, {on}) on "
                 f"http://{shown}:{port}/  (API docs: /docs; Ctrl+C stops)")  # fmt: skip
    import logging

    served = logging.getLogger("cellmorphnet.serve")  # the server's own one-line notices (a client that went away...)
    if not served.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        served.addHandler(handler)
    served.setLevel(logging.INFO)
    served.propagate = False
    logging.getLogger("uvicorn.error").addFilter(OverloadNotices())  # not a line per 503 under a burst
    try:
        # uvicorn's own settings where they cover it (idle keep-alive 5 s, 503 past the connection cap); the header
        # deadline and making room are on its h11 protocol (serve.connections), the body deadline in the app (408)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    http=protocol_class(header_timeout, max_connections, min_upload_kbps * 1000),
                    limit_concurrency=max_connections + 1,
                    timeout_keep_alive=5)  # fmt: skip
    finally:
        desk.close()
        app.state.service.close()
        store.close()
        accounts.close()


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before spending time on the model."""
    import socket

    from cellmorphnet.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"Cannot listen on '{host}' ({e.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ConfigError(f"Cannot listen on {host}:{port} ({e.strerror}).",
                              hint="Another program uses that port: pick another with --port.") from None  # fmt: skip
