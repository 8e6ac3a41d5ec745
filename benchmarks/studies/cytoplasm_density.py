"""How densely is the cytoplasm stained next to the nucleus? The ratio, by white-cell type and by set.

    python -m benchmarks.studies.cytoplasm_density RUN --json       # results/cytoplasm-density-DATE.json

Each image as the run's classifier sees it (``infer``'s framing and stain normalisation; the training
arrays as they are): the median optical-density magnitude of a 4 px ring around the nuclear-stained
pixels (those darker than a tenth of the nucleus), divided by the nucleus's median (``colour.ring_ratio``, the
measure ``infer``'s stain contrast matches). The stain
normalisation matches the sets' nuclei, so what is left in this ratio is how strongly a stain colours
the cytoplasm and granules against the nucleus: the shift ``AugmentConfig.stain_contrast`` trains for.
Sets: PBC's full-size test JPEGs, the other lab's white cells (``external/zheng2018-d1``) and 60
training images per class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED, emit, header

PER_CLASS = 60


def summary(by_type: dict[str, list[float]]) -> dict:
    every = [r for v in by_type.values() for r in v]
    return {"all": {"images": len(every), "median_ratio": round(float(np.median(every)), 3)},
            "by_type": {t: {"images": len(v), "median_ratio": round(float(np.median(v)), 3)}
                        for t, v in sorted(by_type.items())}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import dataclasses

    from cellmorphnet.inference import collect_files, inference_options, predict_files
    from cellmorphnet.runs.load import load_run_model
    from cellmorphnet.vision.colour import ring_ratio

    rm = load_run_model(args.run, "best", "cpu")
    opt = inference_options(rm.record)
    result = header("python -m benchmarks.studies.cytoplasm_density " + " ".join(sys.argv[1:]))
    for name, folder in (("pbc_jpegs", SHARED / "bloodmnist-pbc" / "test_images"),
                         ("other_lab", SHARED / "external" / "zheng2018-d1")):  # fmt: skip
        files, _ = collect_files([folder])
        plain = dataclasses.replace(opt, stain_norm=True, stain_contrast=False, tta=False, colour_match=False,
                                    adapt_bn=False, restrict_to=None, scale_views=False)  # fmt: skip
        preds, inputs = predict_files(rm, files, plain, keep_inputs=True)
        by_type: dict[str, list[float]] = {}
        for p in preds:
            r = ring_ratio(inputs[p.path])
            if r is not None:
                by_type.setdefault(p.path.parent.name, []).append(r)
        result[name] = summary(by_type)
    with np.load(SHARED / "bloodmnist-pbc" / "bloodmnist_pbc_64.npz") as z:
        images, labels = z["train_images"], z["train_labels"].ravel()
    rng = np.random.default_rng(0)
    by_type = {}
    for c, cls in enumerate(rm.classes):
        for i in rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False):
            r = ring_ratio(images[i])
            if r is not None:
                by_type.setdefault(cls, []).append(r)
    result["training_arrays"] = summary(by_type)
    for name in ("pbc_jpegs", "other_lab", "training_arrays"):
        print(name, result[name]["all"], {t: v["median_ratio"] for t, v in result[name]["by_type"].items()},
              file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
