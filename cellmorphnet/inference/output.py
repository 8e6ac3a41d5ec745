"""Writing results: one row per file as CSV or JSON (with the set's summary), and copies sorted by class."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.predict import Prediction


def sort_into(preds: list[Prediction], target: Path) -> int:
    """Copy (never move) each predicted image into ``target/<class>/`` (a cell found in a field: its crop, as
    ``FIELD-cellN.png``); returns how many were copied.

    Every class folder is checked before anything is copied: a file or a link where a folder should be is an
    error naming it. A copy never goes through a link (a dangling link placed in a class folder would otherwise
    send it outside ``target``): each is created as a new file, with a free name.
    """
    ok = [p for p in preds if p.status == "ok"]
    folders = {c: target / c for c in sorted({p.predicted for p in ok})}
    for folder in [target, *folders.values()]:
        check_sort_folder(folder, link_ok=folder == target)
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for p in ok:
        folder = folders[p.predicted]
        c = p.cell
        src = p.source
        stem, suffix = (f"{src.stem}-cell{c.index}", ".png") if c else (src.stem, src.suffix)
        name, i = stem + suffix, 1
        while True:
            try:  # O_EXCL: fails on anything already there, a link included, so nothing is followed
                with open(folder / name, "xb") as out:
                    if c:  # a cell of a field: its crop
                        c.image.save(out, format="PNG")
                    else:
                        with open(src, "rb") as f:
                            shutil.copyfileobj(f, out)
                break
            except FileExistsError:
                name = f"{stem}-{i}{suffix}"
                i += 1
        if not c:
            shutil.copystat(src, folder / name)
    return len(ok)


def check_sort_folder(folder: Path, *, link_ok: bool = True) -> None:
    """Raise where ``folder`` cannot take ``sort_into``'s copies: not writable, or a file (or, for a class folder, a
    link) in the way. ``infer`` asks this of ``--sort-into`` before any image is classified (``link_ok``: the
    folder given may be a link to a folder), and ``sort_into`` of each class folder."""
    import os

    from cellmorphnet._io import check_writable

    if link_ok:
        check_writable(folder, folder=True)
    if (folder.is_symlink() and not link_ok) or (os.path.lexists(folder) and not folder.is_dir()):
        raise InvalidData(f"--sort-into: {folder} is in the way ({'a link' if folder.is_symlink() else 'a file'} "
                          "where a folder of copies should be).",
                          hint="Move it away, or give --sort-into another folder.")  # fmt: skip


def check_results_path(out: Path) -> None:
    """Raise now, before any work, where ``out`` cannot take ``write_results``'s file (its suffix, or its place)."""
    from cellmorphnet._io import check_writable

    check_writable(out, folder=False)
    if out.suffix.lower() not in (".csv", ".json"):
        raise InvalidData(f"--out must end in .csv or .json, not '{out.suffix}'.")


def write_results(preds: list[Prediction], out: Path, summary: dict[str, Any]) -> None:
    """CSV (one row per cell: a crop's, or each found in a field, a field without any as one row saying so;
    skipped files with their reason) or JSON (rows plus summary), atomically."""
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
    header = ["path", "cell", "kind", "x0", "y0", "x1", "y1", "edge", "status", "predicted", "confidence"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_probability"]
    w.writerow([*header, "verdict", "review_reason", "typicality", "framing", "cell_found", "colour_step",
                "stain_contrast", "colour_distance", "unlike_training", "low_confidence", "rbc_diameter_px",
                "error"])  # fmt: skip
    for p in preds:
        c, info = p.cell, p.image
        place = [str(c.index), *map(str, c.box), "yes" if c.edge else "no"] if c else [""] * 6
        row = [str(p.source), place[0], info.kind if info else "", *place[1:], p.status, p.predicted or "",
               "" if p.confidence is None else f"{p.confidence:.6f}"]  # fmt: skip
        for i in range(k):
            row += [p.top_k[i][0], f"{p.top_k[i][1]:.6f}"] if i < len(p.top_k) else ["", ""]
        dist = "" if p.colour_distance is None else f"{p.colour_distance:.2f}"
        unread = p.error or p.no_cells
        flags = ["", ""] if unread else ["yes" if p.unusual else "no", "yes" if p.low_confidence else "no"]
        contrast = "" if p.stain_contrast is None else f"{p.stain_contrast:.3f}"
        scale = "" if info is None or info.diameter is None else f"{info.diameter:.1f}"
        found = "" if unread else ("yes" if p.cell_found else "no")
        typical = "" if p.typicality is None else f"{p.typicality:.4f}"
        row = [*row, p.verdict or "", p.review_reason or "", typical, p.framing or "", found, p.colour_step or "",
               contrast, dist, *flags, scale, p.error or ""]  # fmt: skip
        w.writerow([spreadsheet_safe(c) for c in row])  # file names are the user's: never a formula
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


OVERLAY_COLOURS = {"ok": (0, 170, 90), "low": (230, 140, 0), "edge": (150, 150, 150)}


def write_overlays(preds: list[Prediction], folder: Path) -> list[Path]:
    """Each field drawn with its cells: a box and a label (index, class, confidence) per cell; green, orange below
    the confidence threshold, grey for a cell cut by the border (not counted by default). ``FIELD_cells.png``."""
    from PIL import ImageDraw, ImageFont

    from cellmorphnet._io import atomic_path
    from cellmorphnet.inference.images import read_image

    by_field: dict[Any, list[Prediction]] = {}
    for p in preds:
        if p.image is not None and p.image.kind == "field" and not p.error:
            by_field.setdefault(p.source, []).append(p)
    folder.mkdir(parents=True, exist_ok=True)
    written, seen = [], {}
    for source, rows in by_field.items():
        img = read_image(source).copy()
        draw = ImageDraw.Draw(img)
        width = max(2, round(min(img.size) / 240))
        font = ImageFont.load_default(size=max(12, round(min(img.size) / 30)))
        cells = [p for p in rows if p.cell is not None]
        for p in cells:
            c = p.cell
            colour = OVERLAY_COLOURS["edge" if c.edge else ("low" if p.low_confidence else "ok")]
            draw.rectangle(c.box, outline=colour, width=width)
            label = f"{c.index} {p.predicted} {p.confidence:.2f}" + (" (edge)" if c.edge else "")
            x, y = c.box[0] + width, max(0, c.box[1] - font.size - 2 * width)
            left, top, right, bottom = draw.textbbox((x, y), label, font=font)
            draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(255, 255, 255))
            draw.text((x, y), label, fill=colour, font=font)
        if not cells:
            draw.text((10, 10), "no white cell found", fill=(200, 0, 0), font=font)
        stem = getattr(source, "stem", None) or Path(str(source)).stem
        seen[stem] = seen.get(stem, 0) + 1
        target = folder / (f"{stem}_cells.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}_cells.png")
        with atomic_path(target) as tmp:
            img.save(tmp, format="PNG")
        written.append(target)
    return written
