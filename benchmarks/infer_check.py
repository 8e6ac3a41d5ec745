"""Does infer on real microscope JPEGs agree with eval on the prepared test arrays?

    python -m benchmarks.infer_check RUN_DIR --home HOME [--json]

Runs ``cellmorphnet eval``'s computation on the run's test split (the arrays) and ``infer``'s on
the 240 full-size JPEGs in ../shared/data/bloodmnist-pbc/test_images (labels from the folder
names), and reports both accuracies and their difference. Target: within 3 points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks._common import SHARED, emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import cellmorphnet as cmn

    result = header("python -m benchmarks.infer_check " + " ".join(sys.argv[1:]))
    report = cmn.evaluate(args.run, home=args.home, split="test", device="cpu")
    name = next(iter(report["datasets"]))
    eval_acc = report["datasets"][name]["metrics"]["accuracy"]

    rm = cmn.load_run(args.run, device="cpu", home=args.home)
    start = time.perf_counter()
    # the training data's exact geometry and nothing else: what this check is about
    preds = cmn.predict(rm, [SHARED / "bloodmnist-pbc" / "test_images"], crop="centre", colour_match=False,
                        adapt_bn=False, tta=False, stain_norm=False)  # fmt: skip
    seconds = time.perf_counter() - start
    correct = sum(p.predicted == p.path.parent.name for p in preds if not p.error)
    infer_acc = correct / len(preds)
    result.update(
        run=str(args.run),
        policy=rm.record.inference.to_dict(),
        eval_test_accuracy=eval_acc,
        eval_test_n=report["datasets"][name]["metrics"]["n"],
        infer_jpeg_accuracy=infer_acc,
        infer_jpeg_n=len(preds),
        difference_points=(infer_acc - eval_acc) * 100,
        infer_seconds=seconds,
    )
    print(f"eval on test arrays {eval_acc:.4f}, infer on {len(preds)} JPEGs {infer_acc:.4f} "
          f"({result['difference_points']:+.2f} points)", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
