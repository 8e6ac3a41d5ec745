"""ONNX: export, verify against PyTorch on real images, and time both."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.export.graph import as_input, export_model, median_ms, metadata


def export_onnx(rm, out: Path, images: np.ndarray, opset: int = 17) -> Path:
    """Write an ONNX model (dynamic batch axis, the run's metadata), from the static-padding copy of the model."""
    import onnx
    import torch

    size = rm.record.image_size
    exported, _ = export_model(rm, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported, (torch.rand(1, 3, size, size),), str(tmp), input_names=["image"],
            output_names=["probabilities"], dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )  # fmt: skip
    model = onnx.load(str(tmp))
    for k, v in metadata(rm).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def verify_onnx(rm, path: Path, images: np.ndarray) -> dict[str, Any]:
    """Compare onnxruntime with the trained PyTorch model on real preprocessed images (N, S, S, 3 uint8)."""
    import onnxruntime as ort
    import torch

    x = as_input(images, rm.record.image_size)
    _, reference = export_model(rm)
    with torch.no_grad():
        ref = reference(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    return {
        "images": int(len(images)),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }


def benchmark_onnx(rm, path: Path, device: str = "cpu", repeats: int = 20) -> dict[str, Any]:
    """Median latency at batch 1 and throughput at batch 32: PyTorch on ``device``, onnxruntime on the CPU."""
    import onnxruntime as ort
    import torch

    from cellmorphnet.runtime.devices import pick_device, synchronize

    dev = pick_device(device)
    size = rm.record.image_size
    _, reference = export_model(rm)
    reference = reference.to(dev)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = {"image_size": size, "pytorch_device": str(dev)}
    for batch in (1, 32):
        x = torch.rand(batch, 3, size, size)
        xd = x.to(dev)
        n = repeats if batch == 1 else max(3, repeats // 4)
        with torch.no_grad():
            t_torch = median_ms(lambda xd=xd: reference(xd), n, sync=lambda: synchronize(dev))
        xn = x.numpy()
        t_ort = median_ms(lambda xn=xn: session.run(None, {"image": xn}), n)
        if batch == 1:
            out["pytorch_latency_ms"], out["onnxruntime_latency_ms"] = t_torch, t_ort
        else:
            out["pytorch_images_per_s"] = 32 / (t_torch / 1000)
            out["onnxruntime_images_per_s"] = 32 / (t_ort / 1000)
    return out
