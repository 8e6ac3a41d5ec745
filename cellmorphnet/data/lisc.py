"""LISC: each white cell is cropped around its expert mask; seeded stratified splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellmorphnet.data import registry, store
from cellmorphnet.data.fetch import dataset_dir, read_source_record
from cellmorphnet.data.prepare import Built, SourceState
from cellmorphnet.errors import DatasetNotFound, InvalidData
from cellmorphnet.imaging import crop_resize, load_rgb, square_box


def _root(home: Path | None) -> tuple[Path, dict]:
    record = read_source_record("lisc", home)
    root = dataset_dir("lisc", home) / "unpacked"
    if record is None or not root.is_dir():
        info = registry.get_info("lisc")
        raise DatasetNotFound(
            "LISC is not fetched.",
            hint=f"Download 'LISC Database.zip' from {info.homepage}, then: cellmorphnet fetch lisc --from ZIP",
        )
    return root, record


def source_state(name: str, *, home: Path | None, size: int) -> SourceState:
    _, record = _root(home)
    return SourceState(f"sha256:{record['sha256']}", record["verified"], record["origin"])


def mask_box(mask_path: Path) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` of the non-background pixels of an expert mask, or ``None`` if empty."""
    arr = np.asarray(load_rgb(mask_path).convert("L"))
    ys, xs = np.nonzero(arr > 0)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def build(
    name: str,
    *,
    home: Path | None,
    size: int,
    seed: int,
    progress=None,
    include_mixt: bool = False,
    margin: float = 0.15,
) -> Built:
    root, _ = _root(home)
    class_dirs = dict(registry.get_info("lisc").extra["class_dirs"])
    if not include_mixt:
        class_dirs.pop("mixt")
    classes = sorted(set(class_dirs.values()))
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for d, cls in class_dirs.items():
        for img_path in sorted((root / "Main Dataset" / d).glob("*.bmp")):
            mask = root / "Ground Truth Segmentation" / d / "areaforexpert1" / f"{img_path.stem}_expert.bmp"
            items.append((img_path, mask, index[cls]))
    crops, labels, warnings = [], [], []
    for i, (img_path, mask, label) in enumerate(items):
        rel = img_path.relative_to(root).as_posix()
        if not mask.exists():
            warnings.append(f"{rel}: no expert mask, skipped")
            continue
        try:
            box = mask_box(mask)
            img = load_rgb(img_path)
        except InvalidData as e:
            warnings.append(f"{rel}: {e.message}, skipped")
            continue
        if box is None:
            warnings.append(f"{rel}: empty expert mask, skipped")
            continue
        crops.append(crop_resize(img, square_box(box, *img.size, margin=margin), size))
        labels.append(label)
        if progress:
            progress(i + 1, len(items))
    if not crops:
        raise InvalidData("LISC: no image with a usable expert mask was found.")
    images, label_arr = np.stack(crops), np.asarray(labels, dtype=np.int64)
    parts = store.stratified_split(label_arr, seed)
    splits = {s: store.Split(images[idx], label_arr[idx]) for s, idx in parts.items()}
    return Built(
        splits=splits,
        classes=classes,
        preprocessing={
            "source": "LISC Main Dataset + areaforexpert1 masks",
            "crop": "bounding box of the expert mask, grown by the margin to a square inside the image",
            "margin": margin,
            "resize": "bicubic",
        },
        split_policy=f"seeded stratified 70/10/20 (seed {seed})",
        warnings=warnings,
    )
