"""Test-time augmentation on the test split: the 8 flips and quarter turns averaged, against one view.

    python -m benchmarks.tta_ablation RUN --home HOME --json      # results/tta-ablation-DATE.json

The prepared test arrays of the run's first dataset, through ``inference.class_probs`` (what infer,
eval --on and serve run) with and without the 8-view average, calibrated; accuracy, macro-F1 and a
95% bootstrap interval of the accuracy, and how many predictions the average changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._common import emit, header
from benchmarks.accuracy import bootstrap_ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    from sklearn.metrics import f1_score

    from cellmorphnet.data import store
    from cellmorphnet.inference import class_probs
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(args.run, "best", "cpu")
    first = next(iter(rm.record.datasets.values()))
    split = store.load_split(first.name, first.size, "test", args.home)
    result = header("python -m benchmarks.tta_ablation " + " ".join(sys.argv[1:]))
    result.update(run=str(args.run), dataset=first.name, data_size=first.size, image_size=rm.record.image_size)
    preds = {}
    for tta in (False, True):
        probs = np.concatenate([
            class_probs(rm.model, list(split.images[i : i + 128]), rm.record.inference, device=rm.device,
                        channels_last=rm.channels_last, tta=tta, temperature=rm.record.temperature)
            for i in range(0, len(split.images), 128)
        ])  # fmt: skip
        pred = probs.argmax(1)
        preds[tta] = pred
        key = "tta_8_views" if tta else "one_view"
        result[key] = {
            "test_accuracy": float((pred == split.labels).mean()),
            "test_macro_f1": float(f1_score(split.labels, pred, average="macro")),
            "test_accuracy_ci95": bootstrap_ci(split.labels, pred),
        }
        print(key, result[key], file=sys.stderr, flush=True)
    result["predictions_changed"] = int((preds[True] != preds[False]).sum())
    result["test_images"] = int(len(split.labels))
    emit(result, args.json)


if __name__ == "__main__":
    main()
