"""Is the cell framing's scale right? The default path on another lab's cells, with the crop scaled away from it.

    python -m benchmarks.studies.framing_scale RUN --json       # results/framing-scale-DATE.json

Runs ``eval RUN --on ../shared/data/external/zheng2018-d1 --classes FIVE`` (the issue's five white-cell
types, as benchmarks/generalisation.py; results/framing-scale-2026-11-27 used ``wbc``, which also allows
``ig``, and was measured before the stain normalisation) with every default (the stain normalisation
where the run has a stain reference, the 8 flips and turns), except
that the run's measured nucleus fraction is multiplied by each factor (a factor above 1 makes the
crops smaller, so the cells appear larger). If the framing measured on the training images is right,
factor 1 scores best.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from benchmarks._common import SHARED, emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--factors", default="0.7,0.85,1.0,1.2,1.4")
    ap.add_argument("--classes", default="basophil,eosinophil,lymphocyte,monocyte,neutrophil")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.inference import inference_options
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(args.run, "best", "cpu")
    result = header("python -m benchmarks.studies.framing_scale " + " ".join(sys.argv[1:]))
    result["rows"] = []
    for factor in (float(f) for f in args.factors.split(",")):
        options = inference_options(rm.record, classes=args.classes)
        policy = dataclasses.replace(options.policy, nucleus_fraction=options.policy.nucleus_fraction * factor)
        report = evaluate_folder(rm, SHARED / "external" / "zheng2018-d1", dataclasses.replace(options, policy=policy))
        recall = {c: round(v["recall"], 3) for c, v in report["metrics"]["per_class"].items() if v["support"]}
        result["rows"].append({"factor": factor, "balanced_accuracy_min5": report["balanced_accuracy_min5"],
                               "per_class_recall": recall})  # fmt: skip
        print(f"factor {factor}: balanced accuracy {report['balanced_accuracy_min5']:.3f} {recall}", file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
