"""Predict over files and folders with a trained run, rebuilding its exact preprocessing.

The inference policy (how a full-size image becomes what the network saw in training) is derived
from the preprocessing of the run's first dataset and the framing and colours measured on its
training images, and stored in the run record at training time (``record.InferencePolicy``):

1. a square crop: around the white cell found in the image, at the scale the training images show
   their cells (``crop == "cell"``, see ``cellfinder``; one crop side for the whole set); else, or
   where no cell is found, the training data's centre square (``centre_crop_px`` pixels for
   PBC/BloodMNIST, else ``centre_crop_fraction`` of the shorter side);
2. bicubic resizes through ``resize_chain`` (e.g. [28, 64] for the sample: stored at 28 px,
   prepared at 64), exactly as prepare made the training arrays;
3. the set's stain normalised to the training images' (``colour.normalise_stain``: background and
   nucleus colour; on by default), or optionally its colours matched to theirs (``colour.match``);
   they need at least ``MIN_COLOUR_SET`` images with a nucleus (stain) or readable images (colour), and
   each prediction records which was applied (``colour_step``); with the stain normalisation, the set's
   stain contrast (how densely the cytoplasm is stained against the nucleus) matched to the training
   images' for the cell types the model takes the cells for (``settle_contrast``; on by default;
   recorded as ``stain_contrast``);
4. the evaluation transform of training (resize to the network's input size, normalise), then the
   model, optionally adapted (AdaBN), and the run's temperature; with ``tta`` (on by default) the
   probabilities are averaged over the 8 flips and quarter turns of each image, or, with the scale
   views (off by default), over 3 crop sides around the set's (``SCALE_VIEWS``) in 4 orientations each.

A first pass over the set (``survey_files``) finds the cells and the set's colours and nucleus
density before any prediction, so every image is decoded twice on the default path, and a sample of
up to ``CONTRAST_MAX_IMAGES`` once more for the stain contrast (classified one view each, three times).

Decoding runs in a thread pool ahead of the model (PIL releases the GIL while decoding), so images
are read while the network works on the previous batch. Unreadable files are reported, never fatal.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import colour
from cellmorphnet.cellfinder import Nucleus, cell_box, crop_side_of, find_nucleus, implied_side, padded_crop
from cellmorphnet.errors import InvalidData
from cellmorphnet.imaging import IMAGE_SUFFIXES, centre_square, load_rgb
from cellmorphnet.record import InferencePolicy

# The set's crop side is an estimate: it comes from the median nucleus, and the white-cell types' nuclei
# differ in size (the PBC test images' types imply crop sides from 0.86 to 1.29 times the right one), so
# a lab whose mix of types is not the training data's gets a side 10 % or more off. With the scale views
# a framed cell is also seen 13 % closer and 15 % farther (with tta, 4 orientations at each side: 12
# passes, where other images get the 8 flips and turns). Off by default: on nine models it gained 0.9
# points on another lab's cells on average, but +0.2 over three seeds of the default recipe (one lost
# 3.5), at half the speed (docs/benchmarks.md, "Scale views").
SCALE_VIEWS = (0.87, 1.0, 1.15)  # multiples of the set's crop side; 1.0 in the middle
DEFAULT_SCALE_VIEWS = False
ORIENTATIONS_PER_SCALE = ((False, 0), (False, 1), (True, 0), (True, 1))  # (flipped, quarter turns)

# Defaults decided by measurement on another lab's cells and on PBC's own JPEGs with the default model
# (docs/benchmarks.md, "Generalisation to another lab"): the 8-view average helps there and at home;
# the set-level colour match helped the 64 px-input model (+2.3 points) but costs the 96 px default
# 4.7 points, and AdaBN lowered the balanced accuracy with both, so both are off unless asked for. The
# stain normalisation lifted ten of eleven models there (8.4 points on average; the default recipe's four
# seeds by 4.7, 9.3, 20.9 and 13.0) and left PBC's JPEGs within one image of 240, so it is on.
DEFAULT_COLOUR_MATCH = False
DEFAULT_ADAPT_BN = False
DEFAULT_STAIN_NORM = True
DEFAULT_TTA = True
COLOUR_DISTANCE_WARN = 4.0  # |z| of an image's mean colour beyond which it is marked unlike the training data
ADAPT_BN_MAX_IMAGES = 2048  # images used to re-estimate batch-norm statistics
# The colour match and the stain normalisation need a set: one image's colours are mostly its own cell's
# (matching single images cost 8 points on PBC's JPEGs, docs/benchmarks.md). Smaller sets are classified
# as they come.
MIN_COLOUR_SET = 16
# The stain contrast (``settle_contrast``): measured on at most this many images of a set, one view each,
# in this many rounds of classifying and estimating. On by default: on another lab's cells it lifted the
# default recipe's four seeds by 1.6 to 5.5 points (mean 0.772 -> 0.806) and left PBC's JPEGs as they were
# (docs/benchmarks.md, "Stain contrast").
DEFAULT_STAIN_CONTRAST = True
CONTRAST_MAX_IMAGES = 512
CONTRAST_ROUNDS = 3


def crop_box(size: tuple[int, int], policy: InferencePolicy, nucleus: Nucleus | None = None,
             side: float | None = None) -> tuple[int, int, int, int]:  # fmt: skip
    """The square an image is cropped to: around the nucleus under the cell policy, else at the centre."""
    if policy.crop == "cell" and nucleus is not None and side is not None:
        return cell_box(nucleus, side)
    return centre_square(*size, policy.centre_crop_fraction, policy.centre_crop_px)


def preprocess(img, policy: InferencePolicy, nucleus: Nucleus | None = None, side: float | None = None,
               colour_source: dict[str, list[float]] | None = None) -> np.ndarray:  # fmt: skip
    """A PIL RGB image to the uint8 array the network takes (HxWx3 at the last chain size).

    With ``policy.crop == "cell"`` and a nucleus, a square of ``side`` pixels centred on it; else the
    centre square of the training data's geometry (which reproduces BloodMNIST's arrays exactly).
    Then the bicubic resizes prepare made, and, given the set's colour statistics, the colour match
    to the training images'.
    """
    from PIL import Image

    out = padded_crop(img, crop_box(img.size, policy, nucleus, side))
    for s in policy.resize_chain:
        out = out.resize((s, s), Image.BICUBIC)
    arr = np.asarray(out, dtype=np.uint8)
    if colour_source is not None and policy.colour:
        arr = colour.match(arr, colour_source, policy.colour)
    return arr


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict: given files as they are, folders searched recursively for image suffixes.

    Returns the files and the paths that do not exist (with a reason).
    """
    files, missing = [], []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            missing.append((p, "does not exist"))
    return files, missing


@dataclass
class Prediction:
    path: Item
    predicted: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None  # why the file was skipped
    framing: str | None = None  # "cell", "centre", or "centre (no cell found)"
    box: tuple[int, int, int, int] | None = None  # the square cropped from the image (may reach past it)
    min_confidence: float = 0.0  # below this confidence the prediction is flagged (--min-confidence)
    colour_distance: float | None = None  # see colour.distance; above COLOUR_DISTANCE_WARN: unlike training
    colour_step: str | None = None  # "stain-norm" or "colour-match" where the set's colours were adapted, else None
    stain_contrast: float | None = None  # the set's stain-contrast power where it was applied (colour.apply_contrast)

    @property
    def low_confidence(self) -> bool:
        return self.confidence is not None and self.confidence < self.min_confidence

    @property
    def unusual(self) -> bool:
        return self.colour_distance is not None and self.colour_distance > COLOUR_DISTANCE_WARN

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status": "skipped" if self.error else "ok",
            "predicted": self.predicted,
            "confidence": self.confidence,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
            "framing": self.framing,
            "colour_distance": self.colour_distance,
            "colour_step": self.colour_step,
            "stain_contrast": self.stain_contrast,
            "unlike_training": self.unusual,
            "low_confidence": self.low_confidence,
            "error": self.error,
        }


@dataclass(frozen=True)
class Survey:
    """What a first look at the whole set finds: where each image's cell is, the one crop side for the set (see
    ``cellfinder``), and the set's colour statistics (see ``colour.match``). Stain, lamp, camera and
    magnification belong to the lab, not to one image, so scale and colour are taken from the set."""

    nuclei: dict[Item, Nucleus | None]
    side: float | None  # None: no cell found anywhere, every image is cropped at the centre
    colour: dict[str, list[float]] | None = None  # the set's CIELAB mean and std, where colour matching is on
    stain: list[float] | None = None  # the set's nucleus optical density, where stain normalisation is on
    contrast: float | None = None  # the set's stain-contrast power, where it is applied (``settle_contrast``)

    def of(self, path: Item) -> tuple[Nucleus | None, float | None]:
        n = self.nuclei.get(path)
        return (n, self.side) if n is not None and self.side is not None else (None, None)


@dataclass(eq=False)
class Upload:
    """An image received in memory (by the server) rather than read from a file: its name and bytes.

    Everything that classifies files takes these too; they are never written to disk.
    """

    name: str
    data: bytes
    max_pixels: int | None = None  # refuse larger images before decoding them (decompression bombs)
    _image: Any = field(default=None, repr=False)  # decoded once, for the survey and the prediction

    def __str__(self) -> str:
        return self.name


Item = Path | Upload  # what predict_files classifies


def _read(item: Item):
    if isinstance(item, Upload):  # held in memory anyway (a request's worth): decoded once, read twice
        if not item.data:
            raise InvalidData(f"{item.name}: empty file (0 bytes)")
        if item._image is None:
            import io

            item._image = load_rgb(io.BytesIO(item.data), item.name, item.max_pixels)
        return item._image
    if item.stat().st_size == 0:
        raise InvalidData(f"{item}: empty file (0 bytes)")
    return load_rgb(item)


def _reason(e: Exception) -> str:
    if isinstance(e, InvalidData):
        return e.message.split(": ", 1)[-1]
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read ({getattr(e, 'strerror', None) or e})"


def _look(path: Item, policy: InferencePolicy, with_colour: bool, with_stain: bool = False):
    """(nucleus, implied crop side, CIELAB moments and nucleus optical density of the provisional crop) of one
    file; Nones if unreadable (or not asked for)."""
    try:
        img = _read(path)
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
                 stain_norm: bool = False) -> Survey:  # fmt: skip
    """Look at every file once (in a thread pool): find the cells, the set's crop side, colours and nucleus density."""
    stain_norm = stain_norm and policy.stain is not None
    if not (policy.crop == "cell" and policy.nucleus_fraction) and not colour_match and not stain_norm:
        return Survey({}, None)
    if workers <= 1 or len(files) == 1:  # the server's requests: no pool to start
        found = [_look(f, policy, colour_match, stain_norm) for f in files]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(lambda f: _look(f, policy, colour_match, stain_norm), files))
    moments = [m for _, _, m, _ in found if m is not None]
    source = colour.from_moments(moments) if colour_match and len(moments) >= MIN_COLOUR_SET else None
    densities = [d for *_, d in found if d is not None]
    density = colour.set_density(densities) if stain_norm and len(densities) >= MIN_COLOUR_SET else None
    return Survey({f: n for f, (n, *_) in zip(files, found, strict=True)}, crop_side_of([s for _, s, *_ in found]),
                  source, density)  # fmt: skip


def settle_contrast(survey: Survey, policy: InferencePolicy, arrays: list[np.ndarray], classes: list[str],
                    probs_of: Callable[[list[np.ndarray]], np.ndarray]) -> Survey:  # fmt: skip
    """``survey`` with the set's stain-contrast power, found on ``arrays`` (the set's images as ``_load`` gives
    them, stain-normalised, contrast not yet applied; one view each).

    The power is the one under which the set's ring ratios (``colour.ring_ratio``, around each image's nucleus
    as found before any redrawing) match the training ratios of the types ``probs_of`` (the model) takes the
    redrawn cells for: in each of ``CONTRAST_ROUNDS`` rounds the images are redrawn at the power so far,
    classified and measured, and the power multiplied by what is left (``colour.contrast_power``). A ratio
    responds to the power less than one for one, so one round alone would stop short; the rounds also let
    the types settle, since cells classified under the wrong contrast are taken for the wrong type.
    Unchanged where the set is not stain-normalised, the run has no contrast reference, or fewer than
    ``MIN_COLOUR_SET`` cells have a ratio.
    """
    from cellmorphnet.cellfinder import nuclear_stain
    from cellmorphnet.data.taxonomy import canonical

    reference = (policy.stain or {}).get("contrast")
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


def crop_sides(policy: InferencePolicy, scale_views: bool) -> tuple[float, ...]:
    """The crop sides (multiples of the set's) a framed cell is seen at: ``SCALE_VIEWS`` with the scale views
    under the cell policy, else the set's side alone."""
    return SCALE_VIEWS if scale_views and policy.crop == "cell" else (1.0,)


def single_view(arr: np.ndarray) -> np.ndarray:
    """The array at the set's own crop side of what ``_load`` returns (HxWx3, or SxHxWx3 for scale views)."""
    return arr[len(arr) // 2] if arr.ndim == 4 else arr


def _load(path: Item, policy: InferencePolicy, survey: Survey, scales: tuple[float, ...] = (1.0,)):
    """(array, error, (framing label, crop box, colour step), colour distance) for one file.

    The array is HxWx3, or SxHxWx3 where a cell was framed and ``scales`` holds several crop sides
    (multiples of the set's, 1.0 in the middle; see ``crop_sides``). The colour distance is that of the
    image as it came (at the set's crop side), before any stain normalisation or colour matching.
    """
    try:
        img = _read(path)
    except (InvalidData, OSError) as e:
        return None, _reason(e), None, None
    nucleus, side = survey.of(path)
    sides = [side * m for m in scales] if nucleus is not None and side is not None and len(scales) > 1 else [side]
    crops = [preprocess(img, policy, nucleus, s) for s in sides]
    label = "cell" if nucleus is not None else ("centre (no cell found)" if policy.crop == "cell" else "centre")
    dist = round(colour.distance(crops[len(crops) // 2], policy.colour), 2) if policy.colour else None
    step = None
    if survey.stain is not None and policy.stain:
        crops = [colour.normalise_stain(c, survey.stain, policy.stain) for c in crops]
        step = "stain-norm"
        if survey.contrast is not None:
            crops = [colour.apply_contrast(c, survey.contrast, policy.stain) for c in crops]
    if survey.colour is not None and policy.colour:
        crops = [colour.match(c, survey.colour, policy.colour) for c in crops]
        step = "colour-match"  # (the two are alternatives: inference_options refuses both)
    arr = crops[0] if len(crops) == 1 else np.stack(crops)
    contrast = survey.contrast if step == "stain-norm" else None
    return arr, None, (label, crop_box(img.size, policy, nucleus, side), step, contrast), dist


def _prefetched(files: list[Item], policy: InferencePolicy, survey: Survey, workers: int, window: int,
                scales: tuple[float, ...] = (1.0,)) -> Iterator:  # fmt: skip
    """Decode ``files`` in a thread pool, at most ``window`` ahead of the consumer, in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        it = iter(files)
        for f in it:
            pending.append((f, pool.submit(_load, f, policy, survey, scales)))
            if len(pending) >= window:
                break
        while pending:
            f, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_load, nxt, policy, survey, scales)))
            yield f, *fut.result()


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


def predict_files(
    model,
    classes: list[str],
    policy: InferencePolicy,
    files: list[Item],
    *,
    batch_size: int = 64,
    top_k: int = 3,
    workers: int = 2,
    device: str = "cpu",
    channels_last: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    keep_inputs: bool = False,
    colour_match: bool = False,
    stain_norm: bool = False,
    adapt_bn: bool = False,
    restrict_to: list[str] | None = None,
    tta: bool = False,
    temperature: float = 1.0,
    scale_views: bool = False,
    stain_contrast: bool = False,
) -> tuple[list[Prediction], dict[Item, np.ndarray]]:
    """Predict every file; unreadable ones come back with ``error`` set. Optionally keep the preprocessed arrays.

    ``colour_match``: match each image's colours to the training images' (``colour.match``).
    ``stain_norm``: normalise the set's stain and lamp to the training images' (``colour.normalise_stain``).
    ``adapt_bn``: re-estimate batch-norm statistics on these images first (``adapt_batch_norm``).
    ``restrict_to``: only these classes can be predicted (the others' probabilities are dropped and the
    rest renormalised), e.g. the white-cell types when every image is known to be a white cell.
    ``tta``: average the predictions over the 8 flips and quarter turns of each image (a cell has no
    up or down, so all 8 are the same cell).
    ``scale_views``: a framed cell is also seen at 3 crop sides around the set's (``crop_sides``), averaged
    (with ``tta``, 4 orientations at each).
    ``temperature``: the run's calibration; logits are divided by it before the softmax.
    ``stain_contrast``: with ``stain_norm``, also match the set's cytoplasm-to-nucleus density to the training
    images' (``settle_contrast``, on a sample of up to ``CONTRAST_MAX_IMAGES`` images, decoded once more).
    """
    import torch

    keep = torch.tensor([classes.index(c) for c in restrict_to]) if restrict_to else None
    dev = torch.device(device)

    def one_view(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([class_probs(model, arrays[i : i + batch_size], policy, device=dev,
                                           channels_last=channels_last, temperature=temperature, keep=keep)
                               for i in range(0, len(arrays), batch_size)])  # fmt: skip

    survey = survey_files(files, policy, workers, colour_match, stain_norm)
    if stain_contrast and survey.stain is not None:
        sample = _prefetched(contrast_sample(files), policy, survey, workers, window=max(2 * batch_size, 8))
        survey = settle_contrast(survey, policy, [a for _, a, err, *_ in sample if err is None], classes, one_view)
    sides = crop_sides(policy, scale_views)
    loaded = _prefetched(files, policy, survey, workers, window=max(2 * batch_size, 8), scales=sides)
    if adapt_bn:  # every image is needed before the first prediction: load once, keep, then predict from memory
        loaded = list(loaded)
        arrays = [a for _, a, err, *_ in loaded if err is None]
        if arrays:
            model = adapt_batch_norm(model, arrays, policy, device, channels_last)

    preds: list[Prediction] = []
    kept: dict[Item, np.ndarray] = {}
    batch_paths: list[tuple[Item, tuple, float | None]] = []
    batch_arrays: list[np.ndarray] = []
    k = max(1, min(top_k, len(classes) if keep is None else len(keep)))

    def flush() -> None:
        if not batch_arrays:
            return
        probs = class_probs(model, batch_arrays, policy, device=dev, channels_last=channels_last, tta=tta,
                            temperature=temperature, keep=keep)  # fmt: skip
        for (path, how, dist), row in zip(batch_paths, probs, strict=True):
            preds.append(to_prediction(path, row, classes, k, how, dist))
        batch_paths.clear()
        batch_arrays.clear()

    done = 0
    for path, arr, error, how, dist in loaded:
        done += 1
        if error is not None:
            preds.append(Prediction(path, error=error))
        else:
            batch_paths.append((path, how, dist))
            batch_arrays.append(arr)
            if keep_inputs:
                kept[path] = single_view(arr)
            if len(batch_arrays) >= batch_size:
                flush()
        if on_batch is not None and (done % batch_size == 0 or done == len(files)):
            on_batch(done, len(files))
    flush()
    order = {p: i for i, p in enumerate(files)}
    preds.sort(key=lambda p: order.get(p.path, -1))
    return preds, kept


def class_probs(model, arrays: list[np.ndarray], policy: InferencePolicy, *, device, channels_last: bool = False,
                tta: bool = False, temperature: float = 1.0, keep=None) -> np.ndarray:  # fmt: skip
    """The model's calibrated class probabilities (N, C) for preprocessed arrays (``preprocess``; HxWx3, or
    SxHxWx3 for one image at S crop sides, see ``_load``, whose probabilities are averaged).

    ``tta`` averages the 8 flips and quarter turns (4 orientations at each of several crop sides); ``keep``
    (class indices) restricts the softmax to them.
    """
    import torch

    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.prediction import ORIENTATIONS, oriented

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out: list[np.ndarray | None] = [None] * len(arrays)
    for ndim, views in ((3, ORIENTATIONS), (4, ORIENTATIONS_PER_SCALE)):
        idx = [i for i, a in enumerate(arrays) if a.ndim == ndim]
        if not idx:
            continue
        stack = np.stack([arrays[i] for i in idx])
        n_sides = stack.shape[1] if ndim == 4 else 1
        x = torch.from_numpy(stack.reshape(-1, *stack.shape[-3:])).to(device)
        x = eval_transform(x, policy.image_size, policy.mean, policy.std).contiguous(memory_format=fmt)
        with torch.no_grad():
            turned = oriented(x, views if tta else views[:1])  # in x's memory format
            logits = torch.stack([model(v).float().cpu() for v in turned]) / temperature
        if keep is not None:
            logits = torch.full_like(logits, float("-inf")).index_copy(2, keep, logits.index_select(2, keep))
        probs = logits.softmax(2).mean(0).reshape(len(idx), n_sides, -1).mean(1).numpy()
        for j, i in enumerate(idx):
            out[i] = probs[j]
    return np.stack(out)


def to_prediction(item: Item, probs: np.ndarray, classes: list[str], k: int, how: tuple | None = None,
                  dist: float | None = None) -> Prediction:  # fmt: skip
    """A ``Prediction`` from one row of ``class_probs``: the top ``k`` classes, the framing, colour step and colour
    distance (``how`` as ``_load`` gives it)."""
    order = np.argsort(-probs, kind="stable")[:k]
    label, box, step, contrast = how if how is not None else (None, None, None, None)
    top = [(classes[int(j)], float(probs[j])) for j in order]
    return Prediction(item, top[0][0], top[0][1], top, framing=label, box=box, colour_distance=dist,
                      colour_step=step, stain_contrast=contrast)  # fmt: skip


def sort_into(preds: list[Prediction], target: Path) -> int:
    """Copy (never move) each predicted image into ``target/<class>/``; returns how many were copied."""
    n = 0
    for p in preds:
        if p.error:
            continue
        folder = target / p.predicted
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / p.path.name
        i = 1
        while dest.exists():
            dest = folder / f"{p.path.stem}-{i}{p.path.suffix}"
            i += 1
        shutil.copy2(p.path, dest)
        n += 1
    return n


def write_results(preds: list[Prediction], out: Path, summary: dict[str, Any]) -> None:
    """CSV (one row per file, skipped ones with their reason) or JSON (rows plus summary), atomically."""
    import csv
    import io

    from cellmorphnet._io import atomic_path, write_json

    if out.suffix.lower() == ".json":
        write_json(out, {"summary": summary, "predictions": [p.to_dict() for p in preds]})
        return
    if out.suffix.lower() != ".csv":
        raise InvalidData(f"--out must end in .csv or .json, not '{out.suffix}'.")
    k = max((len(p.top_k) for p in preds), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["path", "status", "predicted", "confidence"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_probability"]
    w.writerow([*header, "framing", "colour_step", "stain_contrast", "colour_distance", "unlike_training",
                "low_confidence", "error"])  # fmt: skip
    for p in preds:
        row = [str(p.path), "skipped" if p.error else "ok", p.predicted or "",
               "" if p.confidence is None else f"{p.confidence:.6f}"]  # fmt: skip
        for i in range(k):
            row += [p.top_k[i][0], f"{p.top_k[i][1]:.6f}"] if i < len(p.top_k) else ["", ""]
        dist = "" if p.colour_distance is None else f"{p.colour_distance:.2f}"
        flags = ["", ""] if p.error else ["yes" if p.unusual else "no", "yes" if p.low_confidence else "no"]
        contrast = "" if p.stain_contrast is None else f"{p.stain_contrast:.3f}"
        w.writerow([*row, p.framing or "", p.colour_step or "", contrast, dist, *flags, p.error or ""])
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
