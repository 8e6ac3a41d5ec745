"""Does infer on real microscope JPEGs agree with eval on the prepared test arrays?

    python benchmarks/infer_check.py RUN_DIR --home HOME [--json]

Runs ``cellmorphnet eval``'s computation on the run's test split (the arrays) and ``infer``'s on
the 240 full-size JPEGs in ../shared/data/bloodmnist-pbc/test_images (labels from the folder
names), and reports both accuracies and their difference. Target: within 3 points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, emit, header  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet.evaluation.predict import load_run_model
    from cellmorphnet.evaluation.report import evaluate_run
    from cellmorphnet.inference import collect_files, inference_policy, predict_files

    result = header("python benchmarks/infer_check.py " + " ".join(sys.argv[1:]))
    report = evaluate_run(args.run, home=args.home, split="test")
    name = next(iter(report["datasets"]))
    eval_acc = report["datasets"][name]["metrics"]["accuracy"]

    rm = load_run_model(args.run, "best")
    policy = inference_policy(rm.resolved)
    files, _ = collect_files([SHARED / "bloodmnist-pbc" / "test_images"])
    start = time.perf_counter()
    preds, _ = predict_files(rm.model, list(rm.resolved["classes"]), policy, files,
                             channels_last=bool(rm.config["config"].get("channels_last")))  # fmt: skip
    seconds = time.perf_counter() - start
    correct = sum(p.predicted == p.path.parent.name for p in preds if not p.error)
    infer_acc = correct / len(preds)
    result.update(
        run=str(args.run),
        policy=policy,
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
