"""Reference latency: one image at a time through EfficientNet-Lite0, PyTorch and onnxruntime, on this CPU; and the
time to the first answer for one image from a new process, on each engine, against importing torch and timm.

    python -m benchmarks.latency [--sizes 64,224] [--repeats 50] [--starts 5] [--json]

The first answer: ``cellmorphnet infer bloodmnist ONE.jpg`` (the installed command, every default, the shipped
model) started ``--starts`` times per engine, alternating, timed from the start of the process to its end; beside
it ``python -c "import torch, timm"``, the least a PyTorch tool pays before its first answer.

The original design targets under 50 ms per image on an Apple M2. Latency does not depend on the
weights, so this uses the ImageNet-initialised model with an 8-class head, exported exactly as
``cellmorphnet export --format onnx`` does (normalisation and softmax inside).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks._common import emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from types import SimpleNamespace

    from cellmorphnet import export
    from cellmorphnet.model.network import create_model, data_config
    from cellmorphnet.runs.record import InferencePolicy

    result = header("python -m benchmarks.latency " + " ".join(sys.argv[1:]))
    result["rows"] = []
    for size in (int(s) for s in args.sizes.split(",")):
        model = create_model("tf_efficientnet_lite0", num_classes=8, pretrained=True).eval()
        norm = data_config(model)
        policy = InferencePolicy("x", None, 1.0, [size], "bicubic", size, norm["mean"], norm["std"])
        record = SimpleNamespace(image_size=size, mean=norm["mean"], std=norm["std"], inference=policy, temperature=1.0,
                                 classes=[str(i) for i in range(8)], datasets={"x": None},
                                 config=SimpleNamespace(model="tf_efficientnet_lite0"))  # fmt: skip
        rm = SimpleNamespace(model=model, record=record)  # what export reads of a run
        with tempfile.TemporaryDirectory() as tmp:
            path = export.export_onnx(rm, Path(tmp) / "m.onnx", images=None)
            row = export.benchmark_onnx(rm, path, "cpu", repeats=args.repeats)
        result["rows"].append(row)
        line = f"{size} px, batch 1: PyTorch {row['pytorch_latency_ms']:.1f} ms, "
        line += f"onnxruntime {row['onnxruntime_latency_ms']:.1f} ms; batch 32: {row['pytorch_images_per_s']:.0f} / "
        line += f"{row['onnxruntime_images_per_s']:.0f} img/s"
        print(line, file=sys.stderr)
    result["first_answer"] = first_answer(args.starts)
    emit(result, args.json)


def first_answer(starts: int) -> dict:
    """Median seconds from a new process to its answer for one image, per engine, and to import torch and timm."""
    import os
    import statistics
    import subprocess
    import time

    from benchmarks._common import SHARED

    one = sorted((SHARED / "bloodmnist-pbc" / "test_images").rglob("*.jpg"))[0]
    exe = Path(sys.executable).parent / "cellmorphnet"
    env = {**os.environ, "CELLMORPHNET_HOME": tempfile.mkdtemp()}
    commands = {"infer --engine onnx": [str(exe), "infer", "bloodmnist", str(one), "--engine", "onnx"],
                "infer --engine torch": [str(exe), "infer", "bloodmnist", str(one), "--engine", "torch"],
                "python -c 'import torch, timm'": [sys.executable, "-c", "import torch, timm"]}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in commands}
    for cmd in commands.values():  # warm the file cache once
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    for _ in range(starts):
        for k, cmd in commands.items():
            t = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times[k].append(time.perf_counter() - t)
    out = {k: round(statistics.median(v), 2) for k, v in times.items()}
    print("first answer, median s: " + ", ".join(f"{k} {v}" for k, v in out.items()), file=sys.stderr)
    return {"median_s": out, "windows": {k: [round(x, 2) for x in v] for k, v in times.items()}}


if __name__ == "__main__":
    main()
