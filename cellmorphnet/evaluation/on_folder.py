"""Score a run on a labelled folder of the user's own images (``cellmorphnet eval RUN --on PATH``).

``PATH/<class>/...`` holds the images of each class; folder names are matched to the run's classes
by name and the known aliases (``neut``, ``Platelets``, plurals...). Images go through exactly
``infer``'s preprocessing and adaptation, so the figures say what ``infer`` will do on that lab's
slides. Metrics are computed over the classes present; unknown folders and unreadable files are
reported, never fatal.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.data.taxonomy import canonical
from cellmorphnet.errors import InvalidData
from cellmorphnet.vision.imaging import IMAGE_SUFFIXES


def match_class(folder: str, classes: list[str]) -> str | None:
    """The run class a folder name means, or None: exact, alias, then singular (``neutrophils``)."""
    for name in (folder, folder.rstrip("s") if folder.lower().endswith("s") else None):
        if name is None:
            continue
        c = canonical(name)
        if c in classes:
            return c
    return None


def labelled_files(root: Path, classes: list[str]) -> tuple[list[tuple[Path, str]], dict[str, int]]:
    """Every image below each class folder with its run class, and the unknown folders with their file counts."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InvalidData(f"{root} is not a folder.", hint="Give a folder with one sub-folder of images per class.")
    items, unknown = [], {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        cls = match_class(d.name, classes)
        if cls is None:
            unknown[d.name] = len(files)
        else:
            items += [(f, cls) for f in files]
    if not items:
        raise InvalidData(
            f"{root} has no class folder named like the run's classes"
            + (f" (found: {', '.join(unknown)})." if unknown else "."),
            hint=f"Name the folders after the run's classes: {', '.join(classes)}.",
        )
    return items, unknown


def _one_per_file(preds) -> list:
    """One prediction per labelled file: a crop's own; in a field, the label names the white cell nearest its
    centre (a field without one is skipped, saying so)."""
    from cellmorphnet.inference import Prediction

    out, fields_seen = [], {}
    for p in preds:
        if p.cell is None:
            out.append(Prediction(p.source, error="no white cell found in the field") if p.no_cells else p)
        else:
            fields_seen.setdefault(p.source, []).append(p)
    for cells in fields_seen.values():
        out.append(min(cells, key=_off_centre))
    return out


def _off_centre(p) -> float:
    """How far a found cell lies from its field's centre (squared pixels)."""
    w, h = p.image.size
    x0, y0, x1, y1 = p.cell.box
    return ((x0 + x1 - w) / 2) ** 2 + ((y0 + y1 - h) / 2) ** 2


def evaluate_folder(rm, root: Path, options, *, min_images: int = 5, batch_size: int = 64, workers: int = 2,
                    progress=None) -> dict[str, Any]:  # fmt: skip
    """Predict every labelled image with ``options`` (``inference.InferenceOptions``) and score the predictions
    (one per file: in a photo of a smear field, of the white cell nearest its centre)."""
    from cellmorphnet.evaluation.metrics import classification_metrics
    from cellmorphnet.inference import predict_files

    items, unknown = labelled_files(root, rm.classes)
    space = options.restrict_to or rm.classes
    outside = sorted({c for _, c in items if c not in space})
    if outside:
        raise InvalidData(f"--classes leaves out {', '.join(outside)}, which {root} has images of.",
                          hint="Add them to --classes, or remove those folders.")  # fmt: skip
    truth = dict(items)
    preds, _ = predict_files(rm, [f for f, _ in items], options, batch_size=batch_size, top_k=len(space),
                             workers=workers, on_batch=progress)  # fmt: skip
    preds = _one_per_file(preds)
    ok = [p for p in preds if not p.error]
    index = {c: i for i, c in enumerate(space)}
    labels = np.array([index[truth[p.source]] for p in ok], dtype=np.int64)
    probs = np.zeros((len(ok), len(space)))
    for row, p in enumerate(ok):
        for c, v in p.top_k:
            if c in index:
                probs[row, index[c]] = v
    m = classification_metrics(labels, probs, list(space)) if ok else None
    counts = Counter(truth[p.source] for p in ok)
    scored = [c for c in space if counts.get(c, 0) >= min_images]
    recalls = [m["per_class"][c]["recall"] for c in scored] if m else []
    return {
        "folder": str(root),
        "classes_scored": list(space),
        "images": len(items),
        "predicted": len(ok),
        "per_class_images": {c: counts.get(c, 0) for c in space if counts.get(c, 0)},
        "min_images": min_images,
        f"balanced_accuracy_min{min_images}": float(np.mean(recalls)) if recalls else None,
        "metrics": m,
        "unknown_folders": unknown,
        "skipped": [{"path": str(p.source), "reason": p.error} for p in preds if p.error],
        "fields": sum(1 for p in preds if p.image is not None and p.image.kind == "field"),
        "framing": dict(Counter(p.framing for p in ok)),
        "colour_step": dict(Counter(p.colour_step or "none" for p in ok)),
        "stain_contrast": next((p.stain_contrast for p in ok if p.stain_contrast is not None), None),
        "unlike_training": sum(p.unusual for p in ok),
        "verdicts": _verdicts(ok, truth),
        "policy": options.policy.to_dict(),
        "adaptation": options.to_dict(),
    }


def _verdicts(ok, truth) -> dict[str, Any]:
    """How many cells the verdict classified and how many it sent to review, and how often the classified ones
    were right: the error rate of the answers given without a person."""
    classified = [p for p in ok if p.verdict == "classified"]
    right = sum(p.predicted == truth[p.source] for p in classified)
    return {"classified": len(classified), "review": len(ok) - len(classified),
            "classified_share": len(classified) / len(ok) if ok else None,
            "classified_accuracy": right / len(classified) if classified else None,
            "reasons": dict(Counter(p.review_reason for p in ok if p.verdict == "review"))}  # fmt: skip
