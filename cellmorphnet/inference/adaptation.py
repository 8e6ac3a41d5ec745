"""What a first look at images finds, and the lab-level steps that move them toward the training images
(framing scale, stain normalisation, stain contrast, colour match, AdaBN).

By default each image is framed at the side its own cell implies and nothing else is taken from the set, so
a cell's answer depends on its own file only. Stain, lamp, camera and magnification belong to the lab, so the
lab-level values come from a lab profile (``labs``), measured once on a folder of that lab's images with the
same functions: ``survey_files`` finds each image's cell and implied side, the set's colours and its nuclei's
optical density; ``settle_contrast`` the set's stain contrast, with the model's help. Asked for explicitly
without a profile (``--stain-norm``, ``--colour-match``, ``--adapt-bn``), they are measured on the set sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.images import Item, preprocess, read_image, single_view
from cellmorphnet.runs.record import InferencePolicy
from cellmorphnet.runtime.distributed import SINGLE, Group
from cellmorphnet.vision import colour
from cellmorphnet.vision.cellfinder import Nucleus, crop_side_of, find_nucleus, implied_side

# The colour match and AdaBN are off unless asked for: the colour match cost the 96 px default 4.7 points on
# another lab's cells and AdaBN lowered both models (docs/benchmarks.md, "Generalisation to another lab").
# The stain normalisation and the stain contrast lifted the other lab's figures when measured on its whole
# set (docs/benchmarks.md, "Stain normalisation", "Stain contrast"): they are on wherever a lab profile gives
# the lab's values, and off without one (measured on one image they help little: "Lab profiles").
DEFAULT_COLOUR_MATCH = False
DEFAULT_ADAPT_BN = False
DEFAULT_STAIN_NORM = True  # with a lab profile that has a stain
ADAPT_BN_MAX_IMAGES = 2048  # images used to re-estimate batch-norm statistics
# The colour match and the stain normalisation need a set: one image's colours are mostly its own cell's
# (matching single images cost 8 points on PBC's JPEGs, docs/benchmarks.md). Smaller sets are classified
# as they come.
MIN_COLOUR_SET = 16
# The stain contrast (``settle_contrast``): measured on at most this many images of a set, one view each,
# in this many rounds of classifying and estimating.
DEFAULT_STAIN_CONTRAST = True  # with a lab profile that has a contrast
CONTRAST_MAX_IMAGES = 512
CONTRAST_ROUNDS = 3


@dataclass(frozen=True)
class Survey:
    """What a first look at the whole set finds: where each image's cell is, the one crop side for the set (see
    ``cellfinder``), and the set's colour statistics (see ``colour.match``)."""

    nuclei: dict[Item, Nucleus | None]
    side: float | None  # one crop side for every image (a lab profile's); None: each image's own (``sides``)
    colour: dict[str, list[float]] | None = None  # the set's CIELAB mean and std, where colour matching is on
    stain: list[float] | None = None  # the nucleus optical density normalised from, where stain normalisation is on
    contrast: float | None = None  # the stain-contrast power, where it is applied (``settle_contrast``)
    sides: dict[Item, float | None] = dataclasses.field(default_factory=dict)  # each image's own implied side

    def of(self, path: Item) -> tuple[Nucleus | None, float | None]:
        n = self.nuclei.get(path)
        side = self.side if self.side is not None else self.sides.get(path)
        return (n, side) if n is not None and side is not None else (None, None)

    @property
    def set_side(self) -> float | None:
        """The crop side of the set as a whole (the median of its images' own): what a lab profile keeps."""
        return crop_side_of(self.sides.values())


def _look(path: Item, policy: InferencePolicy, with_colour: bool, with_stain: bool = False):
    """(nucleus, implied crop side, CIELAB moments and nucleus optical density of the provisional crop) of one
    file; Nones if unreadable (or not asked for)."""
    try:
        img = read_image(path)
    except (InvalidData, OSError):
        return None, None, None, None  # reported when the file is read for the prediction
    n = find_nucleus(img) if policy.crop == "cell" and policy.nucleus_fraction else None
    side = implied_side(img, n, policy.nucleus_fraction, policy.resize_chain[-1]) if n else None
    moments = density = None
    if with_colour or with_stain:
        crop = preprocess(img, policy, n, side)
        moments = colour.moments(crop) if with_colour else None
        density = colour.nucleus_density(crop) if with_stain else None
    return n, side, moments, density


def survey_files(files: list[Item], policy: InferencePolicy, workers: int = 2, colour_match: bool = False,
                 stain_norm: bool = False, group: Group = SINGLE) -> Survey:  # fmt: skip
    """Look at every file once (in a thread pool): find each one's cell and the crop side it implies; with
    ``colour_match`` or ``stain_norm`` (set-level steps, asked for), the set's colours and nucleus density too.
    In a distributed job each rank looks at its block and every rank gets the whole survey."""
    stain_norm = stain_norm and policy.stain is not None
    if not (policy.crop == "cell" and policy.nucleus_fraction) and not colour_match and not stain_norm:
        return Survey({}, None)  # (centre crops: nothing to look for)
    # the server's requests (workers 1): no pool to start
    found = group.map(lambda f: _look(f, policy, colour_match, stain_norm), files, workers)
    moments = [m for _, _, m, _ in found if m is not None]
    source = colour.from_moments(moments) if colour_match and len(moments) >= MIN_COLOUR_SET else None
    densities = [d for *_, d in found if d is not None]
    density = colour.set_density(densities) if stain_norm and len(densities) >= MIN_COLOUR_SET else None
    return Survey({f: n for f, (n, *_) in zip(files, found, strict=True)}, None, source, density,
                  sides={f: s for f, (_, s, *_) in zip(files, found, strict=True)})  # fmt: skip


def settle_contrast(survey: Survey, policy: InferencePolicy, arrays: list[np.ndarray], classes: list[str],
                    probs_of: Callable[[list[np.ndarray]], np.ndarray]) -> Survey:  # fmt: skip
    """``survey`` with the set's stain-contrast power, found on ``arrays`` (the set's images as ``prepare.load``
    gives them, stain-normalised, contrast not yet applied; one view each).

    The power is the one under which the set's ring ratios (``colour.ring_ratio``, around each image's nucleus
    as found before any redrawing) match the training ratios of the types ``probs_of`` (the model) takes the
    redrawn cells for: in each of ``CONTRAST_ROUNDS`` rounds the images are redrawn at the power so far,
    classified and measured, and the power multiplied by what is left (``colour.contrast_power``). A ratio
    responds to the power less than one for one, so one round alone would stop short; the rounds also let
    the types settle, since cells classified under the wrong contrast are taken for the wrong type.
    Unchanged where the set is not stain-normalised, the run has no contrast reference, or fewer than
    ``MIN_COLOUR_SET`` cells have a ratio.
    """
    from cellmorphnet.data.taxonomy import canonical
    from cellmorphnet.vision.cellfinder import nuclear_stain

    reference = policy.stain.contrast if policy.stain is not None else None
    if survey.stain is None or not reference or len(arrays) < MIN_COLOUR_SET:
        return survey
    arrays = [single_view(a) for a in arrays]
    nuclei = [nuclear_stain(a) for a in arrays]
    power = 1.0
    for _ in range(CONTRAST_ROUNDS):
        drawn = [colour.apply_contrast(a, power, policy.stain) for a in arrays]
        types = [canonical(classes[int(i)]) for i in probs_of(drawn).argmax(1)]
        left = colour.contrast_power([colour.ring_ratio(d, n) for d, n in zip(drawn, nuclei, strict=True)], types,
                                     reference, MIN_COLOUR_SET)  # fmt: skip
        if left is None:
            return survey
        power = round(float(np.clip(power * left, *colour.CONTRAST_RANGE)), 3)
    return replace(survey, contrast=power)


def contrast_sample(files: list[Item]) -> list[Item]:
    """The files ``settle_contrast`` looks at: all of a small set, else ``CONTRAST_MAX_IMAGES`` drawn evenly."""
    if len(files) <= CONTRAST_MAX_IMAGES:
        return list(files)
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, CONTRAST_MAX_IMAGES).round()]


def adapt_batch_norm(model, arrays: list[np.ndarray], policy: InferencePolicy, device, channels_last: bool,
                     batch_size: int = 64):  # fmt: skip
    """A copy of ``model`` whose batch-norm statistics are re-estimated on ``arrays`` (AdaBN, Li et al. 2016).

    The weights stay as trained; only each batch-norm layer's running mean and variance become those
    of these images, so a shift in colour or contrast between labs is absorbed where the network
    normalises. The model passed in (and so the checkpoint) is left untouched.
    """
    import copy

    import torch

    from cellmorphnet.data.loader import eval_transform

    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    rng = np.random.default_rng(0)
    arrays = [c for a in arrays for c in (a if a.ndim == 4 else [a])]  # every scale view of every image
    picked = arrays if len(arrays) <= ADAPT_BN_MAX_IMAGES else [arrays[i] for i in sorted(
        rng.choice(len(arrays), ADAPT_BN_MAX_IMAGES, replace=False))]  # fmt: skip
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for i in range(0, len(picked), batch_size):
            x = torch.from_numpy(np.stack(picked[i : i + batch_size])).to(device)
            adapted(eval_transform(x, policy.image_size, policy.mean, policy.std).contiguous(memory_format=fmt))
    for m in norms:
        m.eval()
    return adapted
