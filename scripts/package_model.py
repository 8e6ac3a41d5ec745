"""Turn a trained run into the model that ships inside the package (cellmorphnet/models/NAME).

    python scripts/package_model.py RUN_DIR --home HOME [--name bloodmnist] [--command "how it was trained"]

HOME must hold the run's data prepared as it was trained (``prepare bloodmnist --size 64``): the
shipped run is evaluated there. The checkpoint is slimmed to what prediction needs (weights,
record, epoch; no optimizer) and its convolution weights (nearly all of its bytes) stored in half
precision; batch-norm statistics and the classifier stay in single precision. Then both
the original and the slim copy are run on the test split: the script refuses to ship when the test
accuracy drops or more than 1 in 1000 test predictions change. Writes config.json, history.json,
reference_images.npz, the test metrics (eval/test/metrics.json), a finished heartbeat and
MODEL_CARD.md, and prints a JSON summary (docs/results/shipped-model-*.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--name", default="bloodmnist")
    ap.add_argument("--command", default="", help="the command that trained the run (for the model card)")
    ap.add_argument("--results", default="", help="the result file of that training (for the model card)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from cellmorphnet import checkpoint, runs
    from cellmorphnet._io import write_json
    from cellmorphnet.evaluation.report import evaluate_run
    from cellmorphnet.record import REFERENCE_FILE, RunRecord
    from cellmorphnet.run_model import load_run_model, predict_split

    src = args.run.resolve()
    state = checkpoint.load(src / "checkpoints" / "best.pt")
    record = checkpoint.record_of(state)
    if RunRecord.load(src).mismatch(record):
        sys.exit(f"{src}/config.json does not match best.pt")
    slim = {
        "format": state["format"],
        "epoch": state["epoch"],
        "model": {k: v.half() if v.is_floating_point() and v.dim() == 4 else v for k, v in state["model"].items()},
        "record": state["record"],
        "class_names": state["class_names"],
    }
    dest = ROOT / "cellmorphnet" / "models" / args.name
    with tempfile.TemporaryDirectory(dir=dest.parent.parent) as tmp:
        staged = Path(tmp) / args.name
        (staged / "checkpoints").mkdir(parents=True)
        checkpoint.save(slim, staged / "checkpoints" / "best.pt")
        for name in (runs.CONFIG, runs.HISTORY, REFERENCE_FILE):
            shutil.copy2(src / name, staged / name)
        write_json(staged / runs.HEARTBEAT, {"state": "finished", "epoch": state["epoch"],
                                              "epochs_planned": record.config.epochs})  # fmt: skip

        full = predict_split(load_run_model(src, "best", "cpu"), "test", args.home)
        half = predict_split(load_run_model(staged, "best", "cpu"), "test", args.home)
        compare = {}
        for ds in full:
            a, b = full[ds]["probs"], half[ds]["probs"]
            compare[ds] = {
                "images": len(a),
                "top1_changed": int((a.argmax(1) != b.argmax(1)).sum()),
                "max_abs_prob_diff": float(np.abs(a - b).max()),
                "accuracy_fp32": float((a.argmax(1) == full[ds]["labels"]).mean()),
                "accuracy_fp16": float((b.argmax(1) == half[ds]["labels"]).mean()),
            }
        # Nothing measurable may be lost: test accuracy no lower, and at most 1 in 1000 predictions changed.
        if any(c["accuracy_fp16"] < c["accuracy_fp32"] or c["top1_changed"] > c["images"] / 1000
               for c in compare.values()):  # fmt: skip
            sys.exit(f"half precision loses accuracy: {compare}")

        report = evaluate_run(staged, home=args.home, device="cpu")
        # shipped files name the run and its checkpoint relative to it: no machine's path goes into the package
        report.update(run=args.name, checkpoint="checkpoints/best.pt")
        write_json(staged / "eval" / "test" / "metrics.json", report)
        m = report["datasets"][next(iter(report["datasets"]))]["metrics"]
        size = (staged / "checkpoints" / "best.pt").stat().st_size
        (staged / "MODEL_CARD.md").write_text(_card(args, record, state["epoch"], m, compare, size), encoding="utf-8")
        dest.parent.mkdir(exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/package_model.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "shipped": str(dest.relative_to(ROOT)),
        "checkpoint_bytes": (dest / "checkpoints" / "best.pt").stat().st_size,
        "source_checkpoint_bytes": (src / "checkpoints" / "best.pt").stat().st_size,
        "fp16_vs_fp32_on_test": compare,
        "test_metrics": {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece")},
        "epoch": state["epoch"],
        "temperature": record.temperature,
    }
    print(json.dumps(summary, indent=2))


def _card(args, record, epoch, m, compare, size) -> str:
    datasets = ", ".join(f"{n} at {d.size} px" for n, d in record.datasets.items())
    fp = next(iter(compare.values()))
    return f"""# The shipped model: `{args.name}`

Ready to use right after install, offline: `cellmorphnet infer {args.name} FOLDER`,
`cellmorphnet serve` (its default), `cellmorphnet status {args.name}`, `cellmorphnet eval {args.name}`
(after `cellmorphnet fetch bloodmnist --size 64 && cellmorphnet prepare bloodmnist --size 64`).

**Research use only.** cellmorphnet is not a medical device; its predictions are not a diagnosis.

- Architecture: {record.config.model} (ImageNet weights, then trained), {record.image_size} px input,
  {len(record.classes)} classes: {", ".join(record.classes)}.
- Trained on: {datasets}, recipe `{record.config.recipe}` ({record.config.epochs} epochs; the weights of epoch
  {epoch}, the best by validation macro-F1); how: {args.command or "see docs/benchmarks.md"}
  {f"(result file `{args.results}`)" if args.results else ""}.
- Calibrated: temperature {record.temperature:.3f} fitted on the validation split.
- Convolution weights stored in half precision ({size / 1e6:.1f} MB): on the {fp["images"]:,} test images
  {fp["top1_changed"]} prediction(s) changed against single precision (test accuracy {fp["accuracy_fp32"]:.4f} in
  single, {fp["accuracy_fp16"]:.4f} in half precision; largest probability difference {fp["max_abs_prob_diff"]:.1e}).

## Test metrics (PBC-rebuilt BloodMNIST test split, 8-view average as `cellmorphnet eval` computes them)

accuracy {m["accuracy"]:.4f}, balanced accuracy {m["balanced_accuracy"]:.4f}, macro-F1 {m["macro_f1"]:.4f},
ECE {m["ece"]:.4f} (after calibration). On images from other labs it is much less accurate: see
docs/benchmarks.md, "Generalisation to another lab", and check it on labelled images of your own first
(`cellmorphnet eval {args.name} --on FOLDER`).

## Data and attribution

Trained on images of the PBC dataset (Acevedo et al., "A dataset of microscopic peripheral blood cell
images for development of automatic recognition systems", Data in Brief 30, 2020; Mendeley Data,
doi:10.17632/snkd93bnjr.1), licensed CC BY 4.0, as cut and resized by MedMNIST (BloodMNIST; Yang et al.,
Scientific Data 10, 2023). The weights are derived from that data; cite both when you publish results.
"""


if __name__ == "__main__":
    main()
