"""Add the stain reference (``colour.stain_reference``) to a run trained before it existed.

    python benchmarks/stain_reference.py RUN --home HOME

The stain normalisation of ``infer`` needs the training images' nucleus optical density and background
colour, which training measures since the normalisation was added (``training.data.appearance``). This
measures them on the run's own prepared training split exactly as training would (the same sample),
and writes them into the run's config.json and the record inside each of its checkpoints (atomically),
leaving everything else as it was. Used for the runs measured in docs/benchmarks.md and the shipped model.
"""

from __future__ import annotations

import argparse
import json
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
