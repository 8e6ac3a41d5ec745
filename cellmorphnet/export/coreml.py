"""CoreML (an ML Program with an image input and class labels): export, inspect, and time it where it can run
(macOS)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import __version__
from cellmorphnet.errors import ConfigError, ExportError
from cellmorphnet.export.graph import as_input, export_model, median_ms, metadata


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
    latency = median_ms(lambda: model.predict({"image": pil[0]}), repeats)
    return {"images": len(pil), "top1_agreement": agree / len(pil), "max_abs_diff": float(max(diffs)),
            "latency_ms": latency}  # fmt: skip
