"""Generalisation to another lab: crop policy x training augmentation x adaptation at prediction time.

    python -m benchmarks.generalisation RUN_BASIC RUN_STAIN --json > docs/results/generalisation-DATE.json

For each run (trained on BloodMNIST/PBC alone, one with ``--augment basic`` and one with the default
``--augment stain``) and each combination of ``--crop centre|cell`` and adaptation (none,
``--stain-norm`` alone, with ``--stain-contrast`` (the two on by default), ``--colour-match``, ``--adapt-bn``,
and AdaBN with either; files before 2026-11-28's stain contrast have no ``contrast`` rows, and their
``stain-norm`` rows were the default then),
exactly what ``cellmorphnet eval RUN --on`` computes (runs trained before the stain normalisation existed need
``cellmorphnet upgrade RUN`` first for the stain-norm rows; run again, it adds the stain contrast's
per-class ratios for the contrast rows to runs trained before those existed):

- on ``../shared/data/external/zheng2018-d1`` (300 white cells from another lab, microscope, camera and
  stain), the argmax restricted to the five white-cell types (``--classes`` below; the issue's
  definition; the first table, 2026-11-27, used ``--classes wbc``, which also allows ``ig``): balanced
  accuracy over the classes with at least 5 images, and accuracy;
- on the 240 full-size PBC test JPEGs (the training lab's own images, through the same path):
  accuracy, so that what helps on the other lab can be checked for what it costs at home.

Also each run's test-split accuracy on the prepared arrays (``cellmorphnet eval``).

``--tta``: ``off`` (one view), ``on`` (infer's default: the 8 flips and turns), ``scales`` (``on`` plus
infer's ``--scale-views``: framed cells at 3 crop sides x 4 orientations). The scale-view result files
of 2026-11-28 were made while the scale views were briefly the default: their rows labelled ``flips``
are ``on`` here, those labelled ``on`` are ``scales``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._common import SHARED, emit, header

# name: (stain normalisation, colour match, AdaBN, stain contrast)
ADAPTATIONS = {"none": (False, False, False, False), "stain-norm": (True, False, False, False),
               "stain-norm + contrast": (True, False, False, True), "colour-match": (False, True, False, False),
               "adapt-bn": (False, False, True, False), "stain-norm + adapt-bn": (True, False, True, False),
               "colour-match + adapt-bn": (False, True, True, False)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders")
    ap.add_argument("--home", type=Path, default=None, help="the home the runs' prepared data is in (for eval)")
    ap.add_argument("--crops", default="centre,cell")
    ap.add_argument("--tta", default="off,on", help="test-time views: off, on (the default) or scales (see above)")
    ap.add_argument("--classes", default="basophil,eosinophil,lymphocyte,monocyte,neutrophil",
                    help="the argmax on the external set is restricted to these (as infer --classes)")
    ap.add_argument("--adaptations", default=",".join(ADAPTATIONS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.evaluation.report import evaluate_run
    from cellmorphnet.inference import inference_options
    from cellmorphnet.runs.load import load_run_model

    external = SHARED / "external" / "zheng2018-d1"
    pbc = SHARED / "bloodmnist-pbc" / "test_images"
    result = header("python -m benchmarks.generalisation " + " ".join(sys.argv[1:]))
    result["rows"] = []
    for run in args.runs:
        rm = load_run_model(run, "best", "cpu")
        augment = rm.record.config.augment
        try:
            arrays = evaluate_run(run, home=args.home, device="cpu")["datasets"]
            test_acc = next(iter(arrays.values()))["metrics"]["accuracy"]
        except Exception as e:  # noqa: BLE001 - the prepared data may not be here; the rest still runs
            test_acc = None
            print(f"{run.name}: no test-split accuracy ({e})", file=sys.stderr)
        combos = [(c, n, t) for c in args.crops.split(",") for n in args.adaptations.split(",")
                  for t in args.tta.split(",")]  # fmt: skip
        for crop, name, tta in combos:
            stain, colour, adapt, contrast = ADAPTATIONS[name]
            on, scales = tta != "off", tta == "scales"
            choices = {"crop": crop, "colour_match": colour, "adapt_bn": adapt, "tta": on, "stain_norm": stain,
                       "scale_views": scales, "stain_contrast": contrast}  # fmt: skip
            ext = evaluate_folder(rm, external, inference_options(rm.record, classes=args.classes, **choices))
            home = evaluate_folder(rm, pbc, inference_options(rm.record, **choices))
            row = {
                "run": run.name, "image_size": rm.record.image_size, "augment": augment, "classes": args.classes,
                "crop": crop, "adaptation": name, "tta": tta,
                "external_balanced_accuracy": ext["balanced_accuracy_min5"],
                "external_accuracy": ext["metrics"]["accuracy"],
                "external_per_class_recall": {c: round(v["recall"], 3)
                                              for c, v in ext["metrics"]["per_class"].items() if v["support"]},
                "external_unlike_training": ext["unlike_training"], "external_framing": ext["framing"],
                "pbc_jpeg_accuracy": home["metrics"]["accuracy"], "pbc_test_split_accuracy": test_acc,
                "external_stain_contrast": ext["stain_contrast"], "pbc_jpeg_stain_contrast": home["stain_contrast"],
            }  # fmt: skip
            result["rows"].append(row)
            print(f"{run.name} [{augment}] crop {crop:6} {name:24} tta {tta:3} external bal. acc "
                  f"{row['external_balanced_accuracy']:.3f} (acc {row['external_accuracy']:.3f}) | PBC JPEGs "
                  f"{row['pbc_jpeg_accuracy']:.3f} | contrast {ext['stain_contrast']} / {home['stain_contrast']}",
                  file=sys.stderr, flush=True)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
