"""Smear fields: find every white cell in a microscope photo, at a scale read from the slide itself.

A field photographed through a microscope shows many red cells, a platelet or two, and any number of white
cells anywhere in the frame, at the lab's own magnification. Two pieces of physics make this tractable
without training a detector on the lab's fields:

- **Scale from the red cells.** Red cells are everywhere in a smear and about 7.5 µm across in every lab.
  Their haemoglobin absorbs green light, so the field's green optical density is a mosaic of red-cell discs.
  Its radial autocovariance falls to half at a lag proportional to their diameter (measured on BCCD's
  train and val fields against their red-cell boxes: 0.36 of the diameter). ``rbc_diameter`` returns that
  estimate; a set of fields from one microscope shares one scale, so callers use the set's median.
- **Nuclei by colour.** Every Romanowsky-type stain colours a white cell's nucleus blue-purple, and the
  red cells pink: relative to the field's background, a nucleus is bluer than it is red
  (``blue/bg - red/bg`` above ``NUCLEUS_THRESHOLD``), a red cell the reverse. Pieces of one nucleus (the
  lobes of a neutrophil) are grouped when they lie within ``GROUP_GAP`` red-cell diameters; a group smaller
  than ``MIN_NUCLEUS_AREA`` red-cell areas (platelets, debris) is dropped, and the rest that lie close within
  one cell's size are merged. The cell's box is its nucleus's grown by ``BOX_MARGIN`` diameters.

Everything works on a copy scaled so that a red cell is ``WORK_DIAMETER`` pixels across, so the cost does not
depend on the camera's resolution. The constants were chosen on BCCD's train and val splits only
(``python -m benchmarks.fields`` measures them on its test split and on all 364 fields).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

RBC_DIAMETER_UM = 7.5  # a red cell's diameter, the ruler
HALF_DECAY_PER_DIAMETER = 0.36  # the autocovariance's half-decay lag, in red-cell diameters (BCCD train+val)
SCALE_SIDE = 256  # the scale is read on a copy whose longer side is this many pixels
WORK_DIAMETER = 32  # detection runs on a copy where a red cell is this many pixels across
NUCLEUS_THRESHOLD = 0.12  # blue/bg - red/bg of nuclear stain
SMOOTHING = 0.5  # Gaussian sigma (work pixels) before thresholding
MIN_PIECE_AREA = 0.02  # pieces smaller than this many red-cell areas are noise
GROUP_GAP = 0.3  # pieces this close (red-cell diameters) are one nucleus
MERGE_GAP = 0.5  # nuclei this close are merged into one cell...
MERGE_EXTENT = 2.0  # ...when the merged nucleus stays within this many diameters
MIN_NUCLEUS_AREA = 0.3  # a white cell's nucleus covers at least this many red-cell areas (a platelet: ~0.05)
BOX_MARGIN = 0.2  # the cell around its nucleus, in red-cell diameters, each side
MIN_BOX = 0.8  # the smallest box side, in red-cell diameters
EDGE_PIXELS = 2  # a box this close to the image border is a cell cut by it
# A found cell's crop side, in red-cell diameters. The crop is then framed as any single-cell image is (the set's
# nucleus size against the training images', see cellfinder), which takes a square of about 4.2 diameters for
# PBC-like framing (PBC's median nucleus spans 0.35 of its crop; BCCD's, 1.47 diameters by rbc_diameter): a
# little more leaves that framing room on every side.
CROP_PER_DIAMETER = 5.0
FIELD_MIN_SIDE = 400  # --cells auto: an image whose shorter side has at least this many pixels is a field
MAX_FIELD_PIXELS = 50_000_000  # larger fields are refused (cut a whole-slide image into tiles first)
# Bounds on the work one field can cause, whatever it shows (a photo of noise reads as red cells 4 px across, which
# would make the work copy 17 megapixels of 19,000 "nuclei"):
MIN_DIAMETER = 8.0  # red cells smaller than this (pixels) leave a white cell too few pixels to classify: no field
MAX_WORK_PIXELS = 4_000_000  # the detection copy's size at most; a larger field is searched on a coarser copy
DEFAULT_MAX_CELLS = 500  # white cells kept per field (--max-cells); a field with more is refused, not searched on
PIECES_PER_CELL = 4  # a field with more stained pieces than this many times --max-cells is not a smear field


@dataclass(frozen=True)
class FoundCell:
    """A white cell found in a field, in that image's pixels."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    edge: bool  # cut by the image border
    nucleus_area: float  # in red-cell areas

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def _relative(img: Image.Image, scale: float) -> np.ndarray:
    """The image resized by ``scale``, each channel divided by the background's (its 99th percentile)."""
    w, h = img.size
    small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    a = np.asarray(small, dtype=np.float32)
    bg = np.percentile(a.reshape(-1, 3), 99, axis=0)
    return a / np.maximum(bg, 1.0)


def _radial_autocovariance(x: np.ndarray) -> np.ndarray:
    """The normalised autocovariance of a 2-D array, averaged over directions, by integer lag."""
    x = x - x.mean()
    h, w = x.shape
    spectrum = np.fft.rfft2(x, s=(2 * h, 2 * w))
    ac = np.fft.irfft2(np.abs(spectrum) ** 2)[:h, :w]
    if ac[0, 0] <= 0:
        return np.zeros(1)
    yy, xx = np.mgrid[:h, :w]
    ac = ac / ac[0, 0] * (h * w) / ((h - yy) * (w - xx))  # unbiased: divide by the overlap of each lag
    r = np.hypot(yy, xx).astype(int)
    inside = r < min(h, w) // 2
    return np.bincount(r[inside], ac[inside]) / np.maximum(np.bincount(r[inside]), 1)


def rbc_diameter(img: Image.Image) -> float | None:
    """The red cells' diameter in ``img``'s pixels, from the field's own texture; None where it shows none."""
    if min(img.size) < 32:
        return None
    scale = SCALE_SIDE / max(img.size)
    od = -np.log(np.clip(_relative(img, scale)[..., 1], 1e-3, 1.0))  # green optical density: haemoglobin
    profile = _radial_autocovariance(od)
    below = np.nonzero(profile < 0.5)[0]
    if below.size == 0 or below[0] == 0 or not np.isfinite(profile).all():
        return None
    i = int(below[0])
    lag = i - 1 + (profile[i - 1] - 0.5) / max(profile[i - 1] - profile[i], 1e-6)
    diameter = lag / HALF_DECAY_PER_DIAMETER / scale
    return float(diameter) if MIN_DIAMETER <= diameter <= max_diameter(img.size) else None


def max_diameter(size: tuple[int, int]) -> float:
    """The largest red-cell diameter a field of ``size`` is read at: two red cells across its shorter side, and a
    cell's crop (``CROP_PER_DIAMETER`` diameters a side) of no more pixels than the field itself (or 4 megapixels),
    so that a crop's cost is bounded by the field's."""
    w, h = size
    return min(min(w, h) / 2, max(w * h, 4_000_000) ** 0.5 / CROP_PER_DIAMETER)


def set_diameter(diameters: Iterable[float | None]) -> float | None:
    """One scale for a set of fields from one microscope: the median of those measured."""
    found = [d for d in diameters if d]
    return float(np.median(found)) if found else None


class TooManyCells(ValueError):
    """A field holds more white cells (or stained pieces) than the budget allows: refused, not searched on."""


def work_scale(size: tuple[int, int], diameter: float) -> float:
    """The detection copy's scale: a red cell ``WORK_DIAMETER`` pixels across, or less where that copy would be
    larger than ``MAX_WORK_PIXELS`` (so a field's cost is bounded whatever its resolution)."""
    w, h = size
    return min(WORK_DIAMETER / diameter, (MAX_WORK_PIXELS / max(1, w * h)) ** 0.5)


def find_white_cells(img: Image.Image, diameter: float, max_cells: int = DEFAULT_MAX_CELLS) -> list[FoundCell]:
    """Every white cell in a field whose red cells are ``diameter`` pixels across, in reading order.

    Raises ``TooManyCells`` where the field holds more than ``max_cells`` (or more than ``PIECES_PER_CELL`` times
    as many stained pieces): a photo that is not a smear field, or a slide to cut into tiles.
    """
    from scipy import ndimage as ndi

    scale = work_scale(img.size, diameter)
    # a red cell's width on the work copy: WORK_DIAMETER exactly, unless the field is too large for that
    d = float(WORK_DIAMETER) if scale == WORK_DIAMETER / diameter else diameter * scale
    rel = _relative(img, scale)
    blueness = ndi.gaussian_filter(rel[..., 2] - rel[..., 0], SMOOTHING)
    mask = blueness > NUCLEUS_THRESHOLD
    h, w = mask.shape
    rbc_area = np.pi * (d / 2) ** 2
    labels, n = ndi.label(mask)
    if n == 0:
        return []
    areas = ndi.sum(mask, labels, range(1, n + 1))
    mask = np.isin(labels, [i + 1 for i in range(n) if areas[i] >= MIN_PIECE_AREA * rbc_area])
    grouped, groups = ndi.label(ndi.binary_dilation(mask, iterations=max(1, round(GROUP_GAP * d / 2))))
    if groups > PIECES_PER_CELL * max_cells:
        raise TooManyCells(f"{groups:,} stained objects: not a smear field, or more than {max_cells} cells "
                           "(--max-cells)")
    nuclei: list[list[float]] = []  # x0, y0, x1, y1, area (work pixels)
    for g, where in enumerate(ndi.find_objects(grouped), 1):
        if where is None:
            continue
        part = mask[where] & (grouped[where] == g)
        area = float(part.sum())
        if area < MIN_NUCLEUS_AREA * rbc_area:
            continue
        ys, xs = np.nonzero(part)
        y0, x0 = where[0].start, where[1].start
        nuclei.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1, area])
    nuclei = _merge(nuclei, MERGE_GAP * d, MERGE_EXTENT * d)
    if len(nuclei) > max_cells:
        raise TooManyCells(f"{len(nuclei):,} white cells found; the limit is {max_cells} (--max-cells)")
    cells = []
    for x0, y0, x1, y1, area in nuclei:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hw = max((x1 - x0) / 2 + BOX_MARGIN * d, MIN_BOX * d / 2)
        hh = max((y1 - y0) / 2 + BOX_MARGIN * d, MIN_BOX * d / 2)
        box = [max(0.0, cx - hw), max(0.0, cy - hh), min(float(w), cx + hw), min(float(h), cy + hh)]
        full = tuple(int(round(v / scale)) for v in box)
        full = (max(0, full[0]), max(0, full[1]), min(img.width, full[2]), min(img.height, full[3]))
        edge = (full[0] <= EDGE_PIXELS or full[1] <= EDGE_PIXELS or full[2] >= img.width - EDGE_PIXELS
                or full[3] >= img.height - EDGE_PIXELS)  # fmt: skip
        cells.append(FoundCell(full, edge, round(area / rbc_area, 3)))
    cells.sort(key=lambda c: (c.centre[1] // (diameter * 2), c.centre[0]))
    return cells


def _merge(nuclei: list[list[float]], gap: float, extent: float) -> list[list[float]]:
    """Merge nuclei whose boxes lie within ``gap`` while the merged box stays within ``extent`` (one cell's lobes
    that the grouping left apart), closest pairs first (ties: the first pair in order).

    The pairs' distances are one matrix, updated for the merged row only: O(n^2) for n nuclei, not O(n^3)."""
    if len(nuclei) < 2:
        return [list(n) for n in nuclei]
    boxes = np.array([n[:4] for n in nuclei], dtype=np.float64)
    areas = [n[4] for n in nuclei]
    alive = np.ones(len(nuclei), dtype=bool)

    def apart(i: int | slice, j: int | slice) -> np.ndarray:
        """The gap between boxes i and j, inf where they may not merge (too far, or too large together)."""
        a, b = boxes[i], boxes[j]
        dx = np.maximum(0.0, np.maximum(a[..., 0], b[..., 0]) - np.minimum(a[..., 2], b[..., 2]))
        dy = np.maximum(0.0, np.maximum(a[..., 1], b[..., 1]) - np.minimum(a[..., 3], b[..., 3]))
        side = np.maximum(np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0]),
                          np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1]))  # fmt: skip
        gaps = np.hypot(dx, dy)
        return np.where((gaps <= gap) & (side <= extent), gaps, np.inf)

    n = len(nuclei)
    dist = apart(np.arange(n)[:, None], np.arange(n)[None, :])
    dist[np.tril_indices(n)] = np.inf  # each pair once, as (i, j) with i < j
    while True:
        flat = int(np.argmin(dist))  # row-major: the first of equal gaps, as a scan of the pairs in order finds it
        i, j = divmod(flat, n)
        if not np.isfinite(dist[i, j]):
            break
        boxes[i] = [min(boxes[i, 0], boxes[j, 0]), min(boxes[i, 1], boxes[j, 1]),
                    max(boxes[i, 2], boxes[j, 2]), max(boxes[i, 3], boxes[j, 3])]  # fmt: skip
        areas[i] += areas[j]
        alive[j] = False
        dist[j, :] = dist[:, j] = np.inf
        row = apart(i, np.arange(n))
        row[~alive] = np.inf
        row[i] = np.inf
        dist[i, i + 1 :] = row[i + 1 :]
        dist[:i, i] = row[:i]
    return [[*map(float, boxes[k]), areas[k]] for k in range(n) if alive[k]]


def cell_crop(img: Image.Image, cell: FoundCell, diameter: float) -> Image.Image:
    """A square around ``cell`` of ``CROP_PER_DIAMETER`` red-cell diameters (padded past the border): a crop
    like the single-cell images the model was trained on, which ``infer`` then frames as it frames those."""
    from cellmorphnet.vision.cellfinder import padded_crop

    cx, cy = cell.centre
    half = CROP_PER_DIAMETER * diameter / 2
    return padded_crop(img, (round(cx - half), round(cy - half), round(cx + half), round(cy + half)))


def is_field(size: tuple[int, int], mode: str) -> bool:
    """Whether an image of ``size`` is searched for every white cell: ``mode`` "all", "one" (never), or "auto":
    when its shorter side has at least ``FIELD_MIN_SIDE`` pixels (PBC's CellaVision crops are 360)."""
    if mode == "all":
        return True
    if mode == "one":
        return False
    return min(size) >= FIELD_MIN_SIDE
