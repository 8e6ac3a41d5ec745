"""Find the white cell in a microscope image, and frame it the way the training images frame theirs.

Every Romanowsky-type stain (May-Grünwald-Giemsa, Wright, Leishman, rapid stains) colours a white
cell's nucleus dark purple: haematoxylin-like absorbance that colour deconvolution (Ruifrok &
Johnston, via scikit-image's ``rgb2hed``) separates from the pink-orange of red cells and the pale
background. The finder thresholds that channel (Otsu), closes small gaps, and takes the largest
stained region near the image centre, together with the nearby pieces of a lobed nucleus.

Framing is about *scale* and *position*. Position comes from each image: the crop is centred on its
nucleus. Scale is a property of the microscope and camera, not of one cell: a lymphocyte's nucleus
is larger relative to its cell than a neutrophil's, so scaling every image to one nucleus size would
distort the very sizes that tell classes apart. So the scale comes from the whole set of images
classified together (``crop_side``): the median nucleus size of the set, divided by the median
nucleus fraction of the training images (measured at training time and stored in the run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

WORK_SIDE = 160  # the finder works on a copy whose longer side is this many pixels
MIN_SIDE = 16  # smaller images are not searched
MIN_AREA = 0.004  # a nucleus covers at least this fraction of the image...
MAX_AREA = 0.6  # ...and at most this (more means no contrast: a blank or uniformly dark image)


@dataclass(frozen=True)
class Nucleus:
    """The nucleus found in one image, in that image's pixel coordinates."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def side(self) -> float:
        """The longer side of its bounding box: the size measure used for framing."""
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0


def nuclear_stain(rgb: np.ndarray) -> np.ndarray | None:
    """The pixels of an HxWx3 uint8 image that hold the nuclear stain (Otsu on the smoothed haematoxylin
    channel), or ``None`` where the image is flat (blank, white or one colour)."""
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu

    stain = gaussian(rgb2hed(np.asarray(rgb, dtype=np.float32) / 255.0)[..., 0], sigma=1.0)
    if float(stain.max() - stain.min()) < 0.02:
        return None
    return stain > threshold_otsu(stain)


def looks_empty(img: Image.Image) -> bool:
    """Whether an image is too small to hold a cell (under ``MIN_SIDE``) or flat (one colour: a blank canvas)."""
    if min(img.size) < MIN_SIDE:
        return True
    grey = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.int16)
    return int(grey.max()) - int(grey.min()) < 8


def find_nucleus(img: Image.Image | np.ndarray) -> Nucleus | None:
    """The white cell's nucleus in an RGB image, or ``None`` where there is none to find."""
    from skimage.measure import label, regionprops
    from skimage.morphology import closing, disk

    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        return None
    scale = WORK_SIDE / max(w, h)
    rgb = img if img.mode == "RGB" else img.convert("RGB")  # (no full-size copy of an RGB image)
    small = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    stained = nuclear_stain(np.asarray(small))
    if stained is None:
        return None
    mask = closing(stained, disk(2))
    regions = [r for r in regionprops(label(mask)) if r.area >= MIN_AREA * mask.size]
    if not regions:
        return None
    hh, ww = mask.shape

    def weight(r) -> float:  # large, and near the centre (where whoever framed the image put the cell)
        cy, cx = r.centroid
        off = np.hypot((cy - hh / 2) / hh, (cx - ww / 2) / ww)
        return r.area * max(0.05, 1.0 - 1.5 * off)

    main = max(regions, key=weight)
    y0, x0, y1, x1 = main.bbox
    reach = max(y1 - y0, x1 - x0)
    for r in regions:  # the other lobes of a segmented nucleus lie within one nucleus size
        cy, cx = r.centroid
        if r is not main and abs(cy - (y0 + y1) / 2) < reach and abs(cx - (x0 + x1) / 2) < reach:
            ry0, rx0, ry1, rx1 = r.bbox
            y0, x0, y1, x1 = min(y0, ry0), min(x0, rx0), max(y1, ry1), max(x1, rx1)
    if (y1 - y0) * (x1 - x0) > MAX_AREA * mask.size:
        return None
    return Nucleus(x0 / scale, y0 / scale, x1 / scale, y1 / scale)


def nucleus_fraction(images: Iterable[np.ndarray]) -> tuple[float | None, int]:
    """Median nucleus side / image side over training images (HxWx3 uint8 crops), and how many had one."""
    fractions = []
    for im in images:
        n = find_nucleus(im)
        if n is not None:
            fractions.append(n.side / max(im.shape[0], im.shape[1]))
    return (float(np.median(fractions)) if fractions else None), len(fractions)


def crop_side_of(implied: Iterable[float | None]) -> float | None:
    """The set's crop side: the median of its images' implied sides (see ``implied_side``), or None if none."""
    sides = [s for s in implied if s is not None]
    return float(np.median(sides)) if sides else None


def cell_crop(img: Image.Image, nucleus: Nucleus, side: float) -> Image.Image:
    """A ``side`` x ``side`` square centred on the nucleus; where it reaches past the image, the image's own
    border is repeated outwards (no black or white frame the network never saw)."""
    return padded_crop(img, cell_box(nucleus, side))


def cell_box(nucleus: Nucleus, side: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the square of ``side`` centred on the nucleus (may reach past the image)."""
    cx, cy = nucleus.centre
    s = max(1, round(side))
    left, top = round(cx - s / 2), round(cy - s / 2)
    return left, top, left + s, top + s


def padded_crop(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``img.crop(box)``, with the image's border repeated outwards where the box reaches past it.

    Only the part of the image under the box is copied (the border repeated by indexing it), so the cost is
    the crop's size, never the image's."""
    left, top, right, bottom = box
    w, h = img.size
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return img.crop(box)
    x0, y0 = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    x1, y1 = max(min(right, w), x0 + 1), max(min(bottom, h), y0 + 1)
    inner = np.asarray(img.crop((x0, y0, x1, y1)))
    xs = np.clip(np.arange(left, right), 0, w - 1) - x0
    ys = np.clip(np.arange(top, bottom), 0, h - 1) - y0
    return Image.fromarray(inner[ys[:, None], xs[None, :]])


def implied_side(img: Image.Image, nucleus: Nucleus, fraction: float, data_size: int) -> float:
    """The crop side at which this image's nucleus, seen as training saw its images (cropped, resized to the
    prepared size, found again there), fills ``fraction`` of the crop.

    Measuring the nucleus again on the resized crop puts it under the same blur and resolution as
    the training images it is compared with; one correction step is enough (the measure is close to
    linear in the crop side).
    """
    side = nucleus.side / fraction
    seen = cell_crop(img, nucleus, side).resize((data_size, data_size), Image.BICUBIC)
    again = find_nucleus(seen)
    if again is None:
        return side
    return side * (again.side / data_size) / fraction
