"""The model's routes: its card, classifying images (a crop or every cell of a field) and Grad-CAM."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cellmorphnet.serve.service import ModelService
from cellmorphnet.serve.settings import Limits
from cellmorphnet.serve.uploads import Refused, multipart_body, read_files

MAX_COORD = 1_000_000  # a pixel coordinate or diameter in a query (each is checked against its image too)
router = APIRouter(tags=["model"])


def get_service(request: Request) -> ModelService:
    """The loaded run (``create_app`` keeps it in the application's state)."""
    return request.app.state.service


def get_limits(request: Request) -> Limits:
    return request.app.state.limits


Service = Annotated[ModelService, Depends(get_service)]
RequestLimits = Annotated[Limits, Depends(get_limits)]


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
                          "tta": o.tta, "temperature": o.temperature, "lab": o.to_dict()["lab"],
                          "set": "each file on its own" if o.per_image else "the files of one request"},  # fmt: skip
        "verdicts": {"trust_reference": service.rm.trust is not None,
                     "conformal": o.lab.conformal.to_dict() if o.lab and o.lab.conformal else None},  # fmt: skip
        "test_metrics": metrics,
        "device": str(service.rm.device),
        "micro_batching": {"max_batch": service.batcher.max_batch, "max_wait_ms": service.batcher.max_wait * 1000},
        "limits": {**dataclasses.asdict(service.limits), "max_cells_per_field": o.max_cells},
        "notice": "Research tool: not a medical device; its predictions are not a diagnosis.",
    }


@router.get("/model")
def model(service: Service) -> dict[str, Any]:
    """The model card: run, classes, input size, preprocessing, checkpoint digest, data and test metrics."""
    return model_card(service)


@router.post("/predict", openapi_extra=multipart_body("files", many=True))
async def predict(
    request: Request,
    *,
    service: Service,
    limits: RequestLimits,
    top_k: int = Query(3, ge=1, le=50, description="How many classes to list per image."),
    min_confidence: float = Query(0.0, ge=0.0, le=1.0, description="Flag predictions below this confidence."),
) -> dict[str, Any]:
    """Classify one or many images (multipart field `files`); one result per file, in upload order.

    A single-cell image is one prediction (also listed as its one entry of `cells`). A photo of a smear
    field (shorter side 400 px or more) is searched for every white cell: its result lists them in
    `cells`, each with its `box` (x0, y0, x1, y1 in the image's pixels), `edge` flag and prediction, and
    `status: no cells` where none was found. `differential` counts the white-cell types of the request
    (cells cut by a border left out, images with no cell never counted). A file that cannot be read gets
    `status: error` with the reason; the others are classified.
    """
    from cellmorphnet.inference.differential import differential

    files = await read_files(request, "files", limits)
    preds = await run_in_threadpool(service.predict, files, top_k, min_confidence)
    return {"model": service.run_dir.name, "results": _file_results(preds),
            "differential": differential(preds, service.classes)}  # fmt: skip


@router.post("/gradcam", openapi_extra=multipart_body("file", many=False),
             responses={200: {"content": {"image/png": {}}}})  # fmt: skip
async def gradcam(
    request: Request,
    *,
    service: Service,
    limits: RequestLimits,
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
    files = await read_files(request, "file", limits)
    if len(files) != 1:
        raise Refused("Send exactly one image as field 'file'.")
    given = [v is not None for v in (x0, y0, x1, y1, rbc)]
    if any(given) and not all(given):
        raise Refused("Give all of x0, y0, x1, y1 and rbc for one cell of a field, or none.")
    cell = ((x0, y0, x1, y1), rbc) if all(given) else None
    if cell is not None and not (x0 < x1 and y0 < y1):
        raise Refused("The box must have x0 < x1 and y0 < y1.")
    pred, png = await run_in_threadpool(service.gradcam_png, *files[0], cell)
    if pred.error:
        return JSONResponse({"detail": pred.error}, status_code=422)
    return Response(png, media_type="image/png", headers={
        "X-Predicted-Class": pred.predicted, "X-Confidence": f"{pred.confidence:.6f}"})  # fmt: skip
