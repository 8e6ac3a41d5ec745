"""Your own images in class sub-folders: ``folder:PATH`` with ``PATH/<class>/*.jpg`` and so on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cellmorphnet.data import store
from cellmorphnet.data.registry import FOLDER_PREFIX, register
from cellmorphnet.data.source import Built, DatasetInfo, Source, SourceState
from cellmorphnet.errors import DatasetNotFound, InvalidData
from cellmorphnet.vision.imaging import IMAGE_SUFFIXES, centre_square, crop_resize, load_rgb


def folder_path(name: str) -> Path:
    path = Path(name[len(FOLDER_PREFIX) :]).expanduser()
    if not path.is_dir():
        raise DatasetNotFound(f"{path} is not a folder.", hint="Use folder:PATH with one sub-folder per class.")
    return path


def list_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and every image file below each, recursively."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InvalidData(f"{root} has no class sub-folders.", hint="Put the images of each class in PATH/<class>/.")
    items = []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        items.extend((p, i) for p in files)
    return classes, items


@register
class Folder(Source):
    """``folder:PATH``: class sub-folders of the user's own images, split with a seeded stratified split."""

    info = DatasetInfo(
        name="folder",
        title="image folder",
        classes=(),
        licence="yours",
        homepage="",
        citation="",
        default_size=64,
    )

    def source_state(self, name: str, *, home: Path | None, size: int) -> SourceState:
        root = folder_path(name)
        _, items = list_images(root)
        # A fingerprint of names, sizes and modification times: cheap, and changes when any file does.
        h = hashlib.sha256()
        for p, label in items:
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return SourceState(f"files:{h.hexdigest()}", verified=False, origin=str(root.resolve()))


    def build(
        self, name: str, *, home: Path | None, size: int, seed: int, progress=None, crop_fraction: float = 1.0
    ) -> Built:
        root = folder_path(name)
        classes, items = list_images(root)
        images, labels, warnings = [], [], []
        for i, (path, label) in enumerate(items):
            try:
                img = load_rgb(path)
            except InvalidData as e:
                warnings.append(f"unreadable, skipped: {e.message}")
            else:
                images.append(crop_resize(img, centre_square(*img.size, crop_fraction), size))
                labels.append(label)
            if progress:
                progress(i + 1, len(items))
        if not images:
            raise InvalidData(f"{root}: none of the {len(items)} image files could be read.")
        arr, label_arr = np.stack(images), np.asarray(labels, dtype=np.int64)
        parts = store.stratified_split(label_arr, seed)
        return Built(
            splits={s: store.Split(arr[idx], label_arr[idx]) for s, idx in parts.items()},
            classes=classes,
            preprocessing={
                "source": "image folder",
                "crop": "centred square",
                "centre_crop_fraction": crop_fraction,
                "resize": "bicubic",
            },
            split_policy=f"seeded stratified 70/10/20 (seed {seed})",
            warnings=warnings,
            extra={"unreadable_files": len(warnings)},
        )
