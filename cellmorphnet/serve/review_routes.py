"""Cases of cells, their reviews and the export: the routes of the review view (docs/serve.md, "Review").

A case name is one path segment of printable text (``reviews.store.check_name``); the routes take the rest of the
path as the name, so a name with '/' (a date such as 2026/12/06) is answered with why it is refused rather than a
bare 404. ``InvalidData`` is answered 422, ``NotFound`` 404 and ``Conflict`` 409 (``create_app``'s handlers).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from cellmorphnet.errors import NotFound
from cellmorphnet.reviews.store import ENOUGH_PER_TYPE, ReviewStore, check_name
from cellmorphnet.serve.model_routes import RequestLimits, Service
from cellmorphnet.serve.security import require
from cellmorphnet.serve.uploads import multipart_body, read_files

MAX_ID = 2**63 - 1  # SQLite's largest integer: a cell id beyond it is no cell
CellId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A cell's id, as the case lists it.")]
router = APIRouter(tags=["review"])
REVIEWS = [Depends(require("review"))]  # what changes a case: a viewer is answered 403


def get_store(request: Request) -> ReviewStore:
    """The review database (``create_app`` keeps it in the application's state)."""
    return request.app.state.reviews


Store = Annotated[ReviewStore, Depends(get_store)]


class ReviewBody(BaseModel):
    """A reviewer's decision on one cell."""

    model_config = ConfigDict(populate_by_name=True)
    cls: str = Field(alias="class", description="The cell's class: one of GET /v1/cases/{case}'s classes.")
    reviewer: str | None = Field(None, description="Who reviewed it (optional).")


class UndoBody(BaseModel):
    reviewer: str | None = None


def case_json(store: ReviewStore, case: str) -> dict[str, Any]:
    cells = store.cells(case)
    return {"case": case, "classes": store.classes, "cells": [c.to_dict() for c in cells],
            "reviewed": sum(c.reviewed is not None for c in cells)}  # fmt: skip


@router.get("/cases")
def cases(store: Store) -> dict[str, Any]:
    """Every case: name, when it was opened, its cells and how many are reviewed."""
    return {"classes": store.classes, "cases": store.cases(), "enough_per_type": ENOUGH_PER_TYPE}


@router.get("/reviews/stats")
def stats(store: Store, case: str | None = Query(None, max_length=200, description="Only this case.")
          ) -> dict[str, Any]:  # fmt: skip
    """The lab's own accuracy from its reviews (what ``cellmorphnet reviews stats --json`` prints)."""
    from cellmorphnet.reviews.stats import review_stats

    return review_stats(store, case)


@router.post("/cases/{case:path}/cells", openapi_extra=multipart_body("files", many=True), dependencies=REVIEWS)
async def add_cells(request: Request, case: str, store: Store,
                    service: Service,
                    limits: RequestLimits) -> dict[str, Any]:  # fmt: skip
    """Classify images (multipart field `files`) and keep their cells in the case (opened if new)."""
    from cellmorphnet.serve.service import add_to_case

    check_name(case, "case name", required=True)  # before the upload is read
    files = await read_files(request, "files", limits)
    stored, skipped = await run_in_threadpool(add_to_case, service, store, case, files)
    return {**case_json(store, case), "added": [c.id for c in stored], "skipped": skipped}


@router.get("/cases/{case:path}/export", responses={200: {"content": {"application/zip": {}}}})
def export_zip(case: str, store: Store):
    """The case's reviewed cells as a dataset (class folders and cells.csv), zipped: what
    `cellmorphnet reviews export` writes."""
    import io
    import tempfile
    import zipfile
    from pathlib import Path

    from cellmorphnet.reviews.export import export, safe_stem

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


@router.get("/cases/{case:path}/report", responses={200: {"content": {"text/html": {}}}})
def case_report(case: str, store: Store):
    """The case's report: one self-contained HTML file (``cellmorphnet reviews report``)."""
    from fastapi.responses import HTMLResponse

    from cellmorphnet.reviews.export import safe_stem
    from cellmorphnet.reviews.report import render_case

    return HTMLResponse(render_case(store, case)[0], headers={
        "Content-Disposition": f'inline; filename="{safe_stem(case)}-report.html"'})  # fmt: skip


@router.get("/cases/{case:path}")
def get_case(case: str, store: Store) -> dict[str, Any]:
    """A case's cells with the model's prediction and their current review."""
    if case not in {c["name"] for c in store.cases()}:
        raise NotFound(f"There is no case '{case}'.")
    return case_json(store, case)


def reviewer_of(request: Request, given: str | None) -> str | None:
    """Who a review is recorded under: the signed-in account's name; the name given only without accounts."""
    account = getattr(request.state, "account", None)
    return account.name if account is not None and account.name is not None else given


@router.post("/cells/{cell_id}/review", dependencies=REVIEWS)
def review(request: Request, cell_id: CellId, body: ReviewBody, store: Store) -> dict[str, Any]:
    """Confirm or reassign a cell (422 for a class that is not one of the case's classes). With accounts, the
    review is recorded under the signed-in account (a ``reviewer`` in the body is ignored)."""
    return store.review(cell_id, body.cls, reviewer_of(request, body.reviewer)).to_dict()


@router.post("/cells/{cell_id}/undo", dependencies=REVIEWS)
def undo(request: Request, cell_id: CellId, store: Store, body: UndoBody | None = None) -> dict[str, Any]:
    """Take back the cell's latest review (kept in its history; 409 when there is none)."""
    return store.undo(cell_id, reviewer_of(request, body.reviewer if body else None)).to_dict()


@router.get("/cells/{cell_id}/history")
def history(cell_id: CellId, store: Store) -> dict[str, Any]:
    return {"cell": store.cell(cell_id).to_dict(), "history": store.history(cell_id)}


@router.get("/cells/{cell_id}/field", responses={200: {"content": {"image/png": {}}}})
def field(cell_id: CellId, store: Store, limits: RequestLimits):
    """The field the cell was found in, its box drawn (404 for a single-cell image, or a field not kept)."""
    from cellmorphnet.vision.imaging import boxed_png

    cell = store.cell(cell_id)
    kept = store.field(cell.image_sha256) if cell.box else None
    if kept is None:
        raise NotFound(f"Cell {cell_id} has no field kept (a single-cell image, or stored before fields were kept).")
    png = boxed_png(kept[0], cell.box, max_pixels=limits.max_pixels, name=cell.source)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/cells/{cell_id}/crop")
def crop(cell_id: CellId, store: Store):
    """The cell's image as it was stored."""
    data, media = store.crop(cell_id)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})
