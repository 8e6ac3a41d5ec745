"""Making and calibrating lab profiles: what ``cellmorphnet lab create`` and ``lab calibrate`` (and ``train
--init``, for the lab it adapted to) call.

``create_profile`` measures a folder of the lab's images (labels not needed) with the run's home preprocessing
(``inference.lab.measure_lab``). ``calibrate_profile`` reads the lab's labelled cells (the review store's
reviewed cells, or a folder of class sub-folders) as ``infer --lab`` reads them and fits split-conformal
prediction at the error rate asked for (``inference.verdict.fit_conformal``); it reports the coverage the sets
reach on those cells and how many cells would be classified.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.images import Upload, collect_files
from cellmorphnet.inference.lab import lab_probs, measure_lab
from cellmorphnet.inference.verdict import fit_conformal
from cellmorphnet.labs import profile as profiles
from cellmorphnet.labs.profile import LabProfile

DEFAULT_ALPHA = 0.05
MIN_CALIBRATION_CELLS = 20  # fewer cannot give a set at 5% (n >= 1/alpha - 1) and say little


def create_profile(rm, name: str, folder: Path, *, home: Path | None = None, force: bool = False,
                   workers: int = 2) -> LabProfile:  # fmt: skip
    """Measure ``folder`` (crops or fields) and store the profile ``name`` for this run."""
    from cellmorphnet.errors import Conflict

    profiles.check_name(name)
    if profiles.path_of(name, home).exists() and not force:
        raise Conflict(f"A lab profile '{name}' exists already.", hint="Pass --force to measure it again.")
    files, _ = collect_files([Path(folder)])
    if not files:
        raise InvalidData(f"{folder} holds no images.", hint="Images end in .jpg, .png, .bmp or .tif.")
    values, cells = measure_lab(rm, files, name=name, workers=workers)
    p = LabProfile(name, rm.run_dir.name, rm.checkpoint_sha256(), profiles.now(), cells,
                   str(Path(folder).resolve()), values)
    profiles.save(p, home)
    return p


@dataclass(frozen=True)
class Calibration:
    profile: LabProfile
    cells: int
    coverage: float  # share of the calibration cells whose set holds their reviewed type
    classified: float  # share whose set holds one type
    classified_right: float | None  # of those, the share right

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict(), "cells": self.cells, "coverage": self.coverage,
                "classified": self.classified, "classified_right": self.classified_right}  # fmt: skip


def labelled_cells(rm, source: Path) -> tuple[list, list[int]]:
    """(items, class indices) from a review database (reviewed cells, their stored crops) or a folder of class
    sub-folders; types the run does not know are left out."""
    from cellmorphnet.data.taxonomy import canonical

    classes = rm.classes
    source = Path(source)
    if source.is_dir():
        from cellmorphnet.data.sources.folder import list_images

        names, items = list_images(source)
        out = [(p, canonical(names[i])) for p, i in items]
        return [p for p, c in out if c in classes], [classes.index(c) for _, c in out if c in classes]
    if not source.exists():
        raise InvalidData(f"{source} does not exist.", hint="Give a review database or a folder of class folders.")
    from cellmorphnet.reviews.store import ReviewStore

    store = ReviewStore(source, [], read_only=True)
    try:
        items, labels = [], []
        for c in store.cells():
            if c.reviewed in classes:
                data, _ = store.crop(c.id)
                items.append(Upload(f"cell-{c.id}", data))
                labels.append(classes.index(c.reviewed))
    finally:
        store.close()
    return items, labels


def calibrate_profile(rm, name: str, source: Path, *, alpha: float = DEFAULT_ALPHA, home: Path | None = None,
                      workers: int = 2) -> Calibration:  # fmt: skip
    """Fit the profile's conformal rule on the lab's labelled cells (``labelled_cells``) and store it."""
    check_alpha(alpha)
    items, labels = labelled_cells(rm, source)
    return calibrate_on(rm, name, items, labels, alpha=alpha, source=str(Path(source).resolve()), home=home,
                        workers=workers)  # fmt: skip


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise InvalidData("--alpha must lie between 0 and 0.5 (0.05: 5% of sets may miss).")


def calibrate_on(rm, name: str, items: list, labels: list[int], *, alpha: float, source: str,
                 home: Path | None = None, workers: int = 2) -> Calibration:  # fmt: skip
    """Fit the profile's conformal rule on these labelled cells (``source`` says where they came from) and store it."""
    check_alpha(alpha)
    prof = profiles.load(name, home)
    values = profiles.for_run(prof, rm)
    probs = lab_probs(rm, items, values, workers=workers)
    keep = [i for i, p in enumerate(probs) if p is not None]
    if len(keep) < MIN_CALIBRATION_CELLS:
        raise InvalidData(f"{source} gives {len(keep)} labelled cells of the run's types; calibrating needs at least "
                          f"{MIN_CALIBRATION_CELLS}.", hint="Review more cells first.")  # fmt: skip
    p = np.stack([probs[i] for i in keep])
    y = np.array([labels[i] for i in keep])
    conformal = fit_conformal(p, y, alpha)
    sets = conformal.sets(p)
    single = sets.sum(1) == 1
    right = (p.argmax(1) == y)[single]
    calibrated = {"source": source, "cells": len(y), "alpha": alpha, "at": profiles.now(),
                  "coverage": float(sets[np.arange(len(y)), y].mean())}  # fmt: skip
    prof = replace(prof, values=replace(values, conformal=conformal), calibrated=calibrated)
    profiles.save(prof, home)
    return Calibration(prof, len(y), calibrated["coverage"], float(single.mean()),
                       float(right.mean()) if right.size else None)  # fmt: skip
