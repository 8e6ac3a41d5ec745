"""BCCD: Pascal VOC boxes become square cell crops; splits follow ``ImageSets/Main``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from cellmorphnet._io import tree_digest
from cellmorphnet.data import store
from cellmorphnet.data.archive import find_dir, obtain_archive, promote, unpack
from cellmorphnet.data.registry import register
from cellmorphnet.data.source import (
    Built,
    DatasetInfo,
    FetchResult,
    Source,
    SourceState,
    dataset_dir,
    now_iso,
    read_source_record,
    write_source_record,
)
from cellmorphnet.errors import ChecksumMismatch, DatasetNotFound, InvalidData
from cellmorphnet.vision.imaging import crop_resize, load_rgb, square_box

SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


def _root(home: Path | None) -> tuple[Path, dict]:
    record = read_source_record("bccd", home)
    root = dataset_dir("bccd", home) / "unpacked"
    if record is None or not root.is_dir():
        raise DatasetNotFound(
            "BCCD is not fetched.", hint="Run: cellmorphnet fetch bccd (or add --from ZIP to import one you have)"
        )
    return root, record


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


BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"


@register
class BCCD(Source):
    info = DatasetInfo(
        name="bccd",
        title="BCCD (Blood Cell Count and Detection), cell crops",
        classes=("RBC", "WBC", "Platelets"),
        licence="MIT",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
        citation="Shenggan, BCCD_Dataset (GitHub)",
        default_size=64,
        extra={
            "url": f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.zip",
            "filename": f"BCCD_Dataset-{BCCD_COMMIT}.zip",
            "commit": BCCD_COMMIT,
            # sha256 over the sorted "path sha256" lines of every file under BCCD/ (see _io.tree_digest).
            "content_digest": "5322e21f327b1e15a8208411822d01f522b5267cb82fca3907188b3c765a4560",
            "n_images": 364,
            "n_annotations": 364,
        },
    )

    def fetch(self, home, *, sizes, source, allow_unverified, force, progress) -> list[FetchResult]:
        """Download the pinned commit's zip, or import a zip or folder; verify it by content, not by bytes."""
        self.no_sizes(self.name, sizes)
        info = self.info
        folder = dataset_dir("bccd", home)
        record = read_source_record("bccd", home)
        if record and source is None and not force and (folder / "unpacked").exists():
            return [FetchResult("bccd", "already present", record["verified"], folder / "unpacked")]
        src, origin, downloaded = obtain_archive(info, folder, source, force, progress)
        staging = unpack(src, folder / "staging")
        try:
            bccd = find_dir(
                staging, lambda p: (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir(), "BCCD/Annotations"
            )
            n_images = len(list((bccd / "JPEGImages").glob("*.jpg")))
            n_annotations = len(list((bccd / "Annotations").glob("*.xml")))
            digest, n_files = tree_digest(bccd)
            expected_counts = (info.extra["n_images"], info.extra["n_annotations"])
            problems = []
            if (n_images, n_annotations) != expected_counts:
                problems.append(
                    f"{n_images} images and {n_annotations} annotations, expected {expected_counts[0]} and "
                    f"{expected_counts[1]}"
                )
            if digest != info.extra["content_digest"]:
                problems.append(f"content digest {digest[:16]}…, expected {info.extra['content_digest'][:16]}…")
            if problems and not allow_unverified:
                raise ChecksumMismatch(
                    f"BCCD content does not match commit {info.extra['commit'][:7]}: {'; '.join(problems)}.",
                    hint="Import the archive of the pinned commit, or accept this one with --allow-unverified.",
                )
            final = promote(bccd, folder / "unpacked")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        record = {
            "dataset": "bccd",
            "verified": not problems,
            "content_digest": digest,
            "expected_content_digest": info.extra["content_digest"],
            "counts": {"images": n_images, "annotations": n_annotations, "files": n_files},
            "origin": origin,
            "fetched": now_iso(),
        }
        write_source_record("bccd", record, home)
        return [FetchResult("bccd", "downloaded" if downloaded else "imported", not problems, final, details=record)]

    def source_state(self, name: str, *, home: Path | None, size: int) -> SourceState:
        _, record = _root(home)
        return SourceState(f"tree-sha256:{record['content_digest']}", record["verified"], record["origin"])

    def build(self, name: str, *, home: Path | None, size: int, seed: int, progress=None, margin: float = 0.0) -> Built:
        root, _ = _root(home)
        classes = list(BCCD.info.classes)
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
