"""Give a run trained before the stain contrast existed its contrast reference, as training measures it now.

    python benchmarks/contrast_reference.py RUN --home H [--write]

``infer``'s stain contrast (``inference.settle_contrast``) compares a set's cytoplasm-to-nucleus density
ratios with the training images' ratio for each class, which training stores in the run's inference
policy (``policy.stain["contrast"]``, from ``training.data.appearance``). This measures it on the run's
first dataset as prepared under H, exactly as training does, checks that the rest of what
``appearance`` measures matches what the run stored (the same data), and with ``--write`` adds it to
the record in every checkpoint and config.json (each written atomically). The shipped model's reference
was added this way (docs/benchmarks.md, "Stain contrast").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, required=True, help="where the run's first dataset is prepared")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    import torch

    from cellmorphnet._io import atomic_path, read_json, write_json
    from cellmorphnet.data import store
    from cellmorphnet.data.loader import DeviceArrays
    from cellmorphnet.training.checkpoint import record_of
    from cellmorphnet.training.data import appearance

    checkpoints = sorted((args.run / "checkpoints").glob("*.pt"))
    record = record_of(torch.load(checkpoints[0], map_location="cpu", weights_only=True))
    first = next(iter(record.datasets.values()))
    split = store.load_split(first.name, first.size, "train", args.home)
    looks = appearance(DeviceArrays(split.images, split.labels, torch.device("cpu")), first.classes)
    stain = dict(record.inference.stain or {})
    stain.pop("contrast", None)
    measured = {k: v for k, v in looks["stain"].items() if k != "contrast"}
    if stain != measured or looks["nucleus_fraction"] != record.inference.nucleus_fraction:
        sys.exit(f"{first.name} as prepared under {args.home} is not what {args.run} was trained on: "
                 f"stored {stain}, measured {measured}")  # fmt: skip
    contrast = looks["stain"]["contrast"]
    print(json.dumps(contrast))
    if not args.write:
        return
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["record"]["inference"]["stain"]["contrast"] = contrast
        mode = path.stat().st_mode
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        path.chmod(mode)  # as it was (the temporary file is private)
    config_file = args.run / "config.json"
    mode, config = config_file.stat().st_mode, read_json(config_file)
    config["inference"]["stain"]["contrast"] = contrast
    write_json(config_file, config)
    config_file.chmod(mode)


if __name__ == "__main__":
    main()
