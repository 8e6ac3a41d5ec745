"""The network as both formats take it: static padding, normalisation folded in, metadata, timing."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from cellmorphnet import __version__
from cellmorphnet.errors import ExportError

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


def median_ms(fn, repeats: int, sync=None) -> float:
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
