"""A background white balance for other labs' images, tried and not kept: does it help the default path?

    python -m benchmarks.studies.white_balance_check [RUN] --json   # results/white-balance-rejected-2026-11-27.json

The set's background colour (per image, the median of its brightest 20% of pixels; then the median
over the set) is scaled per channel onto the training images' (the run's reference images, measured
the same way), after infer's default framing. Scored like ``generalisation.py``: the other lab's
balanced accuracy (five white-cell types, 8-view average) and the PBC JPEGs' accuracy.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from benchmarks._common import SHARED, emit, header

FIVE = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def background(arrays, q: float = 80):
    import numpy as np

    per_image = []
    for a in arrays:
        px = a.reshape(-1, 3).astype(np.float64)
        lum = px.mean(1)
        per_image.append(np.median(px[lum >= np.percentile(lum, q)], 0))
    return np.median(np.stack(per_image), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default="bloodmnist")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from cellmorphnet.inference import class_probs, collect_files, load, survey_files
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model, reference_images

    run = runs.resolve_run(args.run)
    rm = load_run_model(run, "best", "cpu")
    policy = rm.record.inference
    target = background(reference_images(run, rm.record))
    result = header("python -m benchmarks.studies.white_balance_check " + " ".join(sys.argv[1:]))
    result.update(run=str(run), training_background_rgb=target.tolist(), sets={})
    for folder, restrict in ((SHARED / "external" / "zheng2018-d1", FIVE),
                             (SHARED / "bloodmnist-pbc" / "test_images", None)):  # fmt: skip
        files, _ = collect_files([folder])
        labels = [f.parent.name for f in files]
        survey = survey_files(files, policy, 2, False)
        arrays = [load(f, policy, survey).array for f in files]
        source = background(arrays)
        keep = torch.tensor([rm.classes.index(c) for c in restrict]) if restrict else None
        entry = {"background_rgb": source.tolist()}
        for name, gain in (("as infer", None), ("white-balanced", target / source)):
            xs = arrays if gain is None else [np.clip(a * gain, 0, 255).astype(np.uint8) for a in arrays]
            probs = np.concatenate([
                class_probs(rm.model, xs[i : i + 64], policy, device="cpu", tta=True, keep=keep,
                            temperature=rm.record.temperature)
                for i in range(0, len(xs), 64)
            ])  # fmt: skip
            pred = [rm.classes[i] for i in probs.argmax(1)]
            hits = defaultdict(list)
            for p, t in zip(pred, labels, strict=True):
                hits[t].append(p == t)
            entry[name] = {
                "balanced_accuracy_min5": float(np.mean([np.mean(v) for v in hits.values() if len(v) >= 5])),
                "accuracy": float(np.mean([p == t for p, t in zip(pred, labels, strict=True)])),
                "recall": {c: round(float(np.mean(v)), 3) for c, v in hits.items()},
            }
        result["sets"][folder.name] = entry
        print(folder.name, entry, file=sys.stderr, flush=True)
    emit(result, args.json)


if __name__ == "__main__":
    main()
