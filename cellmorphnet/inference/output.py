"""Writing results: one row per file as CSV or JSON (with the set's summary), and copies sorted by class."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.predict import Prediction


def sort_into(preds: list[Prediction], target: Path) -> int:
    """Copy (never move) each predicted image into ``target/<class>/``; returns how many were copied."""
    n = 0
    for p in preds:
        if p.error:
            continue
        folder = target / p.predicted
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / p.path.name
        i = 1
        while dest.exists():
            dest = folder / f"{p.path.stem}-{i}{p.path.suffix}"
            i += 1
        shutil.copy2(p.path, dest)
        n += 1
    return n


def write_results(preds: list[Prediction], out: Path, summary: dict[str, Any]) -> None:
    """CSV (one row per file, skipped ones with their reason) or JSON (rows plus summary), atomically."""
    import csv
    import io

    from cellmorphnet._io import atomic_path, write_json

    if out.suffix.lower() == ".json":
        write_json(out, {"summary": summary, "predictions": [p.to_dict() for p in preds]})
        return
    if out.suffix.lower() != ".csv":
        raise InvalidData(f"--out must end in .csv or .json, not '{out.suffix}'.")
    k = max((len(p.top_k) for p in preds), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["path", "status", "predicted", "confidence"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_probability"]
    w.writerow([*header, "framing", "colour_step", "stain_contrast", "colour_distance", "unlike_training",
                "low_confidence", "error"])  # fmt: skip
    for p in preds:
        row = [str(p.path), "skipped" if p.error else "ok", p.predicted or "",
               "" if p.confidence is None else f"{p.confidence:.6f}"]  # fmt: skip
        for i in range(k):
            row += [p.top_k[i][0], f"{p.top_k[i][1]:.6f}"] if i < len(p.top_k) else ["", ""]
        dist = "" if p.colour_distance is None else f"{p.colour_distance:.2f}"
        flags = ["", ""] if p.error else ["yes" if p.unusual else "no", "yes" if p.low_confidence else "no"]
        contrast = "" if p.stain_contrast is None else f"{p.stain_contrast:.3f}"
        w.writerow([*row, p.framing or "", p.colour_step or "", contrast, dist, *flags, p.error or ""])
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
