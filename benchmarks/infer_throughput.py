"""Inference throughput: infer's pipeline (decode in threads + model) vs the model-only ceiling.

    python -m benchmarks.infer_throughput [--copies 5] [--size 64] [--batch-size 64] [--workers 2] [--json]

Copies the 240 full-size PBC test JPEGs ``copies`` times into a temporary folder (1,200 files by
default), then times, in one process and with the same model (tf_efficientnet_lite0 at the given
input size, channels-last) and batch size:
  pipeline: cellmorphnet.inference.predict_files over the files (decode, crop, resize, predict);
  ceiling:  the same model on pre-made input tensors, no decoding.
Each is run ``repeats`` times after a warm-up, alternating; the figure is the median images/s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import SHARED, emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from types import SimpleNamespace

    import torch

    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.inference import InferenceOptions, predict_files
    from cellmorphnet.model.network import create_model, data_config
    from cellmorphnet.runs.record import InferencePolicy

    result = header("python -m benchmarks.infer_throughput " + " ".join(sys.argv[1:]))
    model = create_model("tf_efficientnet_lite0", num_classes=8, pretrained=True).eval()
    model = model.to(memory_format=torch.channels_last)
    norm = data_config(model)
    classes = [str(i) for i in range(8)]
    net = SimpleNamespace(model=model, classes=classes, device="cpu", channels_last=True)  # what predict_files reads
    policy = InferencePolicy("pbc", 200, 200 / 360, [args.size], "bicubic", args.size, norm["mean"], norm["std"])
    sources = sorted((SHARED / "bloodmnist-pbc" / "test_images").glob("*/*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for c in range(args.copies):
            for p in sources:
                dest = Path(tmp) / f"{c}_{p.parent.name}_{p.name}"
                shutil.copy(p, dest)
                files.append(dest)
        n = len(files)
        batches = [torch.randint(0, 255, (min(args.batch_size, n - i), args.size, args.size, 3), dtype=torch.uint8)
                   for i in range(0, n, args.batch_size)]  # fmt: skip

        def pipeline():
            predict_files(net, files, InferenceOptions(policy), batch_size=args.batch_size, workers=args.workers)

        def ceiling():
            with torch.no_grad():
                for b in batches:
                    x = eval_transform(b, args.size, norm["mean"], norm["std"]).contiguous(
                        memory_format=torch.channels_last
                    )
                    model(x).softmax(1)

        runs = {"pipeline": pipeline, "ceiling": ceiling}
        for fn in runs.values():
            fn()  # warm-up
        rates = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn()
                rates[k].append(n / (time.perf_counter() - start))
    result.update(
        images=n, image_size=args.size, batch_size=args.batch_size, workers=args.workers,
        pipeline_images_per_s=statistics.median(rates["pipeline"]),
        ceiling_images_per_s=statistics.median(rates["ceiling"]), windows=rates,
    )  # fmt: skip
    result["ratio"] = result["pipeline_images_per_s"] / result["ceiling_images_per_s"]
    print(f"{n} images at {args.size} px: pipeline {result['pipeline_images_per_s']:.0f} img/s, ceiling "
          f"{result['ceiling_images_per_s']:.0f} img/s, ratio {result['ratio']:.2f}", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
