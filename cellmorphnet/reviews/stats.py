"""The lab's own accuracy, read from its reviews: how often the model's pre-classification was confirmed (overall,
per type, per case, per day), Cohen's kappa between the model and the reviewers, the confusion of model against
review, the same split by the model's verdict (how often a ``classified`` cell, an answer given without a person,
was changed: the measured error rate of those answers), and, where two reviewers decided the same cells, their
agreement. What ``cellmorphnet reviews stats`` prints and the review page shows.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items (None for no items; 1.0 where both agree on one label
    for everything, where chance agreement is 1)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def _share(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"reviewed": n, "confirmed": k, "share": round(k / n, 4) if n else None,
            "ci95": [round(lo, 4), round(hi, 4)] if n else None}  # fmt: skip


def review_stats(store, case: str | None = None) -> dict[str, Any]:
    """The statistics of the reviewed cells of ``store`` (a ``ReviewStore``), of one case or all."""
    cells = store.cells(case)
    done = [c for c in cells if c.reviewed is not None]

    def group(key) -> dict[str, Any]:
        by: dict[str, list] = defaultdict(list)
        for c in done:
            by[key(c)].append(c)
        return {k: _share(sum(c.reviewed == c.predicted for c in v), len(v)) for k, v in sorted(by.items())}

    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in done:
        confusion[c.predicted][c.reviewed] += 1
    by_verdict = {}
    for v in ("classified", "review", None):
        these = [c for c in done if c.verdict == v]
        if these:
            changed = sum(c.reviewed != c.predicted for c in these)
            lo, hi = wilson(changed, len(these))
            by_verdict[v or "unknown"] = {"reviewed": len(these), "changed": changed,
                                          "error_rate": round(changed / len(these), 4),
                                          "ci95": [round(lo, 4), round(hi, 4)]}  # fmt: skip
    kappa = cohen_kappa([c.predicted for c in done], [c.reviewed for c in done])
    return {
        "database": str(store.path), "case": case, "cells": len(cells), "reviewed": len(done),
        "confirmed": _share(sum(c.reviewed == c.predicted for c in done), len(done)),
        "per_type": group(lambda c: c.predicted), "per_case": group(lambda c: c.case),
        "per_day": group(lambda c: (c.reviewed_at or "")[:10]),
        "kappa": None if kappa is None else round(kappa, 4),
        "confusion": {p: dict(r) for p, r in sorted(confusion.items())},
        "by_verdict": by_verdict,
        "reviewers": _reviewers(store, done),
    }


def _reviewers(store, done) -> dict[str, Any]:
    """Per reviewer, their latest class of each cell; where two or more reviewed the same cells, the agreement and
    Cohen's kappa of the two who share the most."""
    latest: dict[str, dict[int, str]] = defaultdict(dict)
    for c in done:
        for row in store.history(c.id):
            who = row["reviewer"]
            if who is None:
                continue
            if row["class"] is None:
                latest[who].pop(c.id, None)  # undone
            else:
                latest[who][c.id] = row["class"]
    names = sorted(latest)
    out: dict[str, Any] = {"per_reviewer": {n: len(latest[n]) for n in names}, "pair": None}
    best = max(((a, b, set(latest[a]) & set(latest[b])) for i, a in enumerate(names) for b in names[i + 1 :]),
               key=lambda t: len(t[2]), default=None)  # fmt: skip
    if best and best[2]:
        a, b, shared = best
        ids = sorted(shared)
        la, lb = [latest[a][i] for i in ids], [latest[b][i] for i in ids]
        k = cohen_kappa(la, lb)
        out["pair"] = {"reviewers": [a, b], "cells": len(ids),
                       "agreement": round(sum(x == y for x, y in zip(la, lb, strict=True)) / len(ids), 4),
                       "kappa": None if k is None else round(k, 4)}  # fmt: skip
    return out
