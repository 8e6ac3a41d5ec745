"""Add the stain reference (``colour.stain_reference``, with the stain contrast's per-class ratios,
``colour.contrast_reference``) to a run trained before it existed.

    python benchmarks/stain_reference.py RUN --home HOME

The stain normalisation and the stain contrast of ``infer`` need the training images' nucleus optical
density, background colour and per-class cytoplasm-to-nucleus ratios, which training measures since they
were added (``training.data.appearance``). This measures them on the run's own prepared training split
exactly as training would (the same sample), and writes them into the run's config.json and the record
inside each of its checkpoints (atomically), leaving everything else as it was. Where the run already has
a stain reference, the data must give the same nucleus density and background (else it is not the data
the run was trained on, and nothing is written). Used for the runs measured in docs/benchmarks.md and the
shipped model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, default=None, help="the home the run's prepared data is in")
    args = ap.parse_args()

    import torch

    from cellmorphnet._io import write_json
    from cellmorphnet.data import store
    from cellmorphnet.data.loader import DeviceArrays
    from cellmorphnet.record import RunRecord
    from cellmorphnet.training import checkpoint
    from cellmorphnet.training.data import appearance

    record = RunRecord.load(args.run)
    first = next(iter(record.datasets.values()))
    split = store.load_split(first.name, first.size, "train", args.home)
    stain = appearance(DeviceArrays(split.images, split.labels, torch.device("cpu")), first.classes)["stain"]
    stored = {k: v for k, v in (record.inference.stain or {}).items() if k != "contrast"}
    if stored and stored != {k: v for k, v in stain.items() if k != "contrast"}:
        sys.exit(f"{first.name} as prepared here is not what {args.run} was trained on: its stain reference is "
                 f"{stored}, the data gives {stain}")  # fmt: skip
    config = json.loads((args.run / "config.json").read_text())
    config["inference"]["stain"] = stain
    write_json(args.run / "config.json", config)
    for path in sorted((args.run / "checkpoints").glob("*.pt")):
        state = checkpoint.load(path)
        state["record"]["inference"]["stain"] = stain
        checkpoint.save(state, path)
    print(json.dumps(stain))


if __name__ == "__main__":
    main()
