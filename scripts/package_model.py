"""Turn a trained run into the model that ships inside the package (cellmorphnet/shipped/NAME).

    python scripts/package_model.py RUN_DIR --home HOME [--name bloodmnist] [--command "how it was trained"]
        [--results FILE] [--external ../shared/data/external/zheng2018-d1]
    python scripts/package_model.py --card-only cellmorphnet/shipped/bloodmnist --summary SHIPPED.json
        [--command ...] [--results ...] [--external DIR]      # write the model card of a packaged model again

HOME must hold the run's data prepared as it was trained (``prepare bloodmnist --size 64``): the
shipped run is evaluated there. The checkpoint is slimmed to what prediction needs (weights,
record, epoch; no optimizer) and its convolution weights (nearly all of its bytes) stored in half
precision; batch-norm statistics and the classifier stay in single precision. Then both
the original and the slim copy are run on the test split: the script refuses to ship when the test
accuracy drops or more than 1 in 1000 test predictions change. Writes config.json, history.json,
reference_images.npz, the test metrics (eval/test/metrics.json), a finished heartbeat and
MODEL_CARD.md, and prints a JSON summary (docs/results/shipped-model-*.json). With ``--external``, the
model card also reports the packaged model on that folder of another lab's labelled cells.
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
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--home", type=Path)
    ap.add_argument("--name", default="bloodmnist")
    ap.add_argument("--command", default="", help="the command that trained the run (for the model card)")
    ap.add_argument("--results", default="", help="the result file of that training (for the model card)")
    ap.add_argument("--external", type=Path, help="another lab's labelled cells (class folders), for the model card")
    ap.add_argument("--card-only", type=Path, help="write the model card of this packaged model again, and stop")
    ap.add_argument("--summary", type=Path, help="with --card-only: the JSON summary its packaging printed")
    args = ap.parse_args()
    if args.card_only:
        if not args.summary:
            ap.error("--card-only needs --summary")
        card_only(args.card_only, args.summary, args.external, args.command, args.results)
        return
    if args.run is None or args.home is None:
        ap.error("RUN and --home are needed (or --card-only)")

    import numpy as np
    import torch

    from cellmorphnet import __version__
    from cellmorphnet._io import write_json
    from cellmorphnet.evaluation.report import evaluate_run
    from cellmorphnet.runs import checkpoint
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model, predict_split
    from cellmorphnet.runs.record import REFERENCE_FILE, RunRecord

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
    dest = ROOT / "cellmorphnet" / "shipped" / args.name
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
        lab = other_lab(load_run_model(staged, "best", "cpu"), args.external) if args.external else None
        today = datetime.now(timezone.utc).date().isoformat()
        card = model_card(args.name, record, state["epoch"], m, compare, size, args.command, args.results, lab,
                          __version__, today)  # fmt: skip
        (staged / "MODEL_CARD.md").write_text(card, encoding="utf-8")
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
        "other_lab": lab,
    }
    print(json.dumps(summary, indent=2))


FIVE = "basophil,eosinophil,lymphocyte,monocyte,neutrophil"  # the white-cell types the other lab's set holds


def other_lab(rm, folder: Path) -> dict:
    """The shipped model on another lab's labelled white cells with every default of ``infer``: the plain argmax
    over every class (what ``infer`` answers) and the argmax restricted to the five white-cell types."""
    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.inference import inference_options

    out = {}
    for key, classes in (("plain", None), ("five_types", FIVE)):
        r = evaluate_folder(rm, folder, inference_options(rm.record, classes=classes))
        out[key] = {"balanced_accuracy_min5": r["balanced_accuracy_min5"], "accuracy": r["metrics"]["accuracy"],
                    "per_class_images": r["per_class_images"], "stain_contrast": r["stain_contrast"],
                    "recall": {c: v["recall"] for c, v in r["metrics"]["per_class"].items() if v["support"]}}
    out["folder"] = folder.name
    return out


def model_card(name: str, record, epoch: int, m: dict, compare: dict, size: int, command: str, results: str,
               lab: dict | None, version: str, date: str) -> str:  # fmt: skip
    """MODEL_CARD.md, with the sections of Mitchell et al., "Model Cards for Model Reporting" (2019)."""
    from cellmorphnet.inference.differential import wilson
    datasets = ", ".join(f"{n} at {d.size} px" for n, d in record.datasets.items())
    fp = next(iter(compare.values()))
    cm = m["confusion_matrix"]
    rows = []
    for i, c in enumerate(m["classes"]):
        support, hits, called = sum(cm[i]), cm[i][i], sum(r[i] for r in cm)
        lo, hi = wilson(hits, support)
        plo, phi = wilson(hits, called)
        pc = m["per_class"][c]
        rows.append(f"| {c} | {support} | {pc['precision']:.3f} ({plo:.3f}-{phi:.3f}) | {pc['recall']:.3f} "
                    f"({lo:.3f}-{hi:.3f}) | {pc['f1']:.3f} |")
    n_train = sum(d.counts.get("train", 0) for d in record.datasets.values())
    n_val = sum(d.counts.get("val", 0) for d in record.datasets.values())
    n_test = sum(d.counts.get("test", 0) for d in record.datasets.values())
    if lab:
        plain, five = lab["plain"], lab["five_types"]
        counts = ", ".join(f"{c} {n}" for c, n in plain["per_class_images"].items())

        def row(how: str, r: dict) -> str:
            recall = ", ".join(f"{c} {v:.2f}" for c, v in r["recall"].items())
            return f"| {how} | {r['balanced_accuracy_min5']:.3f} | {r['accuracy']:.3f} | {recall} |"

        lab_text = f"""On one other lab's white cells (`{lab["folder"]}`: Zheng et al. 2018, Dataset 1, 300 images,
another camera and a rapid stain; {counts}), with every default of `cellmorphnet infer` (cell framing, stain
normalisation, stain contrast, 8-view average). Balanced accuracy is the mean recall over the types with
at least 5 images (eosinophil, lymphocyte, monocyte, neutrophil):

| how the answer is read | balanced accuracy | accuracy | recall per type |
| --- | ---: | ---: | --- |
{row(f"plain argmax over all {len(record.classes)} classes (what `infer` answers)", plain)}
{row(f"argmax over the five white-cell types only (`--classes {FIVE}`)", five)}

With the plain argmax most of that lab's lymphocytes are called erythroblasts (a small round dark nucleus
in both). Where every image is known to be a white cell, `--classes` restricts the answer accordingly.
Measured with `cellmorphnet eval {name} --on FOLDER [--classes {FIVE}]` (result files
`docs/results/shipped-model-other-lab-*-2026-12-01.json`)."""
    else:
        lab_text = "Not measured for this build (package it with `--external DIR`)."
    return f"""# Model card: `{name}` (the model that ships with cellmorphnet)

Ready to use right after install, offline: `cellmorphnet infer {name} FOLDER`, `cellmorphnet serve` (its
default), `cellmorphnet status {name}`, `cellmorphnet eval {name}` (after
`cellmorphnet fetch bloodmnist --size 64 && cellmorphnet prepare bloodmnist --size 64`).

**Research use only.** cellmorphnet is not a medical device; its predictions are not a diagnosis.

## Model details
- Version: cellmorphnet {version}, packaged {date}. Weights' licence: CC BY 4.0 (derived from the PBC
  images); code: MIT.
- Architecture: {record.config.model} (ImageNet weights, then trained), {record.image_size} px input,
  {len(record.classes)} classes: {", ".join(record.classes)}.
- Trained on: {datasets}, recipe `{record.config.recipe}` ({record.config.epochs} epochs; the weights of epoch
  {epoch}, the best by validation macro-F1); how: {command or "see docs/benchmarks.md"}
  {f"(result file `{results}`)" if results else ""}.
- Calibrated: temperature {record.temperature:.3f} fitted on the validation split.
- Convolution weights stored in half precision ({size / 1e6:.1f} MB): on the {fp["images"]:,} test images
  {fp["top1_changed"]} prediction(s) changed against single precision (test accuracy {fp["accuracy_fp32"]:.4f} in
  single, {fp["accuracy_fp16"]:.4f} in half precision; largest probability difference {fp["max_abs_prob_diff"]:.1e}).

## Intended use
Sorting and counting single-cell images of peripheral blood smears (Romanowsky-type stains such as
May-Grünwald-Giemsa) into the eight classes above, for research: pre-classification that a person
reviews, and a starting point for training on a lab's own images.

**Out of scope:** diagnosis or any clinical decision; cells outside the eight normal classes (blasts,
smudge cells, atypical lymphocytes, parasites...), which it will still put into one of the eight; whole
smear fields with many cells (it classifies one framed cell per image); bone marrow; other stains
(e.g. Wright-only or immunostains) and non-blood images.

## Factors
What changes its accuracy: the stain and staining protocol, the camera and its white balance, the
magnification (cells are framed at the training data's scale from each set's nuclei), focus and
compression. `infer` adapts a set's stain and stain contrast to the training images' only for sets of
16 or more images in which it finds a nucleus; smaller sets are classified as they come. Its confidence
is calibrated on PBC's validation split, not on other labs' images.

## Training data
This project's rebuild of BloodMNIST from the 17,092 PBC source images (Acevedo et al. 2020), cut and
resized as MedMNIST describes (centre crop 200x200, bicubic resize), with the official per-class split
sizes ({n_train:,} train / {n_val:,} validation / {n_test:,} test) but **not the official split
membership**, which MedMNIST does not publish: {datasets}.

`cellmorphnet eval {name}` on the official BloodMNIST file is refused (its checksum differs from the
rebuild this model was trained on), and must stay refused (so do not pass `--accept-data-change` for it):
the official test split shares images with this model's training split, so it would report an inflated
figure. Score it on the rebuild (as below) or on images of your own (`cellmorphnet eval {name} --on FOLDER`).

## Test metrics (PBC-rebuilt BloodMNIST test split, 8-view average as `cellmorphnet eval` computes them)

accuracy {m["accuracy"]:.4f}, balanced accuracy {m["balanced_accuracy"]:.4f}, macro-F1 {m["macro_f1"]:.4f},
ECE {m["ece"]:.4f} (after calibration). Per class, with 95% Wilson intervals:

| class | test images | precision | recall | F1 |
| --- | ---: | --- | --- | ---: |
{chr(10).join(rows)}

## Another lab's cells
{lab_text}

## Caveats
- The test split comes from the same lab, microscope and stain as the training data; expect lower
  accuracy on other labs' images (above), and check it on labelled images of your own first
  (`cellmorphnet eval {name} --on FOLDER`).
- The stain normalisation and stain contrast need sets of 16 or more images with a nucleus.
- Only the eight normal classes are known; an abnormal cell gets one of them.

## Data and attribution

Trained on images of the PBC dataset (Acevedo et al., "A dataset of microscopic peripheral blood cell
images for development of automatic recognition systems", Data in Brief 30, 2020; Mendeley Data,
doi:10.17632/snkd93bnjr.1), licensed CC BY 4.0, in the BloodMNIST format of MedMNIST (Yang et al.,
Scientific Data 10, 2023) as rebuilt by this project (above). The weights are derived from that data;
cite both when you publish results.
"""


def card_only(folder: Path, summary: Path, external: Path | None, command: str, results: str) -> None:
    """Write MODEL_CARD.md of an already packaged model again (from its files, its packaging summary and, with
    ``external``, another lab's cells)."""
    from cellmorphnet import __version__
    from cellmorphnet._io import read_json
    from cellmorphnet.runs import checkpoint
    from cellmorphnet.runs.load import load_run_model

    info = read_json(summary)
    state = checkpoint.load(folder / "checkpoints" / "best.pt")
    record = checkpoint.record_of(state)
    report = read_json(folder / "eval" / "test" / "metrics.json")
    m = report["datasets"][next(iter(report["datasets"]))]["metrics"]
    lab = other_lab(load_run_model(folder, "best", "cpu"), external) if external else None
    text = model_card(folder.name, record, state["epoch"], m, info["fp16_vs_fp32_on_test"],
                      (folder / "checkpoints" / "best.pt").stat().st_size, command, results, lab, __version__,
                      info["date"][:10])  # fmt: skip
    (folder / "MODEL_CARD.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
