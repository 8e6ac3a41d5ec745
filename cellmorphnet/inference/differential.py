"""The leukocyte differential of a set of predictions: how many of each white-cell type, as a lab reports it.

Counted: every classified cell of a white-cell type (``data.taxonomy.WHITE_CELLS`` among the run's classes),
except images in which no cell was found (blank, too small: ``no_cell_found``, never counted), cells cut by a
field's border (a lab leaves those out; ``include_edge`` counts them) and cells below the confidence threshold
(``low_confidence``: counted apart, to be checked by eye). Cells whose verdict is ``review`` are not counted
either: ``awaiting_review`` says how many a person decides (as an analyser reports its unidentified share).
Each type gets its count, its share of the counted white cells and the 95% Wilson interval of that share.
Nucleated red cells (erythroblasts) are not white cells: they are reported per 100 white cells, as labs do.
Anything else the model calls a cell (a platelet clump) is listed as other.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cellmorphnet.reviews.stats import wilson  # (the one Wilson interval: the differential's and the reviews')


def differential(preds, classes: list[str], *, include_edge: bool = False) -> dict[str, Any]:
    """The differential of ``preds`` (``Prediction``s: crops and the cells of fields) over a run's ``classes``."""
    from cellmorphnet.data.taxonomy import WHITE_CELLS

    white = [c for c in classes if c in WHITE_CELLS]
    classified = [p for p in preds if not p.error and not p.no_cells and p.predicted is not None]
    cells = [p for p in classified if p.cell_found]
    edge = [p for p in cells if p.cell is not None and p.cell.edge]
    counted = cells if include_edge else [p for p in cells if p not in edge]
    review = [p for p in counted if getattr(p, "verdict", None) == "review"]
    counted = [p for p in counted if getattr(p, "verdict", None) != "review"]
    low = [p for p in counted if p.low_confidence]
    sure = [p for p in counted if not p.low_confidence]
    counts = Counter(p.predicted for p in sure)
    n_white = sum(counts[c] for c in white)
    types = []
    for c in white:
        lo, hi = wilson(counts[c], n_white)
        share = round(100 * counts[c] / n_white, 1) if n_white else None
        types.append({"class": c, "count": counts[c], "percent": share,
                      "ci95": [round(100 * lo, 1), round(100 * hi, 1)] if n_white else None})  # fmt: skip
    nrbc = counts.get("erythroblast", 0) if "erythroblast" in classes else None
    other = {c: counts[c] for c in classes if c not in white and c != "erythroblast" and counts[c]}
    return {
        "white_cells": n_white,
        "types": types,
        "nucleated_red_cells": nrbc,
        "nrbc_per_100_wbc": round(100 * nrbc / n_white, 1) if nrbc is not None and n_white else None,
        "other": other,
        "low_confidence": len(low),
        "awaiting_review": len(review),
        "awaiting_review_percent": round(100 * len(review) / (len(review) + len(counted)), 1) if review else 0.0,
        "edge_cells": len(edge),
        "edge_cells_counted": include_edge,
        "images": len({p.source for p in preds}),
        "fields_without_cells": sum(1 for p in preds if p.no_cells),
        "no_cell_found": len(classified) - len(cells),
    }
