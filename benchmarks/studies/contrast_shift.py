"""Does the stain contrast undo a known change of stain contrast? PBC's own JPEGs, redrawn as a stain that
colours the cytoplasm more (or less) densely against the nucleus would show them, classified with and
without ``infer``'s stain contrast.

    python -m benchmarks.studies.contrast_shift [RUN] [--powers 0.77,1,1.3] [--json]  # results/contrast-shift-*

Each of the 240 full-size PBC test JPEGs has its optical density (against its own background) raised to
``power`` relative to the training nuclei's (``colour.apply_contrast``; below 1: denser cytoplasm, as the
other lab's rapid stain) and is written losslessly (PNG) into class folders; then ``eval --on`` with every
default of ``infer``, with the stain contrast (the default) and with ``--no-stain-contrast``. RUN: the
shipped model unless given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks._common import SHARED, emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--powers", default="0.77,1,1.3")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import dataclasses

    import numpy as np
    from PIL import Image

    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.inference import inference_options
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model
    from cellmorphnet.vision import colour

    rm = load_run_model(args.run or runs.packaged_runs()[runs.PACKAGED], "best", "cpu")
    stain = rm.record.inference.stain
    files = sorted((SHARED / "bloodmnist-pbc" / "test_images").glob("*/*.jpg"))
    result = header("python -m benchmarks.studies.contrast_shift " + " ".join(sys.argv[1:]))
    result["images"], result["rows"] = len(files), []
    for power in (float(p) for p in args.powers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                img = np.asarray(Image.open(f).convert("RGB"))
                ref = dataclasses.replace(stain, background=colour.background(img).tolist())
                folder = Path(tmp) / f.parent.name
                folder.mkdir(exist_ok=True)
                Image.fromarray(colour.apply_contrast(img, power, ref)).save(folder / f"{f.stem}.png")
            for contrast in (False, True):
                report = evaluate_folder(rm, Path(tmp), inference_options(rm.record, stain_contrast=contrast))
                row = {"power_applied": power, "stain_contrast": contrast, "power_found": report["stain_contrast"],
                       "accuracy": report["metrics"]["accuracy"],
                       "balanced_accuracy": report["balanced_accuracy_min5"]}  # fmt: skip
                result["rows"].append(row)
                print(row, file=sys.stderr, flush=True)
    emit(result, args.json)


if __name__ == "__main__":
    main()
