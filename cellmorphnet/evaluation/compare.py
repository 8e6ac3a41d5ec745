"""Two runs side by side, before one replaces the other: how often each agrees with a lab's reviewers on cells
neither trained on (overall and per type), and how each does on the reference PBC images the served run keeps
(its own training data's, so forgetting shows). What the review page's adapt job shows beside its Promote button.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RunScore:
    """One run's figures: ``agreement`` with the reviewers (None without held-out cells), ``per_type`` as
    {type: (agreeing, cells)}, ``reference`` accuracy on the PBC reference images (None where there are none)."""

    run: str
    agreement: float | None
    per_type: dict[str, tuple[int, int]] = field(default_factory=dict)
    reference: float | None = None
    reference_images: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"run": self.run, "agreement": self.agreement, "reference_accuracy": self.reference,
                "reference_images": self.reference_images,
                "per_type": {t: {"agree": a, "cells": n} for t, (a, n) in sorted(self.per_type.items())}}  # fmt: skip


def agreement(rm, files: list[Path], truths: list[str]) -> tuple[float | None, dict[str, tuple[int, int]]]:
    """How often ``rm``'s default answer (each file one cell) is the reviewers' class."""
    from cellmorphnet.inference.options import inference_options
    from cellmorphnet.inference.predict import predict_files

    if not files:
        return None, {}
    options = inference_options(rm.record, cells="one")
    preds, _ = predict_files(rm, files, options, workers=1)
    answer = {Path(p.path): p.predicted for p in preds}
    per: dict[str, list[int]] = {}
    for f, t in zip(files, truths, strict=True):
        row = per.setdefault(t, [0, 0])
        row[0] += int(answer.get(Path(f)) == t)
        row[1] += 1
    hits = sum(a for a, _ in per.values())
    return hits / len(files), {t: (a, n) for t, (a, n) in per.items()}


def reference_accuracy(rm, images: np.ndarray, truths: list[str]) -> float | None:
    """Accuracy on prepared reference images (labels as class names; one view each)."""
    from cellmorphnet.inference.options import inference_options
    from cellmorphnet.inference.predict import one_view_probs

    if len(images) == 0:
        return None
    options = inference_options(rm.record)
    probs = one_view_probs(rm, options.policy, temperature=options.temperature)(list(images))
    said = [rm.classes[i] for i in probs.argmax(1)]
    return float(np.mean([s == t for s, t in zip(said, truths, strict=True)]))


def reference_set(run_dir: Path, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """The reference images a run keeps (``reference_images.npz``, labels as indices into its ``classes``), as
    images and class names; empty where it keeps none or the file is not what it should be (it is read as input)."""
    from cellmorphnet.runs.record import REFERENCE_FILE

    try:
        with np.load(Path(run_dir) / REFERENCE_FILE, allow_pickle=False) as z:
            images, labels = np.asarray(z["images"]), np.asarray(z["labels"])
    except (OSError, ValueError, KeyError):  # a run without them is compared without them
        return np.zeros((0, 1, 1, 3), np.uint8), []
    if images.ndim != 4 or images.dtype != np.uint8 or labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        return np.zeros((0, 1, 1, 3), np.uint8), []
    keep = [i for i, k in enumerate(labels) if 0 <= int(k) < len(classes)]
    return images[keep], [classes[int(labels[i])] for i in keep]


def compare_runs(runs: dict[str, Path], files: list[Path], truths: list[str], *, reference_from: Path,
                 device: str = "cpu") -> list[RunScore]:  # fmt: skip
    """Each run of ``runs`` (label: folder) on the held-out reviewed cells and on ``reference_from``'s images."""
    from cellmorphnet.runs.load import load_run_model
    from cellmorphnet.runs.record import RunRecord

    images, ref_truths = reference_set(reference_from, RunRecord.load(reference_from).classes)
    out = []
    for label, run_dir in runs.items():
        rm = load_run_model(run_dir, "best", device)
        agree, per = agreement(rm, files, truths)
        out.append(RunScore(label, agree, per, reference_accuracy(rm, images, ref_truths), len(ref_truths)))
    return out
