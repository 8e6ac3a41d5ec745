"""What torchrun costs or gains: training and inference images/s with N processes against one.

    python -m benchmarks.distributed --json                 # results/distributed-DATE.json (this CPU: 1 and 2)
    python -m benchmarks.distributed --device cuda --nprocs 1,2,4,8 --image-size 224 --json   # one node's GPUs

Each configuration runs the installed command as users do: ``cellmorphnet train`` in one process, or
``python -m torch.distributed.run --standalone --nproc-per-node N -m cellmorphnet train`` (the same global
batch), on the embedded sample at ``--image-size`` for ``--epochs`` epochs; the figure is the median of the
training images/s the run records per epoch after the first (every rank's images together), and per process.
Inference: ``cellmorphnet infer bloodmnist`` over the 240 PBC JPEGs and the other lab's 300 cells, wall time
of the whole command (set-level survey included) and images/s. On a CPU the processes share the cores
(``OMP_NUM_THREADS`` = cores / N each), so this measures the cost of the communication and the split, not a
speed-up; on GPUs each process has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import SHARED, emit, header

PBC_JPEGS = SHARED / "bloodmnist-pbc" / "test_images"
EXTERNAL = SHARED / "external" / "zheng2018-d1"


def _command(n: int, args: list[str]) -> list[str]:
    if n == 1:
        return [sys.executable, "-m", "cellmorphnet", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "cellmorphnet", *args]  # fmt: skip


def _run(n: int, args: list[str], home: Path, threads: int) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "CELLMORPHNET_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    r = subprocess.run(_command(n, args), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} with {n} processes failed:\n{r.stderr[-3000:]}")
    return seconds, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nprocs", default="1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--no-infer", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    result = header("python -m benchmarks.distributed " + " ".join(sys.argv[1:]))
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(v) for v in args.nprocs.split(",")]:
            threads = max(1, cores // n) if args.device == "cpu" else 1
            home = Path(tmp) / f"home-{n}"
            seconds, r = _run(n, ["train", "--datasets", "sample", "--epochs", str(args.epochs), "--image-size",
                                  str(args.image_size), "--device", args.device, "--name", "b", "--json"],
                              home, threads)  # fmt: skip
            history = json.loads((home / "runs" / "b" / "history.json").read_text())
            ips = statistics.median(history["images_per_s"][1:] or history["images_per_s"])
            row = {"processes": n, "threads_each": threads, "train_images_per_s": round(ips, 1),
                   "train_images_per_s_per_process": round(ips / n, 1), "train_wall_s": round(seconds, 1),
                   "train_loss": [round(v, 4) for v in history["train_loss"]],
                   "val_acc": [round(v, 4) for v in history["val_acc"]]}  # fmt: skip
            if not args.no_infer:
                out = Path(tmp) / f"infer-{n}.csv"
                seconds, _ = _run(n, ["infer", "bloodmnist", str(PBC_JPEGS), str(EXTERNAL), "--out", str(out),
                                      "--device", args.device], home, threads)  # fmt: skip
                images = sum(1 for _ in open(out)) - 1
                row.update(infer_images=images, infer_wall_s=round(seconds, 1),
                           infer_images_per_s=round(images / seconds, 2),
                           infer_images_per_s_per_process=round(images / seconds / n, 2))  # fmt: skip
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    base = rows[0]
    for row in rows:
        row["train_speedup"] = round(row["train_images_per_s"] / base["train_images_per_s"], 3)
        if "infer_images_per_s" in row:
            row["infer_speedup"] = round(row["infer_images_per_s"] / base["infer_images_per_s"], 3)
    result.update(device=args.device, epochs=args.epochs, image_size=args.image_size, rows=rows)
    emit(result, args.json)


if __name__ == "__main__":
    main()
