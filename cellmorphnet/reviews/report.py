"""A case report: one self-contained HTML file (the cells' images embedded) that prints cleanly to PDF from a
browser. It gives the case's differential (count, %, 95% interval per white-cell type, nucleated red cells per 100
white cells), how many cells await review, a gallery of the cells by type, the flags, the model (run and checkpoint
digest), who reviewed what and when, and the research-use notice. A report states the version of the reviews it
shows (how many decisions, and the latest one's time), so a report of a case whose reviews changed says so.

A cell counts as its reviewer decided; a cell not yet reviewed counts as the model said only where its verdict
was ``classified``; the others await review and are not counted. Cells cut by a field's border are not counted.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from cellmorphnet.data.taxonomy import WHITE_CELLS as WHITE
from cellmorphnet.errors import NotFound
from cellmorphnet.reviews.stats import wilson

NOTICE = "Research use only: not a medical device, not a diagnosis. Every count was made by software and people."
MAX_GALLERY = 2000  # cells shown in the gallery at most (a larger case is counted in full, shown in part)


def _counted_as(cell) -> str | None:
    if cell.edge:
        return None
    if cell.reviewed is not None:
        return cell.reviewed
    return None if cell.verdict == "review" else cell.predicted  # (None: stored before verdicts, as the model said)


def case_summary(store, case: str, cells: list | None = None) -> dict[str, Any]:
    """What the report shows, as data: the differential, what awaits review, reviewers, model, version (``cells``:
    the case's, where already read)."""
    cells = store.cells(case) if cells is None else cells
    if not cells:
        raise NotFound(f"There is no case '{case}' (or it holds no cells).")
    counted = Counter(c for c in map(_counted_as, cells) if c is not None)
    n_white = sum(counted[t] for t in WHITE)
    types = []
    for t in WHITE:  # every white-cell type, counted or not, as infer's differential lists them
        lo, hi = wilson(counted[t], n_white)
        types.append({"class": t, "count": counted[t],
                      "percent": round(100 * counted[t] / n_white, 1) if n_white else None,
                      "ci95": [round(100 * lo, 1), round(100 * hi, 1)] if n_white else None})  # fmt: skip
    nrbc = counted.get("erythroblast", 0)
    awaiting = [c for c in cells if not c.edge and c.reviewed is None and c.verdict == "review"]
    decisions = [row for c in cells for row in store.history(c.id)]
    reviewers = Counter(c.reviewer or "(unnamed)" for c in cells if c.reviewed is not None)
    times = sorted(row["created"] for row in decisions)
    return {
        "case": case, "cells": len(cells), "reviewed": sum(c.reviewed is not None for c in cells),
        "white_cells": n_white, "types": types, "nucleated_red_cells": nrbc,
        "nrbc_per_100_wbc": round(100 * nrbc / n_white, 1) if n_white else None,
        "other": {k: v for k, v in counted.items() if k not in WHITE and k != "erythroblast"},
        "awaiting_review": len(awaiting), "edge_cells": sum(c.edge for c in cells),
        "changed_by_reviewers": sum(c.reviewed is not None and c.reviewed != c.predicted for c in cells),
        "models": sorted({(c.run, c.checkpoint_sha256) for c in cells}),
        "reviewers": dict(reviewers), "first_review": times[0] if times else None,
        "last_review": times[-1] if times else None,
        "version": f"{len(decisions)} decisions, the latest {times[-1] if times else 'none yet'}",
    }


def render_case(store, case: str, *, now: str | None = None) -> tuple[str, dict[str, Any]]:
    """The report of ``case`` as one HTML document, and what it shows as data (``case_summary``)."""
    cells = store.cells(case)
    s = case_summary(store, case, cells)
    e = html.escape
    now = now or datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = ""
    for t in s["types"]:
        share = "" if t["percent"] is None else t["percent"]
        interval = "" if t["ci95"] is None else f"{t['ci95'][0]}–{t['ci95'][1]}"
        rows += f"<tr><td>{e(t['class'])}</td><td>{t['count']}</td><td>{share}</td><td>{interval}</td></tr>"
    per = "" if s["nrbc_per_100_wbc"] is None else f"{s['nrbc_per_100_wbc']} per 100 white cells"
    rows += f"<tr><td>nucleated red cells</td><td>{s['nucleated_red_cells']}</td><td></td><td>{per}</td></tr>"
    rows += "".join(f"<tr><td>other: {e(k)}</td><td>{v}</td><td></td><td></td></tr>" for k, v in s["other"].items())
    gallery = _gallery(store, cells)
    models = "; ".join(f"{e(run)} (checkpoint {e(sha[:16])}…)" for run, sha in s["models"])
    reviewers = ", ".join(f"{e(k)} {v}" for k, v in s["reviewers"].items()) or "none yet"
    when = "" if not s["first_review"] else f" (from {e(s['first_review'])} to {e(s['last_review'])})"
    flags = []
    if s["awaiting_review"]:
        flags.append(f"{s['awaiting_review']} cells await review and are not counted.")
    if s["edge_cells"]:
        flags.append(f"{s['edge_cells']} cells cut by a field's border are not counted.")
    if s["changed_by_reviewers"]:
        flags.append(f"Reviewers changed the model's answer for {s['changed_by_reviewers']} cells.")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cellmorphnet · case {e(case)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }}
h1 {{ font-size: 1.4rem; margin: 0 0 .3rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.5rem; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ccc; padding: .2rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.notice {{ border: 1px solid #b0477d; padding: .4rem .6rem; color: #6b1f4a; }}
.muted {{ color: #666; }} .grid {{ display: flex; flex-wrap: wrap; gap: .3rem; }}
figure {{ margin: 0; width: 96px; font-size: 11px; break-inside: avoid; }}
figure img {{ width: 96px; height: 96px; object-fit: cover; }}
.review {{ outline: 2px dashed #c77700; }}
@media print {{ body {{ margin: 1cm; }} h2 {{ break-after: avoid; }} }}
</style></head><body>
<h1>Case {e(case)}</h1>
<p class="muted">Report made {e(now)} · reviews: {e(s['version'])} · {s['cells']} cells, {s['reviewed']}
reviewed</p>
<p class="notice">{e(NOTICE)}</p>
<h2>Differential ({s['white_cells']} white cells)</h2>
<table><thead><tr><th>type</th><th>count</th><th>%</th><th>95% interval</th></tr></thead><tbody>{rows}</tbody></table>
<p>{' '.join(e(f) for f in flags) or 'Every cell is counted.'}</p>
<h2>Model and reviewers</h2>
<p>Model: {models}.<br>Reviewed by: {reviewers}{when}.</p>
<h2>Cells by type</h2>
{gallery}
</body></html>
"""
    return page, s


def _gallery(store, cells: list) -> str:
    e = html.escape
    by: dict[str, list] = {}
    for c in cells[:MAX_GALLERY]:
        by.setdefault(c.reviewed or c.predicted, []).append(c)
    parts = []
    for cls in sorted(by):
        figures = []
        for c in by[cls]:
            data, media = store.crop(c.id)
            if media not in ("image/png", "image/jpeg", "image/bmp", "image/webp", "image/tiff"):
                continue
            waiting = c.verdict == "review" and not c.reviewed
            note = "reviewed" if c.reviewed else (f"for review: {c.review_reason}" if waiting else "model")
            src = f"data:{media};base64,{base64.b64encode(data).decode()}"
            figures.append(f'<figure class="{"review" if waiting else ""}">'
                           f'<img src="{src}" alt="cell {c.id}"><figcaption>#{c.id} {e(note)}</figcaption></figure>')
        parts.append(f"<h3>{e(cls)} ({len(by[cls])})</h3><div class=\"grid\">{''.join(figures)}</div>")
    return "".join(parts)
