"""The FastAPI application of ``cellmorphnet serve``: the REST API (``/v1``), health checks, and the web page.

Built around a ``service.ModelService`` that is already loaded; everything here is HTTP: routes,
the bearer token, request limits, and turning predictions into JSON. Uploads are read into memory
(bounded by the request limit) and parsed there; nothing uploaded is written to disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from cellmorphnet.errors import Conflict, InvalidData, LimitExceeded, NotFound, TimeLimit
from cellmorphnet.serve.service import Limits, ModelService

log = logging.getLogger("cellmorphnet.serve")  # the CLI shows its INFO lines
STATIC = resources.files(__package__) / "static"
API_VERSION = "v1"


class _Refused(Exception):
    """A request refused with an HTTP status: 413 over a limit, 400 malformed, 408 too slow (``close``: the
    connection is closed after the answer, whatever of the body is still coming)."""

    def __init__(self, message: str, status: int = 400, *, close: bool = False) -> None:
        self.message = message
        self.status = status
        self.close = close


def _too_large(message: str) -> _Refused:
    return _Refused(message, 413)


def _prediction_json(p) -> dict[str, Any]:
    d = p.to_dict()
    d["file"] = d.pop("path")
    d["status"] = "error" if p.error else p.status
    return d


def _file_results(preds) -> list[dict[str, Any]]:
    """One result per uploaded file, in order: a crop's prediction as before (and as its one cell), or a field's
    cells (``cells``: each with its box, edge flag and prediction; top-level ``predicted`` is null)."""
    by_file: dict[Any, list] = {}
    for p in preds:
        by_file.setdefault(p.source, []).append(p)
    out = []
    for rows in by_file.values():
        first = rows[0]
        info = first.image
        if info is not None and info.kind == "field":
            cells = [_prediction_json(p) for p in rows if p.cell is not None]
            out.append({"file": str(first.source), "kind": "field", "status": "error" if first.error else
                        ("ok" if cells else "no cells"), "error": first.error, "predicted": None, "confidence": None,
                        "top_k": [], "rbc_diameter_px": None if info.diameter is None else round(info.diameter, 1),
                        "microns_per_pixel": None if info.microns_per_pixel is None else
                        round(info.microns_per_pixel, 4), "cells": cells})  # fmt: skip
        else:
            d = _prediction_json(first)
            d["cells"] = [] if first.error else [dict(d)]
            out.append(d)
    return out


def model_card(service: ModelService) -> dict[str, Any]:
    """What ``GET /v1/model`` answers: what the model is, how it preprocesses, and how well it did."""
    from cellmorphnet._io import read_json
    from cellmorphnet.data import registry

    rec = service.rm.record
    metrics = None
    report = service.run_dir / "eval" / "test" / "metrics.json"
    if report.exists():
        try:
            data = read_json(report)
            metrics = {name: {k: d.get("metrics", {}).get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
                       for name, d in data.get("datasets", {}).items()}  # fmt: skip
        except (OSError, ValueError):
            metrics = None
    datasets = []
    for name, d in rec.datasets.items():
        info = registry.get_info(name) if name in registry.sources() else None
        datasets.append({"name": name, "size": d.size, "title": info.title if info else None,
                         "licence": info.licence if info else None, "verified": d.verified})  # fmt: skip
    o = service.options
    return {
        "run": service.run_dir.name,
        "classes": service.classes,
        "input_size": rec.image_size,
        "architecture": rec.config.model,
        "epoch": service.rm.epoch,
        "checkpoint": service.rm.checkpoint.name,
        "checkpoint_sha256": service.checkpoint_sha256(),
        "datasets": datasets,
        "preprocessing": {**o.policy.to_dict(), "stain_norm": o.stain_norm, "colour_match": o.colour_match,
                          "stain_contrast": o.stain_contrast,
                          "tta": o.tta, "temperature": o.temperature,
                          "set": "the files of one request"},  # fmt: skip
        "test_metrics": metrics,
        "device": str(service.rm.device),
        "micro_batching": {"max_batch": service.batcher.max_batch, "max_wait_ms": service.batcher.max_wait * 1000},
        "limits": {**dataclasses.asdict(service.limits), "max_cells_per_field": o.max_cells},
        "notice": "Research tool: not a medical device; its predictions are not a diagnosis.",
    }


async def _read_files(request: Request, field: str, limits: Limits) -> list[tuple[str, bytes]]:
    """The uploaded files of a multipart request, in order, as ``(name, bytes)``; the limits enforced on the way."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise _too_large(f"The request is larger than {limits.max_request_bytes:,} bytes.")
    body = bytearray()
    who = f"{request.client.host}:{request.client.port}" if request.client else "a client"

    async def receive() -> None:
        # every byte buys time: the upload may lag ``body_timeout_s`` behind ``min_upload_rate`` at most
        loop = asyncio.get_running_loop()
        start, chunks = loop.time(), request.stream().__aiter__()
        while True:
            deadline = start + limits.body_timeout_s + len(body) / limits.min_upload_rate
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                return
            body.extend(chunk)
            if len(body) > limits.max_request_bytes:
                raise _too_large(f"The request is larger than {limits.max_request_bytes:,} bytes.")

    try:
        await receive()
    except ClientDisconnect:  # an everyday event, not an error of the server: one line, no traceback
        log.info("%s disconnected during its upload (%s bytes received)", who, f"{len(body):,}")
        raise _Refused("The client disconnected during the upload.") from None
    except asyncio.TimeoutError:  # a slow (or slowloris) client: cut off, its connection closed
        log.info("%s uploaded too slowly (%s bytes received): cut off", who, f"{len(body):,}")
        rate = f"{limits.min_upload_rate / 1000:g} KB/s"
        raise _Refused(f"The upload was too slow (it fell {limits.body_timeout_s:g} s behind {rate}).", 408,
                       close=True) from None  # fmt: skip
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise _Refused("Send the images as multipart/form-data.")

    async def once():
        yield bytes(body)

    parser = MultiPartParser(request.headers, once(), max_files=limits.max_files + 1, max_fields=100)
    parser.spool_max_size = len(body) + 1  # keep every part in memory (the body is already bounded)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "Too many files" in e.message:
            raise _too_large(f"At most {limits.max_files} files per request.") from None
        raise _Refused(f"Malformed multipart body ({e.message}).") from None
    files = []
    try:
        for key, value in form.multi_items():
            if key != field or not isinstance(value, UploadFile):
                continue
            data = await value.read()
            if len(data) > limits.max_file_bytes:
                raise _too_large(f"{value.filename}: larger than {limits.max_file_bytes:,} bytes.")
            files.append((value.filename or "", data))
    finally:
        await form.close()
    if len(files) > limits.max_files:
        raise _too_large(f"At most {limits.max_files} files per request.")
    if not files:
        raise _Refused(f"No files: send the images as multipart form field '{field}'.")
    return files


def _multipart(field: str, many: bool) -> dict[str, Any]:
    """The OpenAPI request body of an upload route (the body is parsed by hand, so it is declared here)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [field], "properties": {field: schema}}}}}}  # fmt: skip


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
MAX_COORD = 1_000_000  # a pixel coordinate or diameter in a query (each is checked against its image too)
MAX_ID = 2**63 - 1  # SQLite's largest integer: a cell id beyond it is no cell
CellId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A cell's id, as the case lists it.")]
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


UPLOAD_ROUTES = re.compile(rf"^/{API_VERSION}/(predict|gradcam|cases/.+/cells)$")


class _BodyRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        self.message, self.status = message, status


class BodyLimit:
    """Every request body under a size limit and a read deadline, before any route sees it.

    The upload routes (``UPLOAD_ROUTES``) read their multipart bodies themselves, bounded and timed as they come
    (``_read_files``). Every other body (a review is a few hundred bytes of JSON; anything else sent there) is
    read here whole, at most ``max_json_bytes`` (413), and cut off (408, connection closed) once it falls
    ``body_timeout_s`` behind ``min_upload_rate``, as uploads are, so no slow body holds a connection for ever.
    """

    def __init__(self, app, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if UPLOAD_ROUTES.match(scope["path"]):  # read, bounded and timed by ``_read_files`` as it comes
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.limits.max_json_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, f"The request body is larger than {limit:,} bytes.", 413)
            return
        loop = asyncio.get_running_loop()
        start, received = loop.time(), 0

        async def limited_receive():
            nonlocal received
            deadline = start + self.limits.body_timeout_s + received / self.limits.min_upload_rate
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyRefused("The request body came too slowly.", 408) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyRefused(f"The request body is larger than {limit:,} bytes.", 413)
            return message

        body = bytearray()
        try:
            while True:
                message = await limited_receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        except _BodyRefused as e:
            log.info("a request body was refused: %s", e.message)
            await self._refuse(scope, receive, send, e.message, e.status)
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # (a disconnect, once the answer is on its way)

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, message: str, status: int) -> None:
        response = JSONResponse({"detail": message}, status_code=status, headers={"Connection": "close"})
        await response(scope, receive, send)


class ReviewBody(BaseModel):
    """A reviewer's decision on one cell."""

    model_config = ConfigDict(populate_by_name=True)
    cls: str = Field(alias="class", description="The cell's class: one of GET /v1/cases/{case}'s classes.")
    reviewer: str | None = Field(None, description="Who reviewed it (optional).")


class UndoBody(BaseModel):
    reviewer: str | None = None


def _review_routes(v1: APIRouter, service: ModelService, store, limits: Limits) -> None:
    """Cases of cells, their reviews and the export: the routes of the review view (docs/serve.md, "Review").

    A case name is one path segment of printable text (``reviews.check_name``); the routes take the rest of the
    path as the name, so a name with '/' (a date such as 2026/12/06) is answered with why it is refused rather
    than a bare 404. ``InvalidData`` is answered 422, ``NotFound`` 404 (``create_app``'s handlers)."""
    from cellmorphnet.reviews.export import export
    from cellmorphnet.reviews.store import ENOUGH_PER_TYPE

    def case_json(case: str) -> dict[str, Any]:
        cells = store.cells(case)
        return {"case": case, "classes": store.classes, "cells": [c.to_dict() for c in cells],
                "reviewed": sum(c.reviewed is not None for c in cells)}  # fmt: skip

    @v1.get("/cases", tags=["review"])
    def cases() -> dict[str, Any]:
        """Every case: name, when it was opened, its cells and how many are reviewed."""
        return {"classes": store.classes, "cases": store.cases(), "enough_per_type": ENOUGH_PER_TYPE}

    @v1.post("/cases/{case:path}/cells", tags=["review"], openapi_extra=_multipart("files", many=True))
    async def add_cells(request: Request, case: str) -> dict[str, Any]:
        """Classify images (multipart field `files`) and keep their cells in the case (opened if new)."""
        from cellmorphnet.reviews.store import check_name
        from cellmorphnet.serve.service import add_to_case

        check_name(case, "case name", required=True)  # before the upload is read
        files = await _read_files(request, "files", limits)
        stored, skipped = await run_in_threadpool(add_to_case, service, store, case, files)
        return {**case_json(case), "added": [c.id for c in stored], "skipped": skipped}

    @v1.get("/cases/{case:path}/export", tags=["review"], responses={200: {"content": {"application/zip": {}}}})
    def export_zip(case: str):
        """The case's reviewed cells as a dataset (class folders and cells.csv), zipped: what
        `cellmorphnet reviews export` writes."""
        import io
        import tempfile
        import zipfile
        from pathlib import Path

        from cellmorphnet.reviews.export import safe_stem

        with tempfile.TemporaryDirectory() as tmp:
            export(store, Path(tmp) / "cells", case)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted((Path(tmp) / "cells").rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(Path(tmp) / "cells").as_posix())
        name = f"{safe_stem(case)}-reviewed.zip"
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip

    @v1.get("/cases/{case:path}", tags=["review"])
    def get_case(case: str) -> dict[str, Any]:
        """A case's cells with the model's prediction and their current review."""
        if case not in {c["name"] for c in store.cases()}:
            raise NotFound(f"There is no case '{case}'.")
        return case_json(case)

    @v1.post("/cells/{cell_id}/review", tags=["review"])
    def review(cell_id: CellId, body: ReviewBody) -> dict[str, Any]:
        """Confirm or reassign a cell (422 for a class that is not one of the case's classes)."""
        return store.review(cell_id, body.cls, body.reviewer).to_dict()

    @v1.post("/cells/{cell_id}/undo", tags=["review"])
    def undo(cell_id: CellId, body: UndoBody | None = None) -> dict[str, Any]:
        """Take back the cell's latest review (kept in its history; 409 when there is none)."""
        return store.undo(cell_id, body.reviewer if body else None).to_dict()

    @v1.get("/cells/{cell_id}/history", tags=["review"])
    def history(cell_id: CellId) -> dict[str, Any]:
        return {"cell": store.cell(cell_id).to_dict(), "history": store.history(cell_id)}

    @v1.get("/cells/{cell_id}/crop", tags=["review"])
    def crop(cell_id: CellId):
        """The cell's image as it was stored."""
        data, media = store.crop(cell_id)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def check_token_value(token: str | None) -> None:
    """Refuse an empty token (``--token ''``): every client would pass with ``Authorization: Bearer ``."""
    from cellmorphnet.errors import ConfigError

    if token is not None and not token.strip():
        raise ConfigError("The token is empty: every client would pass with 'Authorization: Bearer '.",
                          hint="Give a real token, or leave out --token (and unset CELLMORPHNET_TOKEN).")  # fmt: skip


def create_app(service: ModelService, *, token: str | None = None, cors_origins: list[str] | None = None,
               limits: Limits | None = None, hosts: list[str] | None = None, reviews=None) -> FastAPI:  # fmt: skip
    """The application: ``service`` answers, ``token`` (if any) guards ``/v1``, ``cors_origins`` opens CORS (and
    are the only other origins whose POSTs are served), ``limits`` bound each request (default: the service's),
    ``hosts`` are the ``Host`` values it answers (``trusted_hosts``; None: any), ``reviews`` (a
    ``reviews.ReviewStore``) keeps cases, cells and reviews (None: no review routes)."""
    limits = limits or service.limits
    from cellmorphnet import __version__

    check_token_value(token)
    expected = token.encode("utf-8") if token is not None else b""

    app = FastAPI(
        title="cellmorphnet",
        version=__version__,
        description="Blood-cell classification with a trained cellmorphnet run. Research tool: not a medical "
        "device. The files of one request are classified as one set, as `cellmorphnet infer` classifies the "
        "files given to it together.",
    )
    app.add_middleware(BodyLimit, limits=limits)
    app.add_middleware(OriginCheck, allowed=cors_origins)  # (the last added runs first)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    if hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        # HTTP headers arrive as bytes, which Starlette hands over decoded as Latin-1: encoding them back gives the
        # bytes the client sent (UTF-8 for a non-ASCII token), compared with the token's own UTF-8 bytes
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode("latin-1"), expected):
            raise HTTPException(401, "A valid 'Authorization: Bearer <token>' header is required.",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.exception_handler(_Refused)
    async def refused(_request, exc: _Refused):
        headers = {"Connection": "close"} if exc.close else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(LimitExceeded)
    async def over_limit(_request, exc: LimitExceeded):
        return JSONResponse({"detail": exc.message}, status_code=413)

    @app.exception_handler(TimeLimit)
    async def too_long(_request, exc: TimeLimit):
        return JSONResponse({"detail": exc.message}, status_code=503, headers={"Retry-After": "10"})

    @app.exception_handler(InvalidData)
    async def invalid(_request, exc: InvalidData):
        detail = exc.message + (f" {exc.hint}" if exc.hint else "")
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
        return JSONResponse({"detail": detail}, status_code=status)

    # HEAD beside GET, out of the schema: one route with both methods gives both one operation ID in /openapi.json
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.head("/readyz", include_in_schema=False)
    @app.get("/readyz", tags=["health"])
    def readyz():
        """The model is loaded and warmed up, and a thread is free to decode a large request (503 until then, and
        while every decoding thread is busy: send traffic elsewhere). ``/healthz`` only says the process lives."""
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        if service.saturated:
            return JSONResponse({"status": "saturated"}, status_code=503)
        return {"status": "ready"}

    v1 = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(check_token)], tags=["model"])

    @v1.get("/model")
    def model() -> dict[str, Any]:
        """The model card: run, classes, input size, preprocessing, checkpoint digest, data and test metrics."""
        return model_card(service)

    @v1.post("/predict", openapi_extra=_multipart("files", many=True))
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=50, description="How many classes to list per image."),
        min_confidence: float = Query(0.0, ge=0.0, le=1.0, description="Flag predictions below this confidence."),
    ) -> dict[str, Any]:
        """Classify one or many images (multipart field `files`); one result per file, in upload order.

        A single-cell image is one prediction (also listed as its one entry of `cells`). A photo of a smear
        field (shorter side 400 px or more) is searched for every white cell: its result lists them in
        `cells`, each with its `box` (x0, y0, x1, y1 in the image's pixels), `edge` flag and prediction, and
        `status: no cells` where none was found. `differential` counts the white-cell types of the request
        (cells cut by a border left out). A file that cannot be read gets `status: error` with the reason; the
        others are classified.
        """
        from cellmorphnet.inference.differential import differential

        files = await _read_files(request, "files", limits)
        preds = await run_in_threadpool(service.predict, files, top_k, min_confidence)
        return {"model": service.run_dir.name, "results": _file_results(preds),
                "differential": differential(preds, service.classes)}  # fmt: skip

    @v1.post("/gradcam", openapi_extra=_multipart("file", many=False),
             responses={200: {"content": {"image/png": {}}}})  # fmt: skip
    async def gradcam(
        request: Request,
        x0: int | None = Query(None, ge=0, le=MAX_COORD,
                               description="With y0, x1, y1 and rbc: one cell of a field (its box)."),
        y0: int | None = Query(None, ge=0, le=MAX_COORD),
        x1: int | None = Query(None, ge=1, le=MAX_COORD),
        y1: int | None = Query(None, ge=1, le=MAX_COORD),
        rbc: float | None = Query(None, ge=1, le=MAX_COORD, allow_inf_nan=False,
                                  description="The field's red-cell diameter, as /v1/predict gave it."),
    ):
        """The Grad-CAM overlay of one image (multipart field `file`) as PNG: the crop beside the heat map; with a
        box and `rbc`, of that cell of a field."""
        files = await _read_files(request, "file", limits)
        if len(files) != 1:
            raise _Refused("Send exactly one image as field 'file'.")
        given = [v is not None for v in (x0, y0, x1, y1, rbc)]
        if any(given) and not all(given):
            raise _Refused("Give all of x0, y0, x1, y1 and rbc for one cell of a field, or none.")
        cell = ((x0, y0, x1, y1), rbc) if all(given) else None
        if cell is not None and not (x0 < x1 and y0 < y1):
            raise _Refused("The box must have x0 < x1 and y0 < y1.")
        pred, png = await run_in_threadpool(service.gradcam_png, *files[0], cell)
        if pred.error:
            return JSONResponse({"detail": pred.error}, status_code=422)
        return Response(png, media_type="image/png", headers={
            "X-Predicted-Class": pred.predicted, "X-Confidence": f"{pred.confidence:.6f}"})  # fmt: skip

    if reviews is not None:
        _review_routes(v1, service, reviews, limits)
    app.include_router(v1)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.api_route("/review", methods=["GET", "HEAD"], include_in_schema=False)
    def review_page():
        return FileResponse(str(STATIC / "review.html"), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if name not in allowed:
            raise HTTPException(404, "Not found.")
        return FileResponse(str(allowed[name]))

    return app
