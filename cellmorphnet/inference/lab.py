"""A lab's values measured once on a folder of its images (``measure_lab``), and the probabilities of labelled
cells read with them (``lab_probs``, for conformal calibration): what ``cellmorphnet lab create`` and ``lab
calibrate`` store in a lab profile (``labs``).

The measurement is the set-level survey (``adaptation``) run on the lab's folder as one set, with the run's
home preprocessing: each cell's implied crop side (the median is kept), the nuclei's optical density, the stain
contrast settled with the model's help, and in fields the red cells' diameter.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.cells import find_cells
from cellmorphnet.inference.images import Item
from cellmorphnet.inference.options import LabSet, inference_options
from cellmorphnet.inference.predict import one_view_probs
from cellmorphnet.inference.prepare import prepare_set

MIN_LAB_IMAGES = 16  # a lab profile is measured on at least this many images (a set's stain needs a set)


def measure_lab(rm, files: list[Item], *, name: str | None = None, workers: int = 2,
                minimum: int = MIN_LAB_IMAGES) -> tuple[LabSet, int]:  # fmt: skip
    """The lab's values from its images (fields are searched for their white cells first) and how many cells
    they were measured on; ``InvalidData`` when fewer than ``minimum`` cells are found and readable (the stain
    is measured from ``adaptation.MIN_COLOUR_SET`` cells up; below that only the crop side)."""
    stain = rm.record.inference.stain  # the set's stain and contrast, where the run has references for them
    options = inference_options(rm.record, home_preprocessing=True, stain_norm=stain is not None or None,
                                stain_contrast=(stain is not None and bool(stain.contrast)) or None, tta=False)
    items, taken, _ = find_cells(files, "auto", workers, max_cells=options.max_cells)
    diameters = [i.diameter for i in taken.values() if i.kind == "field" and i.diameter]
    if len(items) < minimum:
        raise InvalidData(f"A lab profile needs at least {minimum} cells; {len(items)} found.",
                          hint="Give a folder with more of the lab's images.")  # fmt: skip
    one_view = one_view_probs(rm, options.policy, temperature=options.temperature)
    survey, loaded = prepare_set(items, options, rm.classes, one_view, workers=workers)
    cells = sum(1 for x in loaded if x.error is None)
    if cells < minimum:
        raise InvalidData(f"A lab profile needs at least {minimum} readable cells; {cells} could be read.")
    lab = LabSet(name=name, side=survey.set_side, stain=survey.stain, contrast=survey.contrast,
                 rbc_diameter=float(np.median(diameters)) if diameters else None)  # fmt: skip
    return lab, cells


def lab_probs(rm, items: list[Item], lab: LabSet, *, workers: int = 2, batch_size: int = 64) -> list[np.ndarray | None]:
    """Each single-cell item's class probabilities as ``infer --lab`` gives them (None where unreadable)."""
    from cellmorphnet.inference.predict import predict_files

    options = dataclasses.replace(inference_options(rm.record, lab=dataclasses.replace(lab, conformal=None)),
                                  cells="one")  # fmt: skip
    preds, _ = predict_files(rm, items, options, batch_size=batch_size, top_k=len(rm.classes), workers=workers)
    out: dict = {}
    for p in preds:
        out[p.path] = None if p.error else np.array([dict(p.top_k)[c] for c in rm.classes])
    return [out.get(i) for i in items]
