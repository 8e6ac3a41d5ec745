"""The reviewed cells as a dataset: class folders of their crops and ``cells.csv``, what ``train --init`` adapts
a model on (``cellmorphnet reviews export``, and serve's zip of a case)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cellmorphnet._io import check_writable
from cellmorphnet.errors import Conflict, InvalidData, NotFound
from cellmorphnet.reviews.store import ReviewStore, is_class_name

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/tiff": ".tif", "image/bmp": ".bmp",
              "image/webp": ".webp"}  # fmt: skip


def safe_stem(name: str, limit: int = 60) -> str:
    """A file-name stem from any upload name: letters, digits, dot, dash and underscore; never hidden, never an
    option, never a path."""
    stem = Path(name.replace("\\", "/")).name.rsplit(".", 1)[0] if "." in Path(name).name else Path(name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:limit]
    return stem or "cell"


def export(store: ReviewStore, out: Path, case: str | None = None, *, only: set[int] | None = None) -> dict[str, Any]:
    """Write the reviewed cells (of one case) as a dataset: ``out/<class>/<id>-<name>.<ext>`` and ``cells.csv``
    (source file, cell, box, predicted, reviewed class, reviewer, time). ``out`` must not exist yet (nothing
    is overwritten); it is written whole into a temporary folder beside it and renamed at the end. A cell whose
    stored class is not a class name (a database changed by hand) is left out and listed in ``refused``: nothing
    is ever written outside ``out``. ``only``: these cell ids alone (of those reviewed)."""
    import csv
    import io
    import shutil
    import tempfile

    from cellmorphnet._io import spreadsheet_safe

    out = Path(out)
    if out.exists():
        raise InvalidData(f"{out} already exists: the export writes a new folder.", hint="Give another --out.")
    check_writable(out, folder=True)
    if case is not None and case not in {c["name"] for c in store.cases()}:
        raise NotFound(f"There is no case '{case}'.")
    cells, refused = [], []
    for c in store.cells(case):
        if c.reviewed is None or (only is not None and c.id not in only):
            continue
        # a value read from the database is input: the class becomes a folder name, so it must be one of the
        # store's classes (when it knows them) and a plain name, never a path ('../x', '/etc') or a control
        if is_class_name(c.reviewed) and (not store.classes or c.reviewed in store.classes):
            cells.append(c)
        else:
            refused.append({"id": c.id, "class": c.reviewed})
    if not cells:
        raise Conflict("No reviewed cells to export" + (f" in case '{case}'." if case else "."))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "case", "source", "image_sha256", "cell", "x0", "y0", "x1", "y1", "edge", "predicted",
                    "confidence", "reviewed", "reviewer", "reviewed_at", "run", "checkpoint_sha256"])  # fmt: skip
        counts: dict[str, int] = {}
        for c in cells:
            data, media = store.crop(c.id)
            index = f"-cell{c.cell_index}" if isinstance(c.cell_index, int) else ""
            name = f"{c.id:06d}-{safe_stem(c.source)}{index}"
            rel = Path(c.reviewed) / (name + EXTENSIONS.get(media, ".png"))
            (tmp / c.reviewed).mkdir(exist_ok=True)
            (tmp / rel).write_bytes(data)
            counts[c.reviewed] = counts.get(c.reviewed, 0) + 1
            box = list(c.box) if c.box else ["", "", "", ""]
            row = [rel.as_posix(), c.case, c.source, c.image_sha256, c.cell_index or "", *box,
                   "yes" if c.edge else "no", c.predicted, f"{c.confidence:.6f}", c.reviewed, c.reviewer or "",
                   c.reviewed_at, c.run, c.checkpoint_sha256]  # fmt: skip
            w.writerow([spreadsheet_safe(str(v)) for v in row])
        (tmp / "cells.csv").write_text(buf.getvalue(), encoding="utf-8")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": str(out), "cells": len(cells), "per_class": dict(sorted(counts.items())),
            "refused": refused}  # fmt: skip
