"""From images to cells: each field becomes one item per white cell found in it (``fields``), before the set
is prepared and classified as single-cell images are.

Per image: a single-cell crop (today's path, unchanged) or a field (``fields.is_field``: ``--cells auto``
decides by size; ``one`` and ``all`` override). The fields of one set share one scale, the median of their
red cells' diameters, as the fields of one microscope do. Fields are decoded twice (the scale, then the
cells), one at a time per worker. A field of up to ``images.KEEP_DECODED_PIXELS`` is decoded again each time a
found cell is read (cheap, and no pixels are held between); a larger one has its cells cut from that second
decoding and kept (at most ``images.MAX_KEPT_CROP_SIDE`` pixels a side), so its cost does not grow with cells x
pixels. A field refused by ``fields.find_white_cells``'s budget (too many cells) is reported, never searched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.images import KEEP_DECODED_PIXELS, CellItem, Item, Upload, read_image
from cellmorphnet.runtime.distributed import SINGLE, Group
from cellmorphnet.vision import fields

CELL_MODES = ("auto", "one", "all")


@dataclass(frozen=True)
class ImageInfo:
    """How one image was taken: a crop (one cell) or a field (``cells`` found at ``diameter`` px per red cell)."""

    kind: str  # "crop" or "field"
    cells: int = 1
    diameter: float | None = None  # the red-cell diameter used (its own, or the lab's), in the image's pixels
    own_diameter: float | None = None  # measured on this image alone
    note: str | None = None  # why a field was taken as one cell instead
    size: tuple[int, int] | None = None  # width and height of a field

    @property
    def microns_per_pixel(self) -> float | None:
        return fields.RBC_DIAMETER_UM / self.diameter if self.diameter else None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "cells": self.cells,
                "rbc_diameter_px": None if self.diameter is None else round(self.diameter, 1),
                "own_rbc_diameter_px": None if self.own_diameter is None else round(self.own_diameter, 1),
                "microns_per_pixel": None if self.microns_per_pixel is None else round(self.microns_per_pixel, 4),
                "note": self.note}  # fmt: skip


def _size(item: Item) -> tuple[int, int] | None:
    """Width and height from the header, or None where it cannot be read (its own error comes later)."""
    import io

    from cellmorphnet.vision.imaging import image_size

    try:
        return image_size(io.BytesIO(item.data) if isinstance(item, Upload) else item, str(item))
    except InvalidData:
        return None  # an unreadable file is reported by the normal path


def _diameter(item: Item) -> float | None:
    """The red-cell diameter measured on one field."""
    try:
        img = read_image(item)
    except (InvalidData, OSError):
        return None  # reported by the normal path
    return fields.rbc_diameter(img)


def _cells(item: Item, diameter: float, max_cells: int) -> list[CellItem]:
    img = read_image(item)
    found = fields.find_white_cells(img, diameter, max_cells)
    cells = [CellItem(item, i, c.box, c.edge, diameter) for i, c in enumerate(found, 1)]
    if img.width * img.height > KEEP_DECODED_PIXELS:  # cut once, here, rather than decode the field per cell
        for c in cells:
            c.keep_crop(img)
    return cells


def find_cells(items: list[Item], mode: str = "auto", workers: int = 2, group: Group = SINGLE, *,
               max_cells: int = fields.DEFAULT_MAX_CELLS,
               diameter: float | None = None) -> tuple[list[Item], dict[Item, ImageInfo], dict[Item, str]]:
    """Every item as it will be classified: crops as they are, each field replaced by its cells (a field with
    none drops out); per original item, how it was taken; and the fields refused, with the reason (too large, or
    more than ``max_cells`` cells).

    In a distributed job each rank reads its block of the files and every rank gets the whole answer, the
    set's one scale included (``distributed.Group.map``).

    Each field is read at its own red cells' diameter, so its cells do not depend on what else was sent with it;
    ``diameter`` (a lab profile's) replaces every field's own where given."""
    if mode not in CELL_MODES:
        raise InvalidData(f"--cells must be one of {', '.join(CELL_MODES)}, not '{mode}'.")
    if mode == "one":
        return list(items), {i: ImageInfo("crop") for i in items}, {}
    sizes = dict(zip(items, group.map(_size, items, workers), strict=True))
    candidates = [i for i in items if sizes[i] is not None and fields.is_field(sizes[i], mode)]
    refused = {i: (f"too large to search as a field ({sizes[i][0]}x{sizes[i][1]}; the limit is "
                   f"{fields.MAX_FIELD_PIXELS / 1e6:g} megapixels: cut it into tiles)")
               for i in candidates if sizes[i][0] * sizes[i][1] > fields.MAX_FIELD_PIXELS}  # fmt: skip
    candidates = [i for i in candidates if i not in refused]  # refused from the header, never decoded
    measured = dict(zip(candidates, group.map(_diameter, candidates, workers), strict=True))
    scale = {i: diameter or measured[i] for i in candidates}
    searched = [i for i in candidates if scale[i]]
    found = dict(zip(searched, group.map(lambda i: _safe_cells(i, scale[i], max_cells), searched, workers),
                     strict=True))  # fmt: skip
    refused.update({i: f"not searched: {why}" for i, why in found.items() if isinstance(why, str)})
    found = {i: cells for i, cells in found.items() if not isinstance(cells, str)}
    out: list[Item] = []
    info: dict[Item, ImageInfo] = {}
    for item in items:
        if item in refused:
            continue
        cells = found.get(item)
        if cells is not None:
            info[item] = ImageInfo("field", len(cells), scale[item], measured.get(item), size=sizes[item])
            out.extend(cells)
        else:  # a crop; or a field without red cells to measure (or unreadable: its error comes later)
            note = "no red cells to measure the scale: taken as one cell" if item in candidates else None
            info[item] = ImageInfo("crop", note=note)
            out.append(item)
    return out, info, refused


def _safe_cells(item: Item, diameter: float, max_cells: int) -> list[CellItem] | str | None:
    """The field's cells; why it is refused (over the budget); or None where it cannot be read."""
    try:
        return _cells(item, diameter, max_cells)
    except fields.TooManyCells as e:
        return str(e)
    except (InvalidData, OSError):
        return None  # the normal path reports why


def source_of(item: Item) -> Path | Upload:
    """The file or upload an item came from (a found cell's field)."""
    return item.source if isinstance(item, CellItem) else item
