"""Reading and framing: how one full-size image becomes the square array the network takes.

The policy (``record.InferencePolicy``) rebuilds the preprocessing of the run's training data: a
square crop around the white cell found in the image, at the scale the training images show their
cells (``crop == "cell"``, see ``cellfinder``; one crop side for the whole set), else, or where no
cell is found, the training data's centre square; then the bicubic resizes prepare made.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import InvalidData, TimeLimit
from cellmorphnet.runs.record import InferencePolicy
from cellmorphnet.vision import colour
from cellmorphnet.vision.cellfinder import Nucleus, cell_box, padded_crop
from cellmorphnet.vision.imaging import IMAGE_SUFFIXES, centre_square, load_rgb

# The set's crop side is an estimate: it comes from the median nucleus, and the white-cell types' nuclei
# differ in size (the PBC test images' types imply crop sides from 0.86 to 1.29 times the right one), so
# a lab whose mix of types is not the training data's gets a side 10 % or more off. With the scale views
# a framed cell is also seen 13 % closer and 15 % farther (with tta, 4 orientations at each side: 12
# passes, where other images get the 8 flips and turns). Off by default: on nine models it gained 0.9
# points on another lab's cells on average, but +0.2 over three seeds of the default recipe (one lost
# 3.5), at half the speed (docs/benchmarks.md, "Scale views").
# An upload is read twice (the set's survey, then its framing): one of at most this many pixels is kept decoded in
# between (a microscope photo: 12 MB at 4 megapixels); a larger one is decoded again rather than held, so a request
# of large canvases holds one at a time (docs/serve.md, "Limits").
KEEP_DECODED_PIXELS = 4_000_000
MAX_KEPT_CROP_SIDE = 768  # a crop of a field's cell is at most this many pixels a side (downscaled)
SCALE_VIEWS = (0.87, 1.0, 1.15)  # multiples of the set's crop side; 1.0 in the middle
DEFAULT_SCALE_VIEWS = False


@dataclass(eq=False)
class Upload:
    """An image received in memory (by the server) rather than read from a file: its name and bytes.

    Everything that classifies files takes these too; they are never written to disk.
    """

    name: str
    data: bytes
    max_pixels: int | None = None  # refuse larger images before decoding them (decompression bombs)
    image: Any = field(default=None, repr=False)  # kept decoded between the survey and the framing, if small
    deadline: float | None = None  # time.monotonic() past which reading it raises TimeLimit (serve's requests)

    def check_deadline(self) -> None:
        """Raise ``TimeLimit`` once the request this upload came with has run out of time: every step that reads
        the upload's pixels asks first, so a request past its limit stops at its next image, freeing its worker."""
        import time

        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeLimit("The request took longer than the server's time limit (--request-timeout).")

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False)
class CellItem:
    """One white cell found in a field (``fields.find_white_cells``): the field it came from and where it lies
    there. Its crop is cut from the field each time it is read, so a folder of fields holds no pixels between
    readings (a field is decoded once more per reading; an upload keeps its decoded field while small), except
    where the crop was kept (``keep_crop``: the cells of a large field, cut from one decoding)."""

    source: Path | Upload
    index: int  # 1, 2, ... in the field's reading order
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the field's pixels
    edge: bool  # cut by the field's border
    diameter: float  # the red-cell diameter used, in the field's pixels
    crop: Any = field(default=None, repr=False)  # the kept crop (PIL), if any

    def keep_crop(self, field_image) -> None:
        """Cut the crop from ``field_image`` (the decoded field) now and keep it."""
        self.crop = self._cut(field_image)

    def _cut(self, field_image):
        """The crop, at most ``MAX_KEPT_CROP_SIDE`` pixels a side: a larger one (red cells over 150 pixels across)
        is downscaled, as the model sees it at 96 pixels anyway. Every cell of a set shares one diameter, so
        all of its crops share one scale."""
        from PIL import Image

        from cellmorphnet.vision import fields

        crop = fields.cell_crop(field_image, fields.FoundCell(self.box, self.edge, 0.0), self.diameter)
        if crop.width > MAX_KEPT_CROP_SIDE:
            crop = crop.resize((MAX_KEPT_CROP_SIDE, MAX_KEPT_CROP_SIDE), Image.LANCZOS)
        return crop

    @property
    def image(self):
        """The cell's crop (``fields.cell_crop``)."""
        return self.crop if self.crop is not None else self._cut(read_image(self.source))

    @property
    def name(self) -> str:
        return f"{getattr(self.source, 'name', self.source)}#{self.index}"

    def __str__(self) -> str:
        return f"{self.source}#{self.index}"


Item = Path | Upload | CellItem  # what the prediction functions classify


def read_image(item: Item):
    """The PIL RGB image of a file or an upload (an upload of up to ``KEEP_DECODED_PIXELS`` is decoded once and
    kept for its second reading), or a found cell's crop."""
    if isinstance(item, CellItem):
        if isinstance(item.source, Upload):
            item.source.check_deadline()
        return item.image
    if isinstance(item, Upload):
        item.check_deadline()
        if not item.data:
            raise InvalidData(f"{item.name}: empty file (0 bytes)")
        if item.image is not None:
            return item.image
        img = load_rgb(io.BytesIO(item.data), item.name, item.max_pixels)
        if img.width * img.height <= KEEP_DECODED_PIXELS:
            item.image = img
        return img
    if item.stat().st_size == 0:
        raise InvalidData(f"{item}: empty file (0 bytes)")
    return load_rgb(item)


def read_error(e: Exception) -> str:
    """Why a file could not be read, in a few words (the per-file ``error`` of a prediction)."""
    if isinstance(e, InvalidData):
        return e.message.split(": ", 1)[-1]
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read ({getattr(e, 'strerror', None) or e})"


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict: given files as they are, folders searched recursively for image suffixes.

    Returns the files and the paths that cannot be read, each with the reason ("does not exist", a link loop,
    a named pipe...): given ones, and those inside a folder with an image's name that are not regular files.
    """
    files, missing = [], []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            named = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
            files += [f for f in named if f.is_file()]
            # an image's name on a named pipe, a socket or a dangling link: listed with the reason, never opened
            missing += [(f, _not_a_file(f)) for f in named if not f.is_file()]
        elif p.is_file():
            files.append(p)
        else:
            missing.append((p, _not_a_file(p)))
    return files, missing


def _not_a_file(p: Path) -> str:
    """Why a path given by the user is neither a folder nor a regular file."""
    import errno
    import os
    import stat

    if not os.path.lexists(p):
        return "does not exist"
    try:
        mode = p.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a link that loops back on itself"
        return "a link to something that does not exist" if p.is_symlink() else f"cannot be read ({e.strerror})"
    if stat.S_ISFIFO(mode):
        return "a named pipe, not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    return "not a regular file (a device?)"


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


def crop_sides(policy: InferencePolicy, scale_views: bool) -> tuple[float, ...]:
    """The crop sides (multiples of the set's) a framed cell is seen at: ``SCALE_VIEWS`` with the scale views
    under the cell policy, else the set's side alone."""
    return SCALE_VIEWS if scale_views and policy.crop == "cell" else (1.0,)


def single_view(arr: np.ndarray) -> np.ndarray:
    """The array at the set's own crop side of a prepared image (HxWx3, or SxHxWx3 for scale views)."""
    return arr[len(arr) // 2] if arr.ndim == 4 else arr
