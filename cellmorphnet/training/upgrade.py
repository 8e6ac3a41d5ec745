"""Bring a run trained by an earlier version up to what this version's prediction needs, from its own data.

Training measures the training images' stain (``record.StainReference``: nucleus optical density,
background, and the per-class cytoplasm-to-nucleus ratios the stain contrast compares with) since those
steps were added (``training.data.appearance``). ``upgrade_run`` measures them on the run's own prepared
training split exactly as training does (the same sample) and writes them into the run's ``config.json``
and the record inside each of its checkpoints, atomically, leaving everything else as it was. Where the
run already has a stain reference, the data must give the same nucleus density and background, or it is
not the data the run was trained on and nothing is written. A run without a trust reference (``runs.trust``,
which the verdicts use) gets one, measured on the same data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cellmorphnet.errors import DataChanged, RunError
from cellmorphnet.runs import checkpoint, trust
from cellmorphnet.runs import folders as runs
from cellmorphnet.runs.load import load_run_model
from cellmorphnet.runs.record import RunRecord
from cellmorphnet.training.calibration import trust_reference


def upgrade_run(run_dir: Path, home: Path | None = None) -> dict[str, Any]:
    """Measure and store the run's stain reference; returns what was found and whether anything changed."""
    import torch

    from cellmorphnet.data import store
    from cellmorphnet.data.loader import DeviceArrays
    from cellmorphnet.training.data import appearance

    run_dir = Path(run_dir)
    if runs.is_packaged(run_dir):
        raise RunError(f"{run_dir.name} ships with cellmorphnet and is already up to date.")
    record = RunRecord.load(run_dir)
    first = next(iter(record.datasets.values()))
    changes = record.data_changes(home, [first.name])
    if changes:
        raise DataChanged(f"The data changed since this run trained: {'; '.join(changes)}.",
                          hint=f"Restore it with: {first.restore_command()}")  # fmt: skip
    split = store.load_split(first.name, first.size, "train", home)
    stain = appearance(DeviceArrays(split.images, split.labels, torch.device("cpu")), first.classes)["stain"]
    if stain is None:
        raise RunError(f"No nucleus was found in {first.name}'s training images: there is no stain to measure.")
    old = record.inference.stain
    if old is not None and (old.nucleus_density, old.background) != (stain.nucleus_density, stain.background):
        raise DataChanged(f"{first.name} as prepared here is not what {run_dir.name} was trained on: its stain "
                          f"reference is {old.to_dict()}, the data gives {stain.to_dict()}.",
                          hint=f"Restore it with: {first.restore_command()}")  # fmt: skip
    with runs.RunLock(run_dir):  # not while a training process writes the run
        if old != stain:
            dataclasses.replace(record, inference=dataclasses.replace(record.inference, stain=stain)).save(run_dir)
            for path in sorted((run_dir / "checkpoints").glob("*.pt")):
                state = checkpoint.load(path)
                state["record"]["inference"]["stain"] = stain.to_dict()
                checkpoint.save(state, path)
        marks = None
        if not (run_dir / trust.TRUST_FILE).exists() and record.parent is None:
            rm = load_run_model(run_dir, device="cpu")
            val = store.load_split(first.name, first.size, "val", home)
            ref = trust_reference(rm.record, rm.model, split.images, split.labels, val.images)
            ref.save(run_dir)
            marks = {"typical": ref.typical, "home": ref.home}
    return {"run": str(run_dir), "stain": stain.to_dict(), "trust": marks, "changed": old != stain or bool(marks)}
