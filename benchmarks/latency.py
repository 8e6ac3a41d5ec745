"""Reference latency: one image at a time through EfficientNet-Lite0, PyTorch and onnxruntime, on this CPU.

    python -m benchmarks.latency [--sizes 64,224] [--repeats 50] [--json]

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
        record = SimpleNamespace(image_size=size, mean=norm["mean"], std=norm["std"], inference=policy,
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
    emit(result, args.json)


if __name__ == "__main__":
    main()
