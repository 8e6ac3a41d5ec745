"""Writing results: one row per file as CSV or JSON (with the set's summary), and copies sorted by class."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.predict import Prediction


def sort_into(preds: list[Prediction], target: Path) -> int:
    """Copy (never move) each predicted image into ``target/<class>/``; returns how many were copied.

    Every class folder is checked before anything is copied: a file or a link where a folder should be is an
    error naming it. A copy never goes through a link (a dangling link placed in a class folder would otherwise
    send it outside ``target``): each is created as a new file, with a free name.
    """
    import os

    ok = [p for p in preds if not p.error]
    folders = {c: target / c for c in sorted({p.predicted for p in ok})}
    for folder in [target, *folders.values()]:
        if (folder.is_symlink() and folder != target) or (os.path.lexists(folder) and not folder.is_dir()):
            raise InvalidData(f"--sort-into: {folder} is in the way ({'a link' if folder.is_symlink() else 'a file'} "
                              "where a folder of copies should be).",
                              hint="Move it away, or give --sort-into another folder.")  # fmt: skip
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for p in ok:
        folder = folders[p.predicted]
        name, i = p.path.name, 1
        while True:
            try:  # O_EXCL: fails on anything already there, a link included, so nothing is followed
                with open(folder / name, "xb") as out, open(p.path, "rb") as src:
                    shutil.copyfileobj(src, out)
                break
            except FileExistsError:
                name = f"{p.path.stem}-{i}{p.path.suffix}"
                i += 1
        shutil.copystat(p.path, folder / name)
    return len(ok)


def write_results(preds: list[Prediction], out: Path, summary: dict[str, Any]) -> None:
    """CSV (one row per file, skipped ones with their reason) or JSON (rows plus summary), atomically."""
    import csv
    import io

    from cellmorphnet._io import atomic_path, spreadsheet_safe, write_json

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
        row = [*row, p.framing or "", p.colour_step or "", contrast, dist, *flags, p.error or ""]
        w.writerow([spreadsheet_safe(c) for c in row])  # file names are the user's: never a formula
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
