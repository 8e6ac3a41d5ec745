"""Export a trained run to ONNX or CoreML, verify the export, and time it.

Both formats take the picture as the network saw it at training time: RGB at the run's input size,
after the run's centre crop and resizes (see ``inference.inference_policy``). Normalisation is
folded into the exported model: ONNX takes float RGB in [0, 1] (NCHW) and returns class
probabilities; CoreML takes an image and returns the class label and probabilities.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import __version__
from cellmorphnet.errors import ConfigError


def _wrapped(rm):
    """The run's model with normalisation and softmax inside: input RGB in [0, 1], output probabilities."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, model, mean, std):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, image):
            return self.model((image - self.mean) / self.std).softmax(dim=1)

    model = rm.model.to(memory_format=torch.contiguous_format).eval()
    return Exported(model, rm.resolved["mean"], rm.resolved["std"]).eval()


def metadata(rm) -> dict[str, str]:
    from cellmorphnet.inference import inference_policy

    policy = inference_policy(rm.resolved)
    return {
        "classes": ",".join(rm.resolved["classes"]),
        "input_size": str(rm.resolved["image_size"]),
        "preprocessing": (
            (
                f"centre crop {policy['centre_crop_px']} px"
                if policy.get("centre_crop_px")
                else f"centre crop {policy['centre_crop_fraction']:.4f} of the shorter side"
            )
            + ", bicubic resize through "
            f"{policy['resize_chain']}, then bilinear to {policy['image_size']} px; RGB scaled to [0, 1]"
        ),
        "licence": "model: MIT (cellmorphnet); training data licences: see the run's config.json",
        "version": f"cellmorphnet {__version__}",
        "datasets": ",".join(rm.resolved["data_sizes"]),
    }


# --- ONNX -------------------------------------------------------------------------------------------


def export_onnx(rm, out: Path, opset: int = 17) -> Path:
    """Write an ONNX model with a dynamic batch axis and the run's metadata."""
    import onnx
    import torch

    size = int(rm.resolved["image_size"])
    wrapped = _wrapped(rm)
    dummy = torch.rand(1, 3, size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped, (dummy,), str(tmp), input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=opset, dynamo=False,
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
    """Compare onnxruntime with PyTorch on real preprocessed images (N, S, S, 3 uint8)."""
    import onnxruntime as ort
    import torch

    from cellmorphnet.data.loader import resize_batch

    size = int(rm.resolved["image_size"])
    x = resize_batch(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, size)
    with torch.no_grad():
        ref = _wrapped(rm)(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    return {
        "images": int(len(images)),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
    }


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def benchmark_onnx(rm, path: Path, repeats: int = 20) -> dict[str, Any]:
    """Median latency at batch 1 and throughput at batch 32, PyTorch and onnxruntime, on this machine."""
    import onnxruntime as ort
    import torch

    size = int(rm.resolved["image_size"])
    wrapped = _wrapped(rm)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = {"image_size": size}
    for batch in (1, 32):
        x = torch.rand(batch, 3, size, size)
        xn = x.numpy()
        with torch.no_grad():
            t_torch = _median_ms(lambda x=x: wrapped(x), repeats if batch == 1 else max(3, repeats // 4))

        n = repeats if batch == 1 else max(3, repeats // 4)
        t_ort = _median_ms(lambda xn=xn: session.run(None, {"image": xn}), n)
        if batch == 1:
            out["pytorch_latency_ms"], out["onnxruntime_latency_ms"] = t_torch, t_ort
        else:
            out["pytorch_images_per_s"] = 32 / (t_torch / 1000)
            out["onnxruntime_images_per_s"] = 32 / (t_ort / 1000)
    return out


# --- CoreML ------------------------------------------------------------------------------------------


def _coremltools():
    try:
        import coremltools as ct
    except ImportError:
        raise ConfigError("CoreML export needs coremltools.", hint="pip install 'cellmorphnet[coreml]'") from None
    return ct


def export_coreml(rm, out: Path, quantize: str | None = None) -> Path:
    """Write an ML Program (.mlpackage) with an image input, class labels and metadata.

    ``quantize``: ``None`` (fp32 compute), ``fp16`` (fp16 compute precision) or ``int8`` (weights
    linearly quantised with ``coremltools.optimize``).
    """
    import shutil

    import torch

    ct = _coremltools()
    if quantize not in (None, "fp16", "int8"):
        raise ConfigError(f"--quantize must be fp16 or int8, not '{quantize}'.")
    size = int(rm.resolved["image_size"])
    wrapped = _wrapped(rm)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, torch.rand(1, 3, size, size))
    precision = ct.precision.FLOAT16 if quantize == "fp16" else ct.precision.FLOAT32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            traced,
            inputs=[
                ct.ImageType(name="image", shape=(1, 3, size, size), scale=1 / 255.0, color_layout=ct.colorlayout.RGB)
            ],
            classifier_config=ct.ClassifierConfig(list(rm.resolved["classes"])),
            convert_to="mlprogram",
            compute_precision=precision,
            minimum_deployment_target=ct.target.iOS16,
        )
        if quantize == "int8":
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
            mlmodel = linear_quantize_weights(mlmodel, config=config)
    meta = metadata(rm)
    mlmodel.short_description = f"Blood-cell classifier ({len(rm.resolved['classes'])} classes), cellmorphnet"
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

    from cellmorphnet.data.loader import resize_batch

    ct = _coremltools()
    model = ct.models.MLModel(str(path))
    size = int(rm.resolved["image_size"])
    x = resize_batch(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, size)
    with torch.no_grad():
        ref = _wrapped(rm)(x).numpy()
    classes = list(rm.resolved["classes"])
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
