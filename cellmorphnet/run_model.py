"""Rebuild a trained run from its folder: the model of a checkpoint, its record, and predictions on prepared splits.

The checkpoint carries the run record it was trained with; ``config.json`` carries the same record
for tools that must not import torch (``status``). When the two disagree on anything that changes
predictions (classes, input size, normalisation, preprocessing, architecture), loading refuses
unless told to accept it: a hand-edited or swapped ``config.json`` must not silently relabel outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import runs
from cellmorphnet.errors import CellMorphNetError, CheckpointError, ExportError, RunError
from cellmorphnet.record import REFERENCE_FILE, REFERENCE_IMAGES, RunRecord


@dataclass
class RunModel:
    model: Any  # torch.nn.Module in eval mode, on ``device``
    record: RunRecord  # what the run is (from the checkpoint)
    epoch: int  # epochs completed when the checkpoint was written
    checkpoint: Path
    device: Any  # torch.device
    channels_last: bool  # the memory layout the model and its inputs use
    record_mismatch: list[str]  # fields where config.json differs from the checkpoint (accepted)

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)


def load_run_model(
    run_dir: Path, which: str = "best", device: str = "auto", *, accept_mismatch: bool = False
) -> RunModel:
    """Load ``checkpoints/<which>.pt`` of a run (safely, tensors only) into a freshly built model on ``device``."""
    import torch

    from cellmorphnet.model import create_model
    from cellmorphnet.training import checkpoint
    from cellmorphnet.training.precision import pick_device, resolve_channels_last

    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not path.exists():
        if runs.is_packaged(run_dir):
            raise RunError(f"{Path(run_dir).name} ships with its best checkpoint only (no {which}.pt).",
                           hint="Leave out --checkpoint, or use --checkpoint best.")  # fmt: skip
        raise RunError(f"{Path(run_dir).name} has no {which}.pt yet.", hint="Wait for the first epoch to finish.")
    state = checkpoint.load(path)
    record = checkpoint.record_of(state)
    mismatch: list[str] = []
    if (Path(run_dir) / runs.CONFIG).exists():
        mismatch = RunRecord.load(run_dir).mismatch(record)
        if mismatch and not accept_mismatch:
            raise RunError(
                f"{runs.CONFIG} of {Path(run_dir).name} does not match its {which}.pt ({', '.join(mismatch)} differ).",
                hint=f"Restore the run's own {runs.CONFIG}, or pass --accept-data-change to trust the checkpoint.",
            )
    model = create_model(record.config.model, num_classes=len(record.classes), pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own model ({e}).") from None
    dev = pick_device(device)
    channels_last = resolve_channels_last(record.config.channels_last, dev)
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return RunModel(model, record, int(state["epoch"]), path, dev, channels_last, mismatch)


def predict_split(
    rm: RunModel, split: str, home: Path | None = None, datasets: list[str] | None = None, batch_size: int = 256,
    tta: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: ``labels`` (local) and ``probs`` (local label space) for one prepared split (``tta``: the
    mean over the 8 flips and turns)."""
    from cellmorphnet.data import store
    from cellmorphnet.data.loader import BatchLoader, DeviceArrays
    from cellmorphnet.data.taxonomy import Taxonomy
    from cellmorphnet.prediction import LabelSpace, predict_local
    from cellmorphnet.training.precision import Precision

    rec = rm.record
    names = datasets or list(rec.datasets)
    unknown = [n for n in names if n not in rec.datasets]
    if unknown:
        raise RunError(f"The run was not trained on {', '.join(unknown)}.",
                       hint=f"It knows: {', '.join(rec.datasets)}.")  # fmt: skip
    parts = {}
    for name in names:
        sp = store.load_split(name, rec.datasets[name].size, split, home)
        parts[name] = DeviceArrays(sp.images, sp.labels, rm.device)
    space = LabelSpace.build(Taxonomy.from_dict(rec.taxonomy), names, rm.device)
    loader = BatchLoader(parts, space.target_offset, batch_size, rec.image_size, rec.mean, rec.std, train=False,
                         channels_last=rm.channels_last)  # fmt: skip
    return predict_local(rm.model, loader, space, rm.device, Precision(None, False), rm.record.temperature, tta)


def reference_images(run_dir: Path, record: RunRecord, home: Path | None = None) -> np.ndarray:
    """Real images the run saw, as prepared (N, S, S, 3 uint8): those kept in the run folder at training time.

    Runs from before that file existed fall back to the prepared validation split in the cache.
    """
    path = Path(run_dir) / REFERENCE_FILE
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data["images"])
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f"{path} is damaged ({e}).") from None
    from cellmorphnet.data import store

    first = next(iter(record.datasets.values()))
    try:
        return store.load_split(first.name, first.size, "val", home).images[:REFERENCE_IMAGES].copy()
    except CellMorphNetError as e:
        raise ExportError(
            f"{Path(run_dir).name} keeps no reference images ({REFERENCE_FILE}; runs trained before version 0.2 "
            f"have none) and {first.name} is not prepared here.",
            hint=f"Run cellmorphnet prepare {first.name} --size {first.size}, or export where it was trained.",
        ) from e


@dataclass(frozen=True)
class InferenceOptions:
    """How ``infer`` and ``eval --on`` preprocess and adapt: the run's policy with the user's choices applied."""

    policy: Any  # record.InferencePolicy
    colour_match: bool
    adapt_bn: bool
    restrict_to: list[str] | None
    tta: bool = False
    temperature: float = 1.0  # the run's calibration
    stain_norm: bool = False
    scale_views: bool = False
    stain_contrast: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"stain_norm": self.stain_norm, "colour_match": self.colour_match, "adapt_bn": self.adapt_bn,
                "restrict_to": self.restrict_to, "tta": self.tta, "temperature": self.temperature,
                "scale_views": self.scale_views, "stain_contrast": self.stain_contrast}  # fmt: skip


def inference_options(rm: RunModel, crop: str | None = None, crop_fraction: float | None = None,
                      colour_match: bool | None = None, adapt_bn: bool | None = None,
                      classes: str | None = None, tta: bool | None = None,
                      stain_norm: bool | None = None, scale_views: bool | None = None,
                      stain_contrast: bool | None = None) -> InferenceOptions:  # fmt: skip
    """Resolve the command-line choices against the run and the measured defaults (``inference.DEFAULT_*``).

    The stain normalisation (on by default) and the colour match both change the set's colours: asking
    for the colour match turns the default normalisation off, and asking for both is an error. The stain
    contrast builds on the stain normalisation: on by default with it, an error to ask for without it.
    """
    from cellmorphnet import inference
    from cellmorphnet.data.taxonomy import WHITE_CELLS
    from cellmorphnet.errors import ConfigError

    policy = rm.record.inference
    if crop is not None:
        if crop not in ("cell", "centre"):
            raise ConfigError(f"--crop must be cell or centre, not '{crop}'.")
        policy = policy.with_crop(crop)
    if crop_fraction is not None:
        if not 0 < crop_fraction <= 1:
            raise ConfigError("--crop-fraction must be in (0, 1].")
        if crop == "cell":
            raise ConfigError("--crop-fraction sets a centre crop; it cannot go with --crop cell.")
        policy = policy.with_crop_fraction(crop_fraction)
    restrict = None
    if classes:
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        if wanted == ["wbc"]:
            wanted = [c for c in rm.classes if c in WHITE_CELLS]
        unknown = [c for c in wanted if c not in rm.classes]
        if unknown or not wanted:
            raise ConfigError(f"--classes: the run has no class {', '.join(unknown) or '(none given)'}.",
                              hint=f"Its classes: {', '.join(rm.classes)} (or 'wbc').")  # fmt: skip
        restrict = wanted
    if colour_match and not policy.colour:
        raise ConfigError("This run has no colour statistics to match to.", hint="Retrain it with this version.")
    if stain_norm and not policy.stain:
        raise ConfigError("This run has no stain reference to normalise to (it was trained by an earlier version).",
                          hint="Leave out --stain-norm, or retrain it with this version.")  # fmt: skip
    if stain_norm and colour_match:
        raise ConfigError("--stain-norm and --colour-match both change the colours: choose one.")
    colour_match = bool(policy.colour) and (inference.DEFAULT_COLOUR_MATCH if colour_match is None else colour_match)
    if stain_norm is None:
        stain_norm = inference.DEFAULT_STAIN_NORM and not colour_match
    stain_norm = bool(policy.stain) and stain_norm
    has_contrast = bool((policy.stain or {}).get("contrast"))
    if stain_contrast and not has_contrast:
        raise ConfigError("This run has no stain-contrast reference (it was trained by an earlier version).",
                          hint="Leave out --stain-contrast, or retrain it with this version.")
    if stain_contrast and not stain_norm:
        raise ConfigError("--stain-contrast needs the stain normalisation.",
                          hint="Leave out --stain-contrast, or leave out --no-stain-norm / --colour-match.")
    if stain_contrast is None:
        stain_contrast = inference.DEFAULT_STAIN_CONTRAST
    return InferenceOptions(
        stain_norm=stain_norm,
        stain_contrast=stain_norm and has_contrast and stain_contrast,
        policy=policy,
        colour_match=colour_match,
        adapt_bn=inference.DEFAULT_ADAPT_BN if adapt_bn is None else adapt_bn,
        restrict_to=restrict,
        tta=inference.DEFAULT_TTA if tta is None else tta,
        temperature=rm.record.temperature,
        scale_views=inference.DEFAULT_SCALE_VIEWS if scale_views is None else scale_views,
    )
