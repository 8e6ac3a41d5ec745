"""The training configuration: one typed dataclass, saved in the run folder and in every checkpoint."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellmorphnet.errors import ConfigError


@dataclass
class TrainConfig:
    """Every training setting. The defaults are the ``default`` recipe: the best measured on this project's
    benchmark machine (docs/training.md, docs/benchmarks.md); ``RECIPES`` holds the others."""

    datasets: list[str] = field(default_factory=lambda: ["sample"])  # datasets trained on together
    recipe: str = "default"  # the named recipe these settings started from (RECIPES); "custom" for 0.1 runs
    data_size: int | None = None  # prepared size to read (default: the image size if prepared, else the largest)
    model: str = "tf_efficientnet_lite0"  # timm architecture
    pretrained: bool = True  # packaged ImageNet weights (EfficientNet-Lite0 only)
    weights: str | None = None  # a state dict file to start from instead
    init: str | None = None  # a run this one was adapted from (train --init; adapt)
    image_size: int | None = 96  # the network's input size, resized from the prepared data (None: the data's size)
    epochs: int = 20  # planned epochs
    batch_size: int = 32  # samples per forward pass
    accum_steps: int = 2  # forward passes per optimizer step (effective batch = batch_size * accum_steps)
    lr: float = 5e-4  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay (not applied to norm and bias parameters)
    warmup_epochs: float = 1.0  # linear warmup before the cosine decay
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    class_weights: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and saved (0: off)
    mixup: float = 0.0  # mixup's Beta alpha (0: off); half the batches are mixed (with cutmix: one or the other)
    cutmix: float = 0.0  # cutmix's Beta alpha (0: off)
    augment: str = "stain"  # augmentation recipe (training.augment.AUGMENTATIONS): stain (other labs' slides) or basic
    amp: str = "auto"  # mixed precision: auto (CUDA bf16/fp16, MPS fp16 where scalable, CPU off), bf16, fp16 or off
    device: str = "auto"  # auto (CUDA, then MPS, then CPU), cuda, mps or cpu
    unfreeze_epochs: list[int] = field(default_factory=lambda: [1, 2])  # head only until [0], top half until [1]
    patience: int = 10  # early stopping: epochs without a better validation macro-F1
    seed: int = 42  # seeds data order, augmentation and initialisation
    drop_rate: float | None = None  # dropout before the classifier (model default if unset)
    channels_last: bool | None = None  # channels-last memory layout; None: on, except on MPS (see devices.py)
    limit_batches: int | None = None  # cap batches per epoch (quick checks)
    eval_batch_size: int = 256  # batch size for validation

    def validate(self) -> TrainConfig:
        if not self.datasets:
            raise ConfigError("No dataset given.", hint="Use --datasets sample, or bloodmnist,bccd,...")
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch-size must be at least 1"),
            (self.accum_steps >= 1, "accum-steps must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight-decay must not be negative"),
            (0 <= self.label_smoothing < 1, "label-smoothing must be in [0, 1)"),
            (0 <= self.ema < 1, "ema must be in [0, 1), e.g. 0.998 (0 turns it off)"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix must not be negative (0 turns them off)"),
            (self.amp in ("auto", "bf16", "fp16", "off"), "amp must be auto, bf16, fp16 or off"),
            (self.augment in ("stain", "basic"), "augment must be stain or basic"),
            (self.recipe in (*RECIPES, "custom"), f"recipe must be one of {', '.join(RECIPES)}"),
            (self.device in ("auto", "cuda", "mps", "cpu") or self.device.startswith("cuda:"), "unknown device"),
            (
                len(self.unfreeze_epochs) == 2 and self.unfreeze_epochs[0] <= self.unfreeze_epochs[1],
                "unfreeze-epochs takes two ascending numbers, e.g. 5,10",
            ),
            (self.patience >= 1, "patience must be at least 1"),
            (self.image_size is None or 16 <= self.image_size <= 1024, "image-size must be 16 to 1024"),
            (self.data_size is None or 8 <= self.data_size <= 1024, "data-size must be 8 to 1024"),
            (self.limit_batches is None or self.limit_batches >= 1, "limit-batches must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"Invalid configuration: {message}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown configuration key(s): {', '.join(unknown)}.", hint=f"Known: {', '.join(sorted(known))}."
            )
        return cls(**data)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config; keys are named like the flags (``batch-size`` or ``batch_size``)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the tomli backport (a dependency there)
        import tomli as tomllib
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {path} is not valid TOML ({e}).") from None
    data = {k.replace("-", "_"): v for k, v in raw.items()}
    if isinstance(data.get("datasets"), str):
        data["datasets"] = [d.strip() for d in data["datasets"].split(",") if d.strip()]
    return data


# Named recipes: settings that differ from TrainConfig's defaults (which are the "default" recipe).
RECIPES: dict[str, dict[str, Any]] = {
    # The best recipe measured: 0.9877 test accuracy on the PBC-rebuilt BloodMNIST at 64 px (upsampled to a
    # 96 px input) in 26.6 min on a 2-core CPU (docs/benchmarks.md, docs/training.md).
    "default": {},
    # The original design's settings, exactly (never better on our measurements; kept for comparison).
    "original": {"epochs": 50, "lr": 1e-4, "unfreeze_epochs": [5, 10], "patience": 10, "label_smoothing": 0.0,
                 "augment": "basic", "image_size": None},  # fmt: skip
    # For tiny sets such as the embedded sample (512 training images, 8 optimizer steps an epoch).
    "quick": {"epochs": 15, "lr": 1e-3, "unfreeze_epochs": [1, 3], "patience": 5, "image_size": None},
}


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The recipe's settings, then the config file, then flags given on the command line.

    ``None`` in ``flag_values`` means "not given". The recipe is ``--recipe`` (or the file's), else
    the dataset's own when a single dataset that names one is trained alone (the sample: ``quick``),
    else ``default``. Returns the config and the recipe's settings that were kept, so the caller can
    say so.
    """
    from cellmorphnet.data import registry

    given = {k: v for k, v in flag_values.items() if v is not None}
    datasets = given.get("datasets") or file_values.get("datasets") or TrainConfig().datasets
    name = given.get("recipe") or file_values.get("recipe")
    if name is None and len(datasets) == 1 and datasets[0] in registry.sources():
        name = registry.get_info(datasets[0]).recipe
    name = name or "default"
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe '{name}'.", hint=f"Recipes: {', '.join(RECIPES)}.")
    recipe = {k: v for k, v in RECIPES[name].items() if k not in file_values and k not in given}
    merged = {**recipe, **file_values, **given, "recipe": name}
    try:
        return TrainConfig.from_dict(merged).validate(), recipe
    except TypeError as e:
        raise ConfigError(f"Invalid configuration: {e}.") from None


EXTENDABLE = ("epochs", "patience", "limit_batches")  # what --resume may change: how long the run goes on


def resume_config(saved: dict[str, Any], flag_values: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The configuration a resumed run goes on with: its own (``saved``), with only ``EXTENDABLE`` settings taken from
    ``flag_values`` (None: not given); and the names of the other settings given, which a resume ignores."""
    extendable = {k: v for k, v in flag_values.items() if k in EXTENDABLE and v is not None}
    ignored = sorted(k for k, v in flag_values.items() if v is not None and k not in extendable)
    return TrainConfig.from_dict({**saved, **extendable}).validate(), ignored
