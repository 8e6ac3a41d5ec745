"""Export a trained run to ONNX or CoreML, verify the export, and time it.

Both formats take the picture as the network saw it at training time: RGB at the run's input size,
after the run's centre crop and resizes (see ``record.InferencePolicy``). Normalisation is
folded into the exported model: ONNX takes float RGB in [0, 1] (NCHW) and returns class
probabilities; CoreML takes an image and returns the class label and probabilities.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import __version__
from cellmorphnet.errors import ConfigError, ExportError

SAME_PAD_TYPES = ("Conv2dSame", "Conv2dSameExport", "AvgPool2dSame", "MaxPool2dSame")


def static_padding(model, size: int):
    """A copy of ``model`` whose TF-"same" padding is fixed for ``size`` x ``size`` inputs.

    timm's ``tf_*`` architectures pad like TensorFlow: ``Conv2dSame`` works its padding out from
    the input's shape at run time, which CoreML's converter cannot follow (and which bloats ONNX
    graphs). For one input size each of those paddings is a constant, so each module becomes a
    ``ZeroPad2d`` (or a constant pad of -inf for max pooling) followed by the plain operation. The
    copy computes exactly what the original computes at that size; ``export_model`` checks it.
    """
    import copy

    import torch
    from timm.layers import get_same_padding

    model = copy.deepcopy(model).eval()
    targets = {name: m for name, m in model.named_modules() if type(m).__name__ in SAME_PAD_TYPES}
    if not targets:
        return model
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: shapes.__setitem__(name, args[0].shape[-2:]))
             for name, m in targets.items()]  # fmt: skip
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, m in targets.items():
        kind = type(m).__name__
        k, st = _pair(m.kernel_size), _pair(m.stride)
        d = _pair(getattr(m, "dilation", 1))
        ih, iw = shapes[name]
        ph, pw = (get_same_padding(int(ih), k[0], st[0], d[0]), get_same_padding(int(iw), k[1], st[1], d[1]))
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if kind.startswith("Conv2d"):
            plain = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups,
                                    bias=m.bias is not None)  # fmt: skip
            plain.load_state_dict({k_: v for k_, v in m.state_dict().items() if k_ in ("weight", "bias")})
            pad = torch.nn.ZeroPad2d(pads)
        elif kind == "AvgPool2dSame":
            plain = torch.nn.AvgPool2d(m.kernel_size, m.stride, 0, m.ceil_mode, m.count_include_pad)
            pad = torch.nn.ZeroPad2d(pads)
        else:
            plain = torch.nn.MaxPool2d(m.kernel_size, m.stride, 0, m.dilation, ceil_mode=m.ceil_mode)
            pad = torch.nn.ConstantPad2d(pads, float("-inf"))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                torch.nn.Sequential(pad, plain) if any(pads) else plain)  # fmt: skip
    return model


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def export_model(rm, images: np.ndarray | None = None):
    """The run's model as exported: static padding, normalisation and softmax inside; input RGB in [0, 1].

    With ``images`` (real preprocessed images, N x S x S x 3 uint8), checks that it computes what
    the trained model computes and raises ``ExportError`` if not.
    """
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, model, mean, std, temperature):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
            self.temperature = float(temperature)  # the run's calibration

        def forward(self, image):
            return (self.model((image - self.mean) / self.std) / self.temperature).softmax(dim=1)

    rec = rm.record
    original = rm.model.to("cpu", memory_format=torch.contiguous_format).eval()
    reference = Exported(original, rec.mean, rec.std, rec.temperature).eval()
    exported = Exported(static_padding(original, rec.image_size), rec.mean, rec.std, rec.temperature).eval()
    if images is not None:
        x = as_input(images, rec.image_size)
        with torch.no_grad():
            diff = float((exported(x) - reference(x)).abs().max())
        if diff > 1e-5:
            raise ExportError(f"The export copy of the model differs from the trained model (max {diff:.2e}).")
    return exported, reference


def as_input(images: np.ndarray, size: int):
    """Prepared uint8 images (N, S, S, 3) as the exported models take them: float RGB in [0, 1], NCHW, at ``size``."""
    import torch

    from cellmorphnet.data.loader import resize_batch

    return resize_batch(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0, size)


def metadata(rm) -> dict[str, str]:
    rec = rm.record
    policy = rec.inference
    crop = (f"centre crop {policy.centre_crop_px} px" if policy.centre_crop_px
            else f"centre crop {policy.centre_crop_fraction:.4f} of the shorter side")  # fmt: skip
    return {
        "classes": ",".join(rec.classes),
        "input_size": str(rec.image_size),
        "preprocessing": f"{crop}, bicubic resize through {policy.resize_chain}, then bilinear to "
        f"{policy.image_size} px; RGB scaled to [0, 1]",
        "licence": "model: MIT (cellmorphnet); training data licences: see the run's config.json",
        "version": f"cellmorphnet {__version__}",
        "datasets": ",".join(rec.datasets),
        "intended_use": "research use only; not a diagnostic device",
        "temperature": f"{rec.temperature:.4f} (calibration, applied inside the model)",
        **({"stain_reference": json.dumps(policy.stain.to_dict()) + " (infer's stain normalisation of a set of images, "
            "not inside the model; see docs/eval-infer-export.md)"} if policy.stain else {}),
    }


# --- ONNX -------------------------------------------------------------------------------------------


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


def _median_ms(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()  # queued GPU work counts: time it, not its launch
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def benchmark_onnx(rm, path: Path, device: str = "cpu", repeats: int = 20) -> dict[str, Any]:
    """Median latency at batch 1 and throughput at batch 32: PyTorch on ``device``, onnxruntime on the CPU."""
    import onnxruntime as ort
    import torch

    from cellmorphnet.devices import pick_device, synchronize

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
            t_torch = _median_ms(lambda xd=xd: reference(xd), n, sync=lambda: synchronize(dev))
        xn = x.numpy()
        t_ort = _median_ms(lambda xn=xn: session.run(None, {"image": xn}), n)
        if batch == 1:
            out["pytorch_latency_ms"], out["onnxruntime_latency_ms"] = t_torch, t_ort
        else:
            out["pytorch_images_per_s"] = 32 / (t_torch / 1000)
            out["onnxruntime_images_per_s"] = 32 / (t_ort / 1000)
    return out


# --- CoreML ------------------------------------------------------------------------------------------


def _coremltools():
    import logging

    # at import, coremltools logs a warning for every package version it has not tested and for each macOS-only
    # binding it cannot load (eight lines on Linux): the user is told what matters (CoreML predictions need macOS)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools as ct
    except ImportError:
        raise ConfigError("CoreML export needs coremltools.", hint="pip install 'cellmorphnet[coreml]'") from None
    return ct


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tracing and coremltools' conversion, without their chatter: torch's deprecation warnings for ``jit.trace``
    and a progress bar on stderr for each of coremltools' conversion passes. Errors still raise."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_coreml(rm, out: Path, images: np.ndarray, quantize: str | None = None) -> Path:
    """Write an ML Program (.mlpackage) with an image input, class labels and metadata.

    ``quantize``: ``None`` (fp32 compute), ``fp16`` (fp16 compute precision) or ``int8`` (weights
    linearly quantised with ``coremltools.optimize``). The model is traced from its static-padding
    copy (see ``static_padding``), checked against the trained model on ``images`` first.
    """
    import shutil

    import torch

    ct = _coremltools()
    if quantize not in (None, "fp16", "int8"):
        raise ConfigError(f"--quantize must be fp16 or int8, not '{quantize}'.")
    rec = rm.record
    size = rec.image_size
    exported, _ = export_model(rm, images)
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(exported, torch.rand(1, 3, size, size))
    precision = ct.precision.FLOAT16 if quantize == "fp16" else ct.precision.FLOAT32
    try:
        with _quiet():
            mlmodel = ct.convert(
                traced,
                inputs=[ct.ImageType(name="image", shape=(1, 3, size, size), scale=1 / 255.0,
                                     color_layout=ct.colorlayout.RGB)],
                classifier_config=ct.ClassifierConfig(list(rec.classes)),
                convert_to="mlprogram",
                compute_precision=precision,
                minimum_deployment_target=ct.target.iOS16,
            )  # fmt: skip
            if quantize == "int8":
                from coremltools.optimize.coreml import (
                    OpLinearQuantizerConfig,
                    OptimizationConfig,
                    linear_quantize_weights,
                )

                config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                  dtype="int8"))  # fmt: skip
                mlmodel = linear_quantize_weights(mlmodel, config=config)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        raise ExportError(f"CoreML conversion of {rec.config.model} failed ({type(e).__name__}: {e}).") from None
    meta = metadata(rm)
    mlmodel.short_description = f"Blood-cell classifier ({len(rec.classes)} classes), cellmorphnet; research use only"
    mlmodel.author = "cellmorphnet"
    mlmodel.license = meta["licence"]
    mlmodel.version = __version__
    mlmodel.user_defined_metadata.update({**meta, "quantization": quantize or "none"})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.mlpackage")
    shutil.rmtree(tmp, ignore_errors=True)
    mlmodel.save(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def coreml_spec_summary(path: Path) -> dict[str, Any]:
    """Read a saved .mlpackage's spec (no prediction, so this works on Linux): inputs, outputs, labels, metadata."""
    ct = _coremltools()
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    desc = spec.description
    inputs = [{"name": i.name, "type": i.type.WhichOneof("Type"),
               "width": i.type.imageType.width, "height": i.type.imageType.height} for i in desc.input]  # fmt: skip
    outputs = [{"name": o.name, "type": o.type.WhichOneof("Type")} for o in desc.output]
    kind = spec.WhichOneof("Type")
    return {
        "type": kind,
        "spec_version": spec.specificationVersion,
        "inputs": inputs,
        "outputs": outputs,
        "predicted_feature": desc.predictedFeatureName,
        "probability_output": desc.predictedProbabilitiesName,
        "class_labels": _class_labels(spec),
        "metadata": dict(model.user_defined_metadata),
        "size_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    }


def _class_labels(spec) -> list[str]:
    """The labels of an ML Program classifier: the ``classes`` operand of its ``classify`` operation."""
    if spec.WhichOneof("Type") != "mlProgram":
        return []
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "classify":
            value = op.inputs["classes"].arguments[0].value.immediateValue
            if value.WhichOneof("value") == "list":
                return [v.immediateValue.tensor.strings.values[0] for v in value.list.values]
            return list(value.tensor.strings.values)
    return []


def coreml_can_predict() -> bool:
    import platform

    return platform.system() == "Darwin"


def benchmark_coreml(rm, path: Path, images: np.ndarray, repeats: int = 20) -> dict[str, Any]:
    """macOS only: predictions compared with PyTorch, and median latency at batch 1."""
    import torch
    from PIL import Image

    ct = _coremltools()
    model = ct.models.MLModel(str(path))
    x = as_input(images, rm.record.image_size)
    _, reference = export_model(rm)
    with torch.no_grad():
        ref = reference(x).numpy()
    classes = list(rm.record.classes)
    agree, diffs = 0, []
    pil = [Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in range(len(x))]
    for i, img in enumerate(pil):
        out = model.predict({"image": img})
        probs = next(v for v in out.values() if isinstance(v, dict))
        vec = np.array([probs[c] for c in classes])
        diffs.append(np.abs(vec - ref[i]).max())
        agree += int(vec.argmax() == ref[i].argmax())
    latency = _median_ms(lambda: model.predict({"image": pil[0]}), repeats)
    return {"images": len(pil), "top1_agreement": agree / len(pil), "max_abs_diff": float(max(diffs)),
            "latency_ms": latency}  # fmt: skip
