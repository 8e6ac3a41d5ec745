"""How far off can one crop side per set be? The crop side each white-cell type's nuclei imply, by type.

    python -m benchmarks.studies.framing_by_type RUN --json       # results/framing-by-type-DATE.json

The cell framing uses one crop side per set: the median over its images of the side each image's
nucleus implies (``cellfinder.implied_side``, with the run's measured nucleus fraction). On PBC's own
full-size test JPEGs the right side is known (the training arrays were cut as 200 px centre squares),
so the median implied side of each type, divided by 200, says how far a set of only that type would be
off. The same is listed for the other lab's set (``external/zheng2018-d1``), whose right side is unknown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED, emit, header

PBC_CROP = 200  # the side of the centre square BloodMNIST was cut from


def sides_by_type(folder: Path, fraction: float, data_size: int) -> dict[str, list[float]]:
    from cellmorphnet.inference import collect_files
    from cellmorphnet.vision.cellfinder import find_nucleus, implied_side
    from cellmorphnet.vision.imaging import load_rgb

    files, _ = collect_files([folder])
    out: dict[str, list[float]] = {}
    for f in files:
        img = load_rgb(f)
        n = find_nucleus(img)
        if n is not None:
            out.setdefault(f.parent.name, []).append(implied_side(img, n, fraction, data_size))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet.data.taxonomy import WHITE_CELLS
    from cellmorphnet.runs.record import RunRecord

    policy = RunRecord.load(args.run).inference
    result = header("python -m benchmarks.studies.framing_by_type " + " ".join(sys.argv[1:]))
    for name, folder in (("pbc_jpegs", SHARED / "bloodmnist-pbc" / "test_images"),
                         ("other_lab", SHARED / "external" / "zheng2018-d1")):  # fmt: skip
        sides = sides_by_type(folder, policy.nucleus_fraction, policy.resize_chain[-1])
        rows = {t: {"images": len(v), "median_side": round(float(np.median(v)), 1)}
                for t, v in sorted(sides.items()) if t in WHITE_CELLS}  # fmt: skip
        every = [s for t, v in sides.items() if t in WHITE_CELLS for s in v]
        if name == "pbc_jpegs":
            for r in rows.values():
                r["times_right_side"] = round(r["median_side"] / PBC_CROP, 3)
        result[name] = {"set_side_white_cells": round(float(np.median(every)), 1), "by_type": rows}
        for t, r in rows.items():
            print(f"{name} {t:12} {r}", file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
