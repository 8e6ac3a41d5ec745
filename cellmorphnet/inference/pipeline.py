"""Files to a typed result: what ``cellmorphnet infer``, the Python API (``api.predict``) and the reports share.

``infer_files`` collects the files of the given paths, classifies them (``predict.predict_files``), lists what
could not be read, and summarises the set (counts, framing, colour steps, the differential). The command only
renders the result and writes its files; the exit code comes from the result too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.cells import ImageInfo
from cellmorphnet.inference.differential import differential
from cellmorphnet.inference.engine import is_engine
from cellmorphnet.inference.images import Item, collect_files
from cellmorphnet.inference.options import InferenceOptions
from cellmorphnet.inference.predict import Prediction, predict_files
from cellmorphnet.runtime.distributed import SINGLE, Group

EXIT_SOME_SKIPPED = 3  # some files could not be read; the others were classified


@dataclass
class InferResult:
    """A set classified: one prediction per cell (and one per unreadable path), and the set's summary."""

    predictions: list[Prediction]
    summary: dict[str, Any]  # what --out x.json writes beside the predictions
    inputs: dict[Item, np.ndarray] = field(default_factory=dict)  # each cell as the model saw it (Grad-CAM)

    @property
    def classified(self) -> list[Prediction]:
        return [p for p in self.predictions if p.status == "ok"]

    @property
    def skipped(self) -> list[Prediction]:
        return [p for p in self.predictions if p.error]

    @property
    def fields(self) -> dict[Any, ImageInfo]:
        """The images searched as smear fields, with how each was taken."""
        return {p.source: p.image for p in self.predictions if p.image is not None and p.image.kind == "field"}

    @property
    def exit_code(self) -> int:
        """0, ``EXIT_SOME_SKIPPED`` when some files could not be read, 1 when none could."""
        if not self.skipped:
            return 0
        return EXIT_SOME_SKIPPED if self.classified else 1


def files_of(paths: list[Path], group: Group = SINGLE) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files under ``paths`` (one list for a distributed job, in rank 0's order) and the paths that cannot
    be read; ``InvalidData`` when there is nothing to classify."""
    files, missing = group.on_main(lambda: collect_files(paths))
    if files:
        return files, missing
    if len(missing) == 1:
        raise InvalidData(f"{missing[0][0]}: {missing[0][1]}.")
    if missing:
        raise InvalidData(f"None of the {len(missing)} paths can be read: "
                          f"{'; '.join(f'{m} ({why})' for m, why in missing)}.")  # fmt: skip
    raise InvalidData("No image files found in the given paths.", hint="Images end in .jpg, .png, .bmp or .tif.")


def infer_files(rm, files: list[Path], options: InferenceOptions, *, missing: list[tuple[Path, str]] = (),
                batch_size: int = 64, top_k: int = 3, workers: int = 2, min_confidence: float = 0.0,
                count_edge_cells: bool = False, keep_inputs: bool = False, group: Group = SINGLE,
                progress: Callable[[int, int], None] | None = None) -> InferResult:  # fmt: skip
    """Classify ``files`` with a loaded run (``runs.load.RunModel``) as ``options`` say; the paths in ``missing``
    join the result as unreadable. See ``InferResult``."""
    preds, kept = predict_files(rm, files, options, batch_size=batch_size, top_k=top_k, workers=workers,
                                on_batch=progress, keep_inputs=keep_inputs, group=group)  # fmt: skip
    preds += [Prediction(p, error=reason) for p, reason in missing]
    for p in preds:
        p.min_confidence = min_confidence
    result = InferResult(preds, {}, kept)
    result.summary = summarise(result, rm, options, min_confidence=min_confidence,
                               count_edge_cells=count_edge_cells)  # fmt: skip
    if group.active:
        result.summary["world_size"] = group.world_size
    return result


def summarise(result: InferResult, rm, options: InferenceOptions, *, min_confidence: float,
              count_edge_cells: bool) -> dict[str, Any]:  # fmt: skip
    """The set's summary: run, preprocessing, what was applied, counts, the differential, how each image was taken."""
    preds, ok = result.predictions, result.classified
    counts = Counter(p.predicted for p in ok)
    taken = {p.source: p.image for p in preds if p.image is not None}
    return {
        "run": str(rm.run_dir),
        "checkpoint": str(rm.checkpoint),
        "device": str(rm.device),
        "engine": "onnx" if is_engine(rm.model) else "torch",
        "policy": options.policy.to_dict(),
        "adaptation": options.to_dict(),
        "stain_norm_applied": any(p.colour_step == "stain-norm" for p in ok),
        "colour_match_applied": any(p.colour_step == "colour-match" for p in ok),
        "stain_contrast_applied": next((p.stain_contrast for p in ok if p.stain_contrast is not None), None),
        "framing": dict(Counter(p.framing for p in ok)),
        "unlike_training": sum(p.unusual for p in ok),
        "low_confidence": sum(p.low_confidence for p in ok),
        "verdicts": verdict_counts(ok),
        "per_image_answers": options.per_image,
        "lab": options.to_dict()["lab"],
        "min_confidence": min_confidence,
        "images": len({p.source for p in preds}),
        "fields": len(result.fields),
        "cells": len(ok),
        "predicted": len(ok),
        "skipped": len(result.skipped),
        "class_counts": {c: counts.get(c, 0) for c in rm.classes},
        "differential": differential(preds, rm.classes, include_edge=count_edge_cells),
        "per_image": [{"path": str(s), **i.to_dict()} for s, i in taken.items()],
    }


MOSTLY_REVIEW = 0.5  # above this share of cells for review, the set is said to be unlike what the model vouches for


def verdict_counts(ok: list[Prediction]) -> dict[str, Any]:
    """How many cells were classified and how many go to a person, with the reasons, and the next step where most
    go to review."""
    judged = [p for p in ok if p.verdict is not None]
    review = [p for p in judged if p.verdict == "review"]
    out: dict[str, Any] = {"classified": len(judged) - len(review), "review": len(review),
                           "reasons": dict(Counter(p.review_reason for p in review).most_common()), "next_step": None}
    if judged and len(review) > MOSTLY_REVIEW * len(judged):
        out["next_step"] = (f"{len(review)} of {len(judged)} cells need a person: these images are unlike what the "
                            "model can vouch for. Make a lab profile (cellmorphnet lab create NAME FOLDER, then --lab "
                            "NAME), review the cells (cellmorphnet serve), and adapt the model to the reviewed cells "
                            "(cellmorphnet train --init).")  # fmt: skip
    return out
