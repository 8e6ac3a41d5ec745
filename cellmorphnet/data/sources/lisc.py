"""LISC: each white cell is cropped around its expert mask; seeded stratified splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from cellmorphnet._io import file_digest, tree_digest
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


def _root(home: Path | None) -> tuple[Path, dict]:
    record = read_source_record("lisc", home)
    root = dataset_dir("lisc", home) / "unpacked"
    if record is None or not root.is_dir():
        info = LISC.info
        raise DatasetNotFound(
            "LISC is not fetched.",
            hint=f"Download 'LISC Database.zip' from {info.homepage}, then: cellmorphnet fetch lisc --from ZIP",
        )
    return root, record


def mask_box(mask_path: Path) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` of the non-background pixels of an expert mask, or ``None`` if empty."""
    arr = np.asarray(load_rgb(mask_path).convert("L"))
    ys, xs = np.nonzero(arr > 0)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def lisc_layout(root: Path) -> dict[str, dict[str, int]]:
    """Check a LISC folder's layout; return per class folder the counts of images and expert masks."""
    main, truth = root / "Main Dataset", root / "Ground Truth Segmentation"
    counts: dict[str, dict[str, int]] = {}
    for class_dir in LISC.info.extra["class_dirs"]:
        images = sorted((main / class_dir).glob("*.bmp"))
        masks = sorted((truth / class_dir / "areaforexpert1").glob("*_expert.bmp"))
        if not images:
            raise InvalidData(f"LISC: 'Main Dataset/{class_dir}' is missing or holds no .bmp images.")
        if not masks:
            raise InvalidData(f"LISC: 'Ground Truth Segmentation/{class_dir}/areaforexpert1' holds no masks.")
        counts[class_dir] = {"images": len(images), "masks": len(masks)}
    return counts


@register
class LISC(Source):
    info = DatasetInfo(
        name="lisc",
        title="LISC (Leukocyte Images for Segmentation and Classification), leukocyte crops",
        classes=("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"),
        licence="research use; see the LISC homepage",
        homepage="http://users.cecs.anu.edu.au/~hrezatofighi/Data/Leukocyte%20Data.htm",
        citation="Rezatofighi & Soltanian-Zadeh, Comput. Med. Imaging Graph. 35 (2011)",
        default_size=64,
        extra={
            "url": "http://users.cecs.anu.edu.au/~hrezatofighi/Data/LISC%20Database.zip",
            "filename": "LISC Database.zip",
            # folder name in the archive -> class name; "mixt" is excluded unless asked for.
            "class_dirs": {"Baso": "basophil", "eosi": "eosinophil", "lymp": "lymphocyte", "mono": "monocyte",
                           "neut": "neutrophil", "mixt": "mixt"},
        },
    )  # fmt: skip

    def fetch(self, home, *, sizes, source, allow_unverified, force, progress) -> list[FetchResult]:
        """Download or import the archive; LISC has no official checksum, so its sha256 is trusted on first use."""
        self.no_sizes(self.name, sizes)
        folder = dataset_dir("lisc", home)
        record = read_source_record("lisc", home)
        if record and source is None and not force and (folder / "unpacked").exists():
            return [FetchResult("lisc", "already present", record["verified"], folder / "unpacked")]
        src, origin, downloaded = obtain_archive(self.info, folder, source, force, progress)
        # LISC has no official checksum: record the archive's sha256 on first use, and refuse a
        # different archive later unless told otherwise (trust on first use).
        if src.is_file():
            sha256 = file_digest(src)
        else:
            sha256 = "tree:" + tree_digest(src)[0]
        first_seen = (record or {}).get("first_sha256", sha256)
        if first_seen != sha256 and not allow_unverified:
            raise ChecksumMismatch(
                f"This LISC archive has sha256 {sha256[:16]}…, but the one first imported had {first_seen[:16]}….",
                hint="Import the same archive, or accept this one with --allow-unverified.",
            )
        staging = unpack(src, folder / "staging")
        try:
            root = find_dir(staging, lambda p: (p / "Main Dataset").is_dir(), "'Main Dataset'")
            counts = lisc_layout(root)
            final = promote(root, folder / "unpacked")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        record = {
            "dataset": "lisc",
            "verified": first_seen == sha256,
            "sha256": sha256,
            "first_sha256": first_seen,
            "counts": counts,
            "origin": origin,
            "fetched": now_iso(),
        }
        write_source_record("lisc", record, home)
        return [FetchResult("lisc", "downloaded" if downloaded else "imported", record["verified"], final,
                            details=record)]  # fmt: skip

    def source_state(self, name: str, *, home: Path | None, size: int) -> SourceState:
        _, record = _root(home)
        return SourceState(f"sha256:{record['sha256']}", record["verified"], record["origin"])

    def build(
        self,
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
        class_dirs = dict(self.info.extra["class_dirs"])
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
