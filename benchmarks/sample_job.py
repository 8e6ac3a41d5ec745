"""The README's main job on the embedded sample, timed, and why the sample is prepared at 64 px.

    python -m benchmarks.sample_job --json > docs/results/sample-job-DATE.json

1. ``cellmorphnet fetch sample && train --datasets sample && eval && status`` with the installed
   command in a fresh home: wall time of the whole job and of training, best validation macro-F1,
   test macro-F1 on the sample's 192 test cells.
2. The same 10-epoch recipe fed the stored 28 px cells at 28 px and at 64 px (best validation macro-F1
   and training time of each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, header

RECIPE_10 = ["--epochs", "10", "--lr", "1e-3", "--unfreeze-epochs", "1,3", "--patience", "10"]


def _run(home: Path, *args: str) -> tuple[float, str]:
    exe = shutil.which("cellmorphnet") or str(Path(sys.executable).parent / "cellmorphnet")
    start = time.perf_counter()
    out = subprocess.run([exe, *args], env={**os.environ, "CELLMORPHNET_HOME": str(home)}, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = header("python -m benchmarks.sample_job " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "job"
        t_fetch, _ = _run(home, "fetch", "sample")
        t_train, out = _run(home, "train", "--datasets", "sample", "--json")
        summary = json.loads(out)
        t_eval, out = _run(home, "eval", "--json")
        report = json.loads(out)
        t_status, _ = _run(home, "status")
        metrics = report["datasets"]["sample"]["metrics"]
        result["main_job"] = {
            "wall_time_s": round(t_fetch + t_train + t_eval + t_status, 1), "train_command_s": round(t_train, 1),
            "epochs": summary["epochs_done"], "best_val_macro_f1": summary["best_val_f1"],
            "test_macro_f1": metrics["macro_f1"], "test_accuracy": metrics["accuracy"], "test_n": metrics["n"],
        }  # fmt: skip
        result["input_size"] = {}
        for size in (28, 64):
            t, out = _run(Path(tmp) / f"s{size}", "train", "--datasets", "sample", "--data-size", "28",
                          "--image-size", str(size), *RECIPE_10, "--json")  # fmt: skip
            result["input_size"][str(size)] = {"best_val_macro_f1": json.loads(out)["best_val_f1"],
                                               "train_command_s": round(t, 1)}  # fmt: skip
    j = result["main_job"]
    print(f"main job {j['wall_time_s']} s (train {j['train_command_s']} s), val F1 {j['best_val_macro_f1']:.3f}, "
          f"test F1 {j['test_macro_f1']:.3f}; 28 vs 64 px: {result['input_size']}", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
