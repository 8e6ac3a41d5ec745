"""BloodMNIST: validate a MedMNIST npz and store its arrays."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cellmorphnet.data import registry, store
from cellmorphnet.data.fetch import dataset_dir, read_source_record
from cellmorphnet.data.prepare import Built, SourceState
from cellmorphnet.errors import DatasetNotFound, InvalidData


def default_size(home: Path | None = None) -> int:
    """The smallest fetched size, else 28."""
    record = read_source_record("bloodmnist", home) or {"files": {}}
    sizes = sorted(int(s) for s in record["files"])
    return sizes[0] if sizes else registry.REGISTRY["bloodmnist"].default_size


def _entry(home: Path | None, size: int) -> dict:
    record = read_source_record("bloodmnist", home) or {"files": {}}
    entry = record["files"].get(str(size))
    if entry is None or not (dataset_dir("bloodmnist", home) / entry["file"]).exists():
        raise DatasetNotFound(
            f"BloodMNIST at {size} px is not fetched.",
            hint=f"Run: cellmorphnet fetch bloodmnist --size {size} (or add --from FILE to import one you have)",
        )
    return entry


def source_state(name: str, *, home: Path | None, size: int) -> SourceState:
    entry = _entry(home, size)
    return SourceState(checksum=f"md5:{entry['md5']}", verified=entry["verified"], origin=entry["origin"])


def validate_npz(path: Path, size: int, n_classes: int) -> dict[str, store.Split]:
    """Load and check a MedMNIST npz: keys, shapes, dtypes and label range. Raise ``InvalidData`` naming the fault."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InvalidData(f"{path.name} is not a readable npz file ({e}).") from None
    with data:
        missing = [f"{s}_{k}" for s in store.SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data.files]
        if missing:
            raise InvalidData(f"{path.name} lacks the arrays {', '.join(missing)}.")
        out = {}
        for s in store.SPLITS:
            try:
                images, labels = data[f"{s}_images"], data[f"{s}_labels"]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
                raise InvalidData(f"{path.name}: the {s} arrays cannot be read; the file is damaged ({e}).") from None
            if images.dtype != np.uint8:
                raise InvalidData(f"{path.name}: {s}_images has dtype {images.dtype}, expected uint8.")
            if images.ndim != 4 or images.shape[1:] != (size, size, 3):
                raise InvalidData(f"{path.name}: {s}_images has shape {images.shape}, expected (N, {size}, {size}, 3).")
            labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
            if labels.ndim != 1 or len(labels) != len(images):
                raise InvalidData(
                    f"{path.name}: {s}_labels has shape {data[f'{s}_labels'].shape}, expected ({len(images)}, 1)."
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise InvalidData(f"{path.name}: {s}_labels has dtype {labels.dtype}, expected integers.")
            if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
                raise InvalidData(
                    f"{path.name}: {s}_labels range from {labels.min()} to {labels.max()}, "
                    f"expected 0 to {n_classes - 1}."
                )
            out[s] = store.Split(images, labels.astype(np.int64))
    return out


def build(name: str, *, home: Path | None, size: int, seed: int, progress=None) -> Built:
    entry = _entry(home, size)
    classes = list(registry.BLOODMNIST_SHORT_NAMES)
    splits = validate_npz(dataset_dir("bloodmnist", home) / entry["file"], size, len(classes))
    info = registry.medmnist_info()
    return Built(
        splits=splits,
        classes=classes,
        preprocessing={
            "source": "MedMNIST npz",
            "crop": "centre 200x200 of the ~360x363 PBC image",
            "centre_crop_px": 200,
            "centre_crop_fraction": 200 / 360,
            "resize": "bicubic",
        },
        split_policy="official MedMNIST split from the npz",
        extra={"class_descriptions": [info["label"][str(i)] for i in range(len(classes))]},
    )
