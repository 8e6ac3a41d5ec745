"""The verdict on each cell: ``classified`` (the machine's answer stands) or ``review`` (a person looks), and why.

A lab uses the tool as it uses a digital morphology analyser: the machine pre-classifies, a person verifies
what the machine cannot vouch for. Off its home lab the softmax confidence does not say when the model is wrong
(on another lab's cells, cells at confidence 0.99 were 71% right), so the rule also asks how typical the cell
is of the training cells in the network's feature space (``runs.trust``), and sends the rare, clinically
significant types and the types told by their stain to a person unless the cell looks like the home lab's.
Chosen on PBC validation and the other lab's cells (docs/benchmarks.md, "Verdicts", with the signals that were
measured and not kept).

With a lab profile calibrated on that lab's reviewed cells (``Conformal``), the rule is split-conformal
prediction instead: a cell is classified when its prediction set at the profile's error rate holds one type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASSIFIED = "classified"
REVIEW = "review"
MIN_CONFIDENCE = 0.7  # below it a cell is "uncertain"
RARE_CONFIDENCE = 0.9  # a rare type is classified only at this confidence and on a home-like cell
# Rare in peripheral blood and significant when present: a person verifies them unless the model can vouch for
# the cell (confident, and as typical as the home lab's cells). Erythroblasts and immature granulocytes were also
# what another lab's white cells were most often mistaken for. (Adding the platelet sent 6% more of PBC's own
# JPEGs to review and changed nothing on the other lab's: ``benchmarks.studies.trust_signals --rules``.)
RARE_TYPES = frozenset({"erythroblast", "ig", "blast", "basophil"})
# Told apart by the colour their granules take from the stain (eosin's orange, the basic dye's purple): off the home
# lab's stain the model cannot vouch for them either, and the other lab's most frequent confident error was a
# neutrophil taken for an eosinophil (21 of its 28 classified errors). They get the rare types' test (measured in
# docs/benchmarks.md, "Verdicts": chosen from that one lab's errors; elsewhere it costs only reviews).
STAIN_TYPES = frozenset({"eosinophil", "basophil"})

NO_CELL = "no cell found"
UNLIKE = "unlike the training cells"
UNCERTAIN = "uncertain"
RARE = "rare type, not vouched for off the home lab"
STAIN = "a type told by its stain, not vouched for off the home lab"
NOT_VOUCHED = "rare or stain-told type (the run has no trust reference)"


@dataclass(frozen=True)
class Conformal:
    """Split-conformal prediction fitted on a lab's reviewed cells: the set of a cell is every type whose
    probability is at least ``1 - qhat``; it holds the true type with probability at least ``1 - alpha`` for
    cells exchangeable with the calibration cells (same lab, same stain, same run)."""

    alpha: float
    qhat: float
    cells: int  # calibration cells

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "qhat": self.qhat, "cells": self.cells}

    @classmethod
    def from_dict(cls, d: dict) -> Conformal:
        c = cls(float(d["alpha"]), float(d["qhat"]), int(d["cells"]))
        if not (0 < c.alpha < 1 and 0 <= c.qhat <= 1 and c.cells > 0):
            raise ValueError("conformal values out of range")
        return c

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) boolean: each cell's prediction set."""
        return np.asarray(probs) >= 1.0 - self.qhat - 1e-12


def fit_conformal(probs: np.ndarray, labels: np.ndarray, alpha: float) -> Conformal:
    """Split conformal (the score 1 - p(true type)): ``qhat`` is the ceil((n + 1)(1 - alpha))-th smallest score;
    with too few cells for ``alpha`` (n < 1/alpha - 1) every set holds every type (qhat 1)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    scores = 1.0 - np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    qhat = 1.0 if rank > n else float(np.sort(scores)[rank - 1])
    return Conformal(float(alpha), qhat, n)


def verdict(*, predicted: str, confidence: float, cell_found: bool, typicality: float | None,
            marks: tuple[float, float] | None, probs: np.ndarray | None = None, classes: list[str] | None = None,
            conformal: Conformal | None = None, rare_types: frozenset[str] = RARE_TYPES,
            stain_types: frozenset[str] = STAIN_TYPES) -> tuple[str, str | None]:  # fmt: skip
    """``(verdict, review_reason)`` of one cell. ``marks``: the run's (typical, home) similarity marks
    (``runs.trust``), None where the run has none; ``probs`` and ``classes`` are needed with ``conformal``."""
    if not cell_found:
        return REVIEW, NO_CELL
    if conformal is not None and probs is not None and classes is not None:
        in_set = [c for c, keep in zip(classes, conformal.sets(probs[None])[0], strict=True) if keep]
        if len(in_set) == 1:
            return CLASSIFIED, None
        return REVIEW, f"prediction set of {len(in_set)} types" if in_set else "prediction set empty"
    if marks is not None and typicality is not None and typicality < marks[0]:
        return REVIEW, UNLIKE
    if confidence < MIN_CONFIDENCE:
        return REVIEW, UNCERTAIN
    if predicted in rare_types or predicted in stain_types:
        if marks is None or typicality is None:
            return REVIEW, NOT_VOUCHED
        if confidence < RARE_CONFIDENCE or typicality < marks[1]:
            return REVIEW, RARE if predicted in rare_types else STAIN
    return CLASSIFIED, None
