"""BCCD: Pascal VOC boxes become square cell crops; splits follow ``ImageSets/Main``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from cellmorphnet.data import registry, store
from cellmorphnet.data.fetch import dataset_dir, read_source_record
from cellmorphnet.data.prepare import Built, SourceState
from cellmorphnet.errors import DatasetNotFound, InvalidData
from cellmorphnet.imaging import crop_resize, load_rgb, square_box

SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


def _root(home: Path | None) -> tuple[Path, dict]:
    record = read_source_record("bccd", home)
    root = dataset_dir("bccd", home) / "unpacked"
    if record is None or not root.is_dir():
        raise DatasetNotFound(
            "BCCD is not fetched.", hint="Run: cellmorphnet fetch bccd (or add --from ZIP to import one you have)"
        )
    return root, record


def source_state(name: str, *, home: Path | None, size: int) -> SourceState:
    _, record = _root(home)
    return SourceState(f"tree-sha256:{record['content_digest']}", record["verified"], record["origin"])


def parse_annotation(path: Path) -> tuple[int, int, list[tuple[str, float, float, float, float]]]:
    """Parse one VOC XML safely; return (width, height, [(name, xmin, ymin, xmax, ymax)])."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, DefusedXmlException) as e:
        raise InvalidData(f"{path.name}: unreadable annotation ({e}).") from None
    size = root.find("size")
    width = int(float(size.findtext("width", "0"))) if size is not None else 0
    height = int(float(size.findtext("height", "0"))) if size is not None else 0
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            coords = [float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            continue
        objects.append(((obj.findtext("name") or "").strip(), *coords))
    return width, height, objects


def _split_of(root: Path) -> dict[str, str]:
    main = root / "ImageSets" / "Main"
    split_of: dict[str, str] = {}
    for split, fname in SPLIT_FILES.items():
        p = main / fname
        if not p.exists():
            raise InvalidData(f"BCCD: ImageSets/Main/{fname} is missing.")
        for line in p.read_text().split():
            split_of.setdefault(line.strip(), split)
    return split_of


def build(name: str, *, home: Path | None, size: int, seed: int, progress=None, margin: float = 0.0) -> Built:
    root, _ = _root(home)
    classes = list(registry.get_info("bccd").classes)
    index = {c: i for i, c in enumerate(classes)}
    split_of = _split_of(root)
    crops: dict[str, list[np.ndarray]] = {s: [] for s in store.SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in store.SPLITS}
    skipped_zero, skipped_unknown, not_in_split = [], [], []
    annotations = sorted((root / "Annotations").glob("*.xml"))
    for i, xml in enumerate(annotations):
        stem = xml.stem
        split = split_of.get(stem)
        if split is None:
            not_in_split.append(stem)
            continue
        _, _, objects = parse_annotation(xml)
        img = load_rgb(root / "JPEGImages" / f"{stem}.jpg")
        w, h = img.size
        for cls, x0, y0, x1, y1 in objects:
            if cls not in index:
                skipped_unknown.append(f"{stem}:{cls}")
                continue
            # Clamp to the image; VOC boxes here are [xmin, xmax) in pixels.
            x0, x1 = max(0.0, min(x0, w)), max(0.0, min(x1, w))
            y0, y1 = max(0.0, min(y0, h)), max(0.0, min(y1, h))
            if not (x1 - x0 > 0 and y1 - y0 > 0):
                skipped_zero.append(f"{stem} ({cls})")
                continue
            crops[split].append(crop_resize(img, square_box((x0, y0, x1, y1), w, h, margin), size))
            labels[split].append(index[cls])
        if progress:
            progress(i + 1, len(annotations))
    warnings = []
    if skipped_zero:
        warnings.append(f"skipped {len(skipped_zero)} zero-size box(es): {', '.join(skipped_zero)}")
    if skipped_unknown:
        warnings.append(f"skipped {len(skipped_unknown)} box(es) with an unknown class")
    if not_in_split:
        warnings.append(f"{len(not_in_split)} image(s) are in no ImageSets/Main split and were left out")
    splits = {
        s: store.Split(
            np.stack(crops[s]) if crops[s] else np.zeros((0, size, size, 3), np.uint8),
            np.asarray(labels[s], dtype=np.int64),
        )
        for s in store.SPLITS
    }
    return Built(
        splits=splits,
        classes=classes,
        preprocessing={
            "source": "BCCD VOC boxes",
            "crop": "box clamped to the image, grown to a square around its centre and shifted inside the image",
            "margin": margin,
            "resize": "bicubic",
        },
        split_policy="ImageSets/Main train/val/test: all crops of one source image stay in one split",
        warnings=warnings,
        extra={"skipped_boxes": len(skipped_zero)},
    )
