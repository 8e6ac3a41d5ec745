"""``train --init --calibrate N``: adapt a run to a lab's reviewed cells but N of each type, then fit the lab
profile's conformal rule on those N.

Split-conformal prediction promises its error rate for cells exchangeable with the ones it was fitted on, scored
by the same model: so the cells it is fitted on must be cells the adapted run never learned from (the fine-tuning's
own held-out cells join its last steps, so they cannot serve). They are read as ``infer --lab`` reads a cell (the
lab's values, every view), by ``labs.build.calibrate_on``, as ``lab calibrate`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.labs.build import MIN_CALIBRATION_CELLS, calibrate_on, check_alpha
from cellmorphnet.labs.profile import check_name


def set_aside(folder: Path, per_type: int, seed: int) -> dict[Path, str]:
    """``per_type`` files of each class folder with more than that many (drawn with ``seed``), by their folder's
    name: the cells to calibrate on. A type with fewer keeps all its cells for training."""
    from cellmorphnet.data.sources.folder import list_images

    names, items = list_images(folder)
    rng = np.random.default_rng(seed)
    by_folder: dict[int, list[Path]] = {}
    for p, i in items:
        by_folder.setdefault(i, []).append(p)
    picked: dict[Path, str] = {}
    for i, name in enumerate(names):
        files = sorted(by_folder.get(i, []))
        if len(files) > per_type:
            picked.update({files[k]: name for k in sorted(rng.permutation(len(files))[:per_type])})
    if len(picked) < MIN_CALIBRATION_CELLS:
        raise InvalidData(f"--calibrate {per_type} sets aside {len(picked)} cells (only types with more than "
                          f"{per_type} give any); calibrating needs at least {MIN_CALIBRATION_CELLS}.",
                          hint="Review more cells of each type, or give a smaller --calibrate.")  # fmt: skip
    return picked


def adapt_and_calibrate(parent_dir: Path, folder: Path, run_dir: Path, *, per_type: int, alpha: float,
                        home: Path | None = None, settings=None, device: str = "auto",
                        events=None) -> dict[str, Any]:  # fmt: skip
    """``training.finetune.adapt`` on ``folder``'s cells but ``per_type`` of each type, then the run's lab profile
    calibrated on those (``summary["conformal"]``: the fit's cells, coverage and share classified)."""
    from cellmorphnet.data.taxonomy import canonical
    from cellmorphnet.inference.engine import load_model
    from cellmorphnet.training.finetune import AdaptSettings, adapt

    check_alpha(alpha)
    check_name(run_dir.name)  # the profile is named after the run: refused before any training
    settings = settings or AdaptSettings()
    picked = set_aside(folder, per_type, settings.seed)
    summary = adapt(parent_dir, folder, run_dir, home=home, settings=settings, device=device, events=events,
                    exclude=frozenset(picked))  # fmt: skip
    rm = load_model(run_dir, home=home)
    # each folder's class as training read it (``lab_cells.match_folders``): the parent's by canonical name, or
    # a new class of the lab's own under its folder's name
    cells = [(p, c) for p, n in picked.items() for c in [canonical(n) if canonical(n) in rm.classes else n]
             if c in rm.classes]  # fmt: skip
    calibration = calibrate_on(rm, summary["lab_profile"], [p for p, _ in cells],
                               [rm.classes.index(c) for _, c in cells], alpha=alpha, home=home,
                               source=f"{Path(folder).resolve()}: {per_type} of each type, set aside from training")
    summary["conformal"] = {**{k: v for k, v in calibration.to_dict().items() if k != "profile"}, "alpha": alpha}
    return summary
