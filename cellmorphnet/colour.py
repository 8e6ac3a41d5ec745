"""Colour statistics of images in CIELAB: what training images look like, matching new images to them
(Reinhard et al. 2001 colour transfer), and how far a new image lies from the training colours.

Different labs stain, light and photograph differently: the same neutrophil is purple on a pink
background in one lab and brown on yellow in another. CIELAB separates lightness from the two
colour axes, so matching each channel's mean and spread moves a whole image's colours onto the
training images' without touching its shapes. No torch here: it runs in the decoding threads.
"""

from __future__ import annotations

import numpy as np

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
