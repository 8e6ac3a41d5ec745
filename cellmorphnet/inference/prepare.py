"""One function prepares a set of images for the model: ``prepare_set``. ``infer``, ``eval --on``, the Python
API and ``serve`` all call it, so a file gets the same prediction from each of them by construction.

A first pass (``adaptation.survey_files``) finds each image's cell before any prediction, so every image is
decoded twice. By default each image is then framed on its own; a lab profile (``options.lab``) supplies the
lab's crop side, stain and contrast. Only set-level steps asked for without a profile are measured on the set
(its colours, nucleus density, and a sample of up to ``adaptation.CONTRAST_MAX_IMAGES`` for the contrast).
Decoding runs in a thread pool ahead of the model (PIL releases the GIL while decoding), so images are read
while the network works on the previous batch. Unreadable files are reported, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.adaptation import Survey, contrast_sample, settle_contrast, survey_files
from cellmorphnet.inference.images import Item, crop_box, crop_sides, preprocess, read_error, read_image
from cellmorphnet.inference.options import InferenceOptions, LabSet
from cellmorphnet.runs.record import InferencePolicy
from cellmorphnet.runtime.distributed import SINGLE, Group
from cellmorphnet.vision import colour
from cellmorphnet.vision.cellfinder import looks_empty

NO_CELL = "centre (no cell found)"  # the framing of an image in which no cell was found (not counted as a cell)


class Framing(NamedTuple):
    """How one image was framed and coloured before the model saw it."""

    label: str  # "cell", "centre", or NO_CELL
    box: tuple[int, int, int, int]  # the square cropped from the image (may reach past it)
    colour_step: str | None  # "stain-norm" or "colour-match" where the set's colours were adapted
    stain_contrast: float | None  # the set's stain-contrast power where it was applied


class Loaded(NamedTuple):
    """One item as the model takes it, or why it could not be read."""

    item: Item
    array: np.ndarray | None  # HxWx3 uint8, or SxHxWx3 at S crop sides (scale views); None if unreadable
    error: str | None  # why the file was skipped
    framing: Framing | None
    colour_distance: float | None  # of the image as it came, before any colour step (colour.distance)


def load(item: Item, policy: InferencePolicy, survey: Survey, scales: tuple[float, ...] = (1.0,)) -> Loaded:
    """Read, frame and colour one item as the set's ``survey`` says.

    The array is HxWx3, or SxHxWx3 where a cell was framed and ``scales`` holds several crop sides
    (multiples of the set's, 1.0 in the middle; see ``images.crop_sides``). The colour distance is that of the
    image as it came (at the set's crop side), before any stain normalisation or colour matching.
    """
    try:
        img = read_image(item)
    except (InvalidData, OSError) as e:
        return Loaded(item, None, read_error(e), None, None)
    nucleus, side = survey.of(item)
    sides = [side * m for m in scales] if nucleus is not None and side is not None and len(scales) > 1 else [side]
    crops = [preprocess(img, policy, nucleus, s) for s in sides]
    if nucleus is not None:
        label = "cell"
    elif policy.crop == "cell" or looks_empty(img):  # (the centre policy looks for no nucleus: only for nothing)
        label = NO_CELL
    else:
        label = "centre"
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
    return Loaded(item, arr, None, Framing(label, crop_box(img.size, policy, nucleus, side), step, contrast), dist)


def load_all(items: list[Item], policy: InferencePolicy, survey: Survey, workers: int, window: int,
             scales: tuple[float, ...] = (1.0,)) -> Iterator[Loaded]:  # fmt: skip
    """``load`` each item, in order: in a thread pool at most ``window`` ahead of the consumer, or in the calling
    thread with ``workers`` <= 1 (the server's requests, which run in threads of their own)."""
    if workers <= 1:
        yield from (load(i, policy, survey, scales) for i in items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        it = iter(items)
        for i in it:
            pending.append(pool.submit(load, i, policy, survey, scales))
            if len(pending) >= window:
                break
        while pending:
            fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt, policy, survey, scales))
            yield fut.result()


def prepare_set(items: list[Item], options: InferenceOptions, classes: list[str],
                one_view: Callable[[list[np.ndarray]], np.ndarray], *, workers: int = 2,
                window: int = 128, group: Group = SINGLE) -> tuple[Survey, Iterator[Loaded]]:  # fmt: skip
    """A set of images made ready for the model: the set's survey and, lazily and in order, each item loaded.

    ``one_view`` gives the model's class probabilities of arrays (one view each, no averaging over flips):
    the stain contrast asks it what the cells are. ``workers`` decode in parallel, ``window`` images ahead.
    In a distributed job (``group``) the survey covers the whole set (each rank looks at its block, rank 0
    settles the contrast and hands it on), so it is the same for any number of processes; the items loaded are
    this rank's block (``group.shard``).
    """
    policy = options.policy
    lab = options.lab
    survey = survey_files(items, policy, workers, options.colour_match and lab is None,
                          options.stain_norm and lab is None, group)  # fmt: skip
    if lab is not None:
        survey = _lab_set(survey, options, lab)
    elif options.stain_contrast and survey.stain is not None:
        first = survey

        def contrast() -> float | None:
            sample = load_all(contrast_sample(items), policy, first, workers, window)
            return settle_contrast(first, policy, [x.array for x in sample if x.error is None], classes,
                                   one_view).contrast  # fmt: skip

        survey = replace(survey, contrast=group.on_main(contrast))
    start, stop = group.shard(len(items))
    return survey, load_all(items[start:stop], policy, survey, workers, window, crop_sides(policy, options.scale_views))


def _lab_set(survey: Survey, options: InferenceOptions, lab: LabSet) -> Survey:
    """The lab's values (a lab profile's, or those of the cells an adapted run trained on), for every image.

    Each image's cell is still found in it; the lab's crop side replaces the one its cell implies, and its
    stain and contrast are applied unless switched off (``--no-stain-norm``, ``--no-stain-contrast``)."""
    stain = lab.stain if options.stain_norm and options.policy.stain is not None else None
    contrast = lab.contrast if stain is not None and options.stain_contrast else None
    return replace(survey, side=lab.side, stain=stain, contrast=contrast)
