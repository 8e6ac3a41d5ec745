"""Calibration of a trained run: fit the temperature on validation (as training now does at its end) and report
ECE before and after on the test split.

    python -m benchmarks.calibration RUN --home HOME --json     # results/calibration-DATE.json

For runs trained before temperature scaling existed; it stores nothing in the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from benchmarks._common import emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from cellmorphnet.data import store
    from cellmorphnet.data.loader import BatchLoader, DeviceArrays
    from cellmorphnet.data.taxonomy import Taxonomy
    from cellmorphnet.evaluation.metrics import classification_metrics
    from cellmorphnet.model.prediction import LabelSpace, collect_logits
    from cellmorphnet.runs.load import load_run_model, predict_split
    from cellmorphnet.runtime.devices import Precision
    from cellmorphnet.training.calibration import calibrate

    rm = load_run_model(args.run, "best", "cpu")
    rec = rm.record
    name, size = next(iter(rec.data_sizes.items()))
    val = store.load_split(name, size, "val", args.home)
    parts = {name: DeviceArrays(val.images, val.labels, torch.device("cpu"))}
    space = LabelSpace.build(Taxonomy.from_dict(rec.taxonomy), [name], torch.device("cpu"))
    loader = BatchLoader(parts, space.target_offset, 256, rec.image_size, rec.mean, rec.std, train=False,
                         channels_last=rm.channels_last)  # fmt: skip
    cal = calibrate(collect_logits(rm.model, loader, torch.device("cpu"), Precision(None, False)), space)
    classes = rec.taxonomy["local_classes"][name]
    result = header("python -m benchmarks.calibration " + " ".join(sys.argv[1:]))
    result["validation"] = cal
    for label, t in (("before", 1.0), ("after", cal["temperature"])):
        rm.record = dataclasses.replace(rec, calibration={"temperature": t})
        out = predict_split(rm, "test", args.home)[name]
        m = classification_metrics(out["labels"], out["probs"], classes)
        result[f"test_{label}"] = {"ece": m["ece"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    print(f"temperature {cal['temperature']:.3f}; test ECE {result['test_before']['ece']:.4f} -> "
          f"{result['test_after']['ece']:.4f}", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
