"""How a set of images is preprocessed and adapted: the run's policy with the user's choices applied.

``inference_options`` resolves the flags of ``infer``, ``eval --on``, ``serve`` and the Python API
against the run and the measured defaults, in one place, so they all answer the same way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cellmorphnet.errors import ConfigError
from cellmorphnet.inference.adaptation import (
    DEFAULT_ADAPT_BN,
    DEFAULT_COLOUR_MATCH,
    DEFAULT_STAIN_CONTRAST,
    DEFAULT_STAIN_NORM,
)
from cellmorphnet.inference.images import DEFAULT_SCALE_VIEWS
from cellmorphnet.inference.verdict import Conformal
from cellmorphnet.runs.record import InferencePolicy, RunRecord
from cellmorphnet.vision.fields import DEFAULT_MAX_CELLS

# The 8-view average (flips and quarter turns) helped on another lab's cells and at home (docs/benchmarks.md,
# "Generalisation to another lab"), so it is on.
DEFAULT_TTA = True
DEFAULT_CELLS = "auto"  # --cells: fields (shorter side >= fields.FIELD_MIN_SIDE) searched for every white cell


@dataclass(frozen=True)
class LabSet:
    """A lab's own values, measured once on a folder of its images (a lab profile, ``labs``; or the cells an
    adapted run trained on): used for every image in place of anything measured on the images sent together."""

    name: str | None = None  # the profile's name (None: an adapted run's own)
    side: float | None = None  # the crop side of a framed cell, in the lab's pixels
    stain: list[float] | None = None  # its nuclei's optical density (the stain normalisation's source)
    contrast: float | None = None  # its stain-contrast power
    rbc_diameter: float | None = None  # its red cells' diameter in fields, in pixels
    conformal: Conformal | None = None  # fitted on its reviewed cells (``lab calibrate``)

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> LabSet:
        def num(k):
            v = d.get(k)
            if v is None:
                return None
            v = float(v)
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{k} must be a positive number")
            return v

        stain = d.get("stain")
        if stain is not None:
            stain = [float(x) for x in stain]
            if len(stain) != 3 or not all(math.isfinite(x) and x > 0 for x in stain):
                raise ValueError("stain must be three positive numbers")
        conformal = Conformal.from_dict(d["conformal"]) if d.get("conformal") else None
        return cls(name, num("side"), stain, num("contrast"), num("rbc_diameter"), conformal)

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "stain": self.stain, "contrast": self.contrast, "rbc_diameter": self.rbc_diameter,
                "conformal": self.conformal.to_dict() if self.conformal else None}  # fmt: skip


@dataclass(frozen=True)
class InferenceOptions:
    """Everything that decides how a set of images becomes predictions, apart from the model itself."""

    policy: InferencePolicy  # the run's preprocessing, with --crop / --crop-fraction applied
    colour_match: bool = False  # match the set's colours to the training images' (colour.match)
    adapt_bn: bool = False  # re-estimate batch-norm statistics on the set first (adaptation.adapt_batch_norm)
    restrict_to: list[str] | None = None  # only these classes can be predicted (the rest renormalised)
    tta: bool = False  # average over the 8 flips and quarter turns (a cell has no up or down)
    temperature: float = 1.0  # the run's calibration: logits are divided by it before the softmax
    stain_norm: bool = False  # normalise the set's stain and lamp to the training images' (colour.normalise_stain)
    scale_views: bool = False  # a framed cell also seen at 3 crop sides around the set's (images.crop_sides)
    stain_contrast: bool = False  # with stain_norm, match the set's cytoplasm-to-nucleus density too
    cells: str = DEFAULT_CELLS  # "auto": fields searched for every white cell, crops as one; "one"; "all"
    max_cells: int = DEFAULT_MAX_CELLS  # white cells per field at most; a field with more is refused (--max-cells)
    lab: LabSet | None = None  # the lab's values (--lab); None: each image on its own

    def to_dict(self) -> dict[str, Any]:
        """The user's choices (not the policy), as infer's summary and eval --on's report state them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("policy", "lab")}
        out["lab"] = None if self.lab is None else (self.lab.name or "the run's own (adapted)")
        return out

    @property
    def per_image(self) -> bool:
        """True where a cell's answer depends on its own file only (no step measured on the set sent)."""
        return not (self.adapt_bn or (self.lab is None and (self.stain_norm or self.colour_match)))


def inference_options(record: RunRecord, *, crop: str | None = None, crop_fraction: float | None = None,
                      colour_match: bool | None = None, adapt_bn: bool | None = None,
                      classes: str | None = None, tta: bool | None = None,
                      stain_norm: bool | None = None, scale_views: bool | None = None,
                      stain_contrast: bool | None = None, cells: str | None = None,
                      max_cells: int | None = None, lab: LabSet | None = None,
                      home_preprocessing: bool = False) -> InferenceOptions:  # fmt: skip
    """Resolve the command-line choices (``None``: the default) against the run's record and the measured defaults.

    ``lab``: a lab profile's values (``--lab NAME``); else an adapted run's own lab, unless ``home_preprocessing``
    (``--lab none``). With a lab, its stain normalisation and contrast are on by default;
    without one, every image is read on its own and the set-level steps run only when asked for (measured on
    the set sent). The stain normalisation and the colour match both change the colours: asking for the colour
    match turns the normalisation off, and asking for both is an error. The stain contrast builds on the stain
    normalisation: an error to ask for without it.
    """
    from cellmorphnet.data.taxonomy import WHITE_CELLS

    run_classes = list(record.classes)
    policy = record.inference
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
            wanted = [c for c in run_classes if c in WHITE_CELLS]
        unknown = [c for c in wanted if c not in run_classes]
        if unknown or not wanted:
            raise ConfigError(f"--classes: the run has no class {', '.join(unknown) or '(none given)'}.",
                              hint=f"Its classes: {', '.join(run_classes)} (or 'wbc').")  # fmt: skip
        restrict = wanted
    if colour_match and not policy.colour:
        raise ConfigError("This run has no colour statistics to match to.", hint="Retrain it with this version.")
    if stain_norm and not policy.stain:
        raise ConfigError("This run has no stain reference to normalise to (it was trained by an earlier version).",
                          hint="Add it with: cellmorphnet upgrade RUN; or leave out --stain-norm.")  # fmt: skip
    if stain_norm and colour_match:
        raise ConfigError("--stain-norm and --colour-match both change the colours: choose one.")
    colour_match = bool(policy.colour) and (DEFAULT_COLOUR_MATCH if colour_match is None else colour_match)
    if lab is None and not home_preprocessing and policy.lab_set:
        try:
            lab = LabSet.from_dict(policy.lab_set)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"The run's own lab values are damaged ({e}).", hint="Pass --lab none.") from None
    if stain_norm is None:
        stain_norm = DEFAULT_STAIN_NORM and not colour_match and lab is not None and lab.stain is not None
    stain_norm = bool(policy.stain) and stain_norm
    has_contrast = policy.stain is not None and bool(policy.stain.contrast)
    if lab is not None and stain_norm and lab.stain is None:
        raise ConfigError(f"The lab profile {lab.name or ''} has no stain to normalise from.",
                          hint="Make it again with: cellmorphnet lab create; or leave out --stain-norm.")  # fmt: skip
    if stain_contrast and not has_contrast:
        raise ConfigError("This run has no stain-contrast reference (it was trained by an earlier version).",
                          hint="Add it with: cellmorphnet upgrade RUN; or leave out --stain-contrast.")
    if stain_contrast and not stain_norm:
        raise ConfigError("--stain-contrast needs the stain normalisation.",
                          hint="Use a lab profile (--lab NAME), or add --stain-norm (measured on the set sent).")
    if stain_contrast is None:
        stain_contrast = DEFAULT_STAIN_CONTRAST and lab is not None and lab.contrast is not None
    if max_cells is not None and not 1 <= max_cells <= 100_000:
        raise ConfigError("--max-cells must be between 1 and 100,000.")
    return InferenceOptions(
        policy=policy,
        colour_match=colour_match,
        adapt_bn=DEFAULT_ADAPT_BN if adapt_bn is None else adapt_bn,
        restrict_to=restrict,
        tta=DEFAULT_TTA if tta is None else tta,
        temperature=record.temperature,
        stain_norm=stain_norm,
        scale_views=DEFAULT_SCALE_VIEWS if scale_views is None else scale_views,
        stain_contrast=stain_norm and has_contrast and stain_contrast,
        cells=DEFAULT_CELLS if cells is None else _cell_mode(cells),
        max_cells=DEFAULT_MAX_CELLS if max_cells is None else max_cells,
        lab=lab,
    )


def _cell_mode(cells: str) -> str:
    if cells not in ("auto", "one", "all"):
        raise ConfigError(f"--cells must be auto, one or all, not '{cells}'.")
    return cells
