"""Colour statistics of images in CIELAB: what training images look like, matching new images to them
(Reinhard et al. 2001 colour transfer), and how far a new image lies from the training colours; and
stain normalisation anchored on the lamp and the nucleus (``stain_reference``, ``normalise_stain``).

Different labs stain, light and photograph differently: the same neutrophil is purple on a pink
background in one lab and brown on yellow in another. CIELAB separates lightness from the two
colour axes, so matching each channel's mean and spread moves a whole image's colours onto the
training images' without touching its shapes. No torch here: it runs in the decoding threads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StainReference:
    """The training images' stain, measured at training time (``colour.stain_reference``): what a set of new
    images is normalised to (``colour.normalise_stain``) and its stain contrast compared with."""

    nucleus_density: list[float]  # the nuclei's median optical density, R, G, B
    background: list[float]  # the background (lamp) colour, R, G, B
    contrast: dict[str, float] | None = None  # per canonical class: ring-to-nucleus density ratio (colour.py)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainReference:
        contrast = d.get("contrast")
        return cls(nucleus_density=[float(v) for v in d["nucleus_density"]],
                   background=[float(v) for v in d["background"]],
                   contrast={str(k): float(v) for k, v in contrast.items()} if contrast else None)  # fmt: skip


SAMPLE_PIXELS = 200_000  # pixels drawn for the training statistics


def _lab(images: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(images, dtype=np.uint8))


def lab_stats(images: np.ndarray, seed: int = 0) -> dict[str, list[float]]:
    """Training colour statistics of (N, H, W, 3) uint8 images.

    ``mean``/``std``: per channel over pixels (what ``match`` maps onto); ``image_mean_mean`` and
    ``image_mean_std``: the spread of each image's own mean colour (what ``distance`` compares with).
    """
    lab = _lab(images).reshape(len(images), -1, 3)
    per_image = lab.mean(axis=1)
    pixels = lab.reshape(-1, 3)
    rng = np.random.default_rng(seed)
    if len(pixels) > SAMPLE_PIXELS:
        pixels = pixels[rng.choice(len(pixels), SAMPLE_PIXELS, replace=False)]
    return {
        "mean": pixels.mean(axis=0).round(4).tolist(),
        "std": pixels.std(axis=0).round(4).tolist(),
        "image_mean_mean": per_image.mean(axis=0).round(4).tolist(),
        "image_mean_std": np.maximum(per_image.std(axis=0), 1e-3).round(4).tolist(),
    }


def moments(image: np.ndarray) -> np.ndarray:
    """Pixel count, sums and sums of squares of an image's CIELAB channels, to pool over a set."""
    lab = _lab(image).reshape(-1, 3)
    return np.concatenate([[len(lab)], lab.sum(axis=0), (lab**2).sum(axis=0)])


def from_moments(parts: list[np.ndarray]) -> dict[str, list[float]] | None:
    """The pooled CIELAB mean and std of a set of images, from their ``moments``."""
    if not parts:
        return None
    total = np.sum(parts, axis=0)
    n, s, ss = total[0], total[1:4], total[4:7]
    mean = s / n
    return {"mean": mean.tolist(), "std": np.sqrt(np.maximum(ss / n - mean**2, 1e-6)).tolist()}


def match(image: np.ndarray, source: dict[str, list[float]], target: dict[str, list[float]]) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with its CIELAB channels moved from the ``source`` set's mean and spread onto
    the ``target`` (training) images'.

    The statistics are those of the whole set the image belongs to, not of the image: a stain or a
    camera shifts every image of a lab alike, while an image's own colours also depend on what it
    shows (a large dark cell, or a small one among red cells), which a per-image match would erase.
    """
    from skimage.color import lab2rgb

    lab = _lab(image)
    src_std = np.maximum(np.asarray(source["std"]), 1e-3)
    out = (lab - np.asarray(source["mean"])) / src_std * np.asarray(target["std"]) + np.asarray(target["mean"])
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    return (np.clip(lab2rgb(out), 0, 1) * 255).round().astype(np.uint8)


def distance(image: np.ndarray, stats: dict[str, list[float]]) -> float:
    """How unlike the training colours an image is: the largest |z| of its mean CIELAB colour, per channel,
    against the spread of the training images' mean colours."""
    m = _lab(image).reshape(-1, 3).mean(axis=0)
    z = (m - np.asarray(stats["image_mean_mean"])) / np.asarray(stats["image_mean_std"])
    return float(np.abs(z).max())


# --- Stain normalisation ------------------------------------------------------------------------------
# Light passing a stained smear loses, in each colour channel, a fraction set by the stains' optical
# density there: I = L * exp(-OD), with L the lamp as the camera records it. Two things every blood
# smear shows make a two-point calibration: the empty background (OD = 0: it is the lamp's colour) and
# the nucleus, whose DNA takes the same azure/methylene-blue dye in every Romanowsky-type stain. Another
# lab's lamp, stain batch, staining time and camera change L and scale each channel's OD; dividing by the
# background and raising each channel to the power that brings the set's nuclei to the training
# nuclei's OD undoes both, without touching shapes or the differences between cells of one set.

BACKGROUND_SHARE = 0.1  # the brightest tenth of an image's pixels is taken as its background


def background(image: np.ndarray) -> np.ndarray:
    """The lamp's colour as an (H, W, 3) uint8 image records it: the per-channel median of its brightest pixels."""
    px = np.asarray(image, dtype=np.float64).reshape(-1, 3)
    k = max(1, round(len(px) * BACKGROUND_SHARE))
    brightest = px[np.argpartition(px.sum(axis=1), len(px) - k)[-k:]]
    return np.maximum(np.median(brightest, axis=0), 30.0)  # a floor: never divide by a black "lamp"


def _density(image: np.ndarray, lamp: np.ndarray) -> np.ndarray:
    """Each pixel's optical density per channel, relative to ``lamp`` (0 at the background)."""
    return -np.log(np.clip((np.asarray(image, dtype=np.float64) + 1.0) / (lamp + 1.0), 1e-3, 1.0))


def nucleus_density(image: np.ndarray) -> np.ndarray | None:
    """The median optical density (R, G, B) of an image's nuclear-stained pixels, or None where it has none."""
    from cellmorphnet.vision.cellfinder import nuclear_stain

    mask = nuclear_stain(image)
    if mask is None or not mask.any():
        return None
    return np.median(_density(image, background(image))[mask], axis=0)


def stain_reference(images: np.ndarray) -> StainReference | None:
    """The training images' nucleus optical density and background colour (medians over the images)."""
    dens = [d for d in (nucleus_density(im) for im in images) if d is not None]
    if not dens:
        return None
    lamps = [background(im) for im in images]
    return StainReference(nucleus_density=np.median(dens, axis=0).round(4).tolist(),
                          background=np.median(lamps, axis=0).round(2).tolist())  # fmt: skip


def set_density(densities: list[np.ndarray]) -> list[float] | None:
    """A set's nucleus optical density: the median of its images' (``nucleus_density``), or None if none."""
    return np.median(densities, axis=0).tolist() if densities else None


def normalise_stain(image: np.ndarray, density: list[float], reference: StainReference) -> np.ndarray:
    """``image`` (H, W, 3 uint8) from a set whose nuclei have optical density ``density``, shown as under the
    training images' lamp and stain (``reference``, from ``stain_reference``).

    Divided by its own background (the lamp), each channel's transmission is raised to the power
    reference density / set density (optical density scaled per channel), then shown under the
    training images' background colour.
    """
    ref = np.asarray(reference.nucleus_density, dtype=np.float64)
    power = ref / np.maximum(np.asarray(density, dtype=np.float64), 1e-3)
    power = np.clip(power, 0.25, 4.0)  # a set without real nuclei must not blow a channel up
    out = np.exp(-_density(image, background(image)) * power) * np.asarray(reference.background)
    return np.clip(out, 0, 255).round().astype(np.uint8)


# --- Stain contrast -----------------------------------------------------------------------------------
# The normalisation above matches the nuclei, but stains differ also in how densely they colour the
# cytoplasm and granules next to the nucleus: against its nucleus, another lab's rapid stain colours a
# neutrophil's cytoplasm about 1.5 times as densely as PBC's May-Grünwald-Giemsa (docs/benchmarks.md,
# "Stain contrast"), and a network trained on PBC reads dense cytoplasm as an eosinophil's. The ratio
# of a ring around the nucleus to the nucleus (``ring_ratio``) depends on the cell type as much as on
# the stain, so a set's own ratios say nothing until each is compared with the training ratio of the
# type the cell is (``contrast_power``; the types come from the model), and the optical density
# raised to a power relative to the nucleus (``apply_contrast``) steepens or flattens every ratio.

RING_PX = 4  # the ring around the nucleus, in pixels of the prepared image
CONTRAST_RANGE = (0.67, 1.5)  # a set's power is kept within this: a set unlike any stain must not run away


def ring_ratio(image: np.ndarray, nucleus: np.ndarray | None = None) -> float | None:
    """The median optical density of a ring around an image's nucleus over the nucleus's (magnitudes of the
    RGB densities), or None without a nucleus or a ring of at least 10 pixels. ``nucleus``: the nuclear-stain
    mask to use (``cellfinder.nuclear_stain`` of the image where not given)."""
    from scipy.ndimage import binary_dilation

    from cellmorphnet.vision.cellfinder import nuclear_stain

    mask = nuclear_stain(image) if nucleus is None else nucleus
    if mask is None or not mask.any():
        return None
    od = np.linalg.norm(_density(image, background(image)), axis=-1)
    core = float(np.median(od[mask]))
    ring = binary_dilation(mask, iterations=RING_PX) & ~mask & (od > 0.1 * core)
    return float(np.median(od[ring])) / core if ring.sum() >= 10 and core > 0 else None


def contrast_reference(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The training images' median ``ring_ratio`` per class (``classes[label]``), for classes with 8 or more."""
    out = {}
    for c, name in enumerate(classes):
        ratios = [r for r in (ring_ratio(im) for im in images[labels == c]) if r is not None and 0 < r < 1]
        if len(ratios) >= 8:
            out[name] = round(float(np.median(ratios)), 4)
    return out


def contrast_power(ratios: list[float | None], types: list[str], reference: dict[str, float],
                   min_images: int) -> float | None:  # fmt: skip
    """How far a set's ring ratios lie from the training ratios of the types its cells are taken for: the median
    over images of log(reference ratio of its type) / log(its ratio) (1: as in training; above 1: the cytoplasm
    is denser against the nucleus than in training). None where fewer than ``min_images`` images have a ratio
    and a type with a reference."""
    each = [np.log(reference[t]) / np.log(r) for r, t in zip(ratios, types, strict=True)
            if r is not None and 0 < r < 1 and t in reference]  # fmt: skip
    return float(np.median(each)) if len(each) >= min_images else None


def apply_contrast(image: np.ndarray, power: float, reference: StainReference) -> np.ndarray:
    """A stain-normalised ``image`` (H, W, 3 uint8) with each pixel's optical density raised to ``power``
    relative to the training nuclei's (``reference`` as ``stain_reference`` gives it): the nucleus stays,
    paler and denser stain move apart (power > 1) or together (< 1); each pixel keeps its colour's hue."""
    if power == 1.0:
        return image
    lamp = np.asarray(reference.background, dtype=np.float64)
    od = np.maximum(_density(image, lamp), 0.0)
    magnitude = np.linalg.norm(od, axis=-1, keepdims=True)
    od = od * (np.maximum(magnitude, 1e-6) / np.linalg.norm(reference.nucleus_density)) ** (power - 1.0)
    return np.clip(np.exp(-od) * lamp, 0, 255).round().astype(np.uint8)
