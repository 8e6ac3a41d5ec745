"""ONNX: export, verify against PyTorch on real images, and time both."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import ExportError
from cellmorphnet.export.graph import as_input, export_model, median_ms, metadata, static_padding


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


def export_engine(rm, out: Path, opset: int = 17) -> Path:
    """Write the graph ``--engine onnx`` runs (``inference.engine``): float RGB in [0, 1], NCHW at the run's input
    size, normalised inside; outputs ``logits`` and ``features`` (the pooled features the classifier reads), with a
    dynamic batch axis. Checked against the trained model on random input before it is kept."""
    import onnxruntime as ort
    import torch

    class Graph(torch.nn.Module):
        def __init__(self, model, mean, std):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, image):
            f = self.model.forward_head(self.model.forward_features((image - self.mean) / self.std), pre_logits=True)
            return self.model.get_classifier()(f), f

    rec, size = rm.record, rm.record.image_size
    original = rm.model.to("cpu", memory_format=torch.contiguous_format).eval()
    graph = Graph(static_padding(original, size), rec.mean, rec.std).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.rand(1, 3, size, size),), str(out), input_names=["image"],
                          output_names=["logits", "features"], opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = Graph(original, rec.mean, rec.std).eval()(x)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    if diff > 1e-4:
        raise ExportError(f"The ONNX engine's graph differs from the trained model (max {diff:.2e}).")
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
