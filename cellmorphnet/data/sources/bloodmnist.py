"""BloodMNIST (MedMNIST v2 / MedMNIST+): download or import a MedMNIST npz per size, validate it, store its arrays.

Its URLs, file names, MD5s and labels are read from the ``medmnist`` package's ``INFO`` (never copied here).
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.data import store
from cellmorphnet.data.download import copy_with_md5, download
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

MEDMNIST_SIZES = (28, 64, 128, 224)

# Short class names in MedMNIST's label order. INFO's long names ("immature granulocytes(myelocytes,
# ...)") are kept in the manifest as descriptions.
SHORT_NAMES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


@lru_cache(maxsize=1)
def medmnist_info() -> dict[str, Any]:
    """BloodMNIST's entry of ``medmnist.INFO``.

    ``import medmnist`` runs its ``__init__``, which imports torch and its dataset classes (seconds).
    ``medmnist/info.py`` itself needs only the standard library, so it is loaded on its own.
    """
    import importlib.util

    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound("The medmnist package is not installed.", hint="pip install medmnist")
    info_path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_cellmorphnet_medmnist_info", info_path)
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO["bloodmnist"]


def bloodmnist_file(size: int) -> tuple[str, str, str]:
    """Return ``(url, file name, md5)`` of BloodMNIST at ``size``, from ``medmnist.INFO``."""
    if size not in MEDMNIST_SIZES:
        raise DatasetNotFound(
            f"BloodMNIST has no size {size}.", hint=f"Use one of {', '.join(map(str, MEDMNIST_SIZES))}."
        )
    info = medmnist_info()
    suffix = "" if size == 28 else f"_{size}"
    url = info[f"url{suffix}"]
    md5 = info[f"MD5{suffix}"]
    filename = url.split("/")[-1].split("?")[0]
    return url, filename, md5


def npz_image_size(path: Path) -> int:
    """Read the image size of a MedMNIST npz from the ``train_images`` header, without loading it."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("train_images.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(f)  # the header only; the array stays on disk
    except KeyError:
        raise InvalidData(f"{path} has no 'train_images' array; it is not a MedMNIST npz.") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise InvalidData(f"{path} is not a readable npz file ({e}).") from None
    if len(shape) != 4 or shape[1] != shape[2]:
        raise InvalidData(f"{path}: train_images has shape {shape}, expected (N, S, S, 3).")
    return int(shape[1])


@register
class BloodMNIST(Source):
    info = DatasetInfo(
        name="bloodmnist",
        title="BloodMNIST (MedMNIST v2 / MedMNIST+)",
        classes=SHORT_NAMES,
        licence="CC BY 4.0",
        homepage="https://medmnist.com/",
        citation="Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023); Acevedo et al., Data in Brief 30 (2020)",
        default_size=28,
    )

    def fetch(self, home, *, sizes, source, allow_unverified, force, progress) -> list[FetchResult]:
        folder = dataset_dir("bloodmnist", home)
        record = read_source_record(self.name, home) or {"dataset": "bloodmnist", "files": {}}
        if source is not None and source.is_file():
            detected = npz_image_size(source)
            if sizes and sizes != [detected]:
                raise InvalidData(f"{source} holds {detected} px images, not {', '.join(map(str, sizes))} px.")
            sizes = [detected]
        sizes = sizes or [self.info.default_size]
        results = []
        for size in sizes:
            url, filename, expected = bloodmnist_file(size)
            dest = folder / filename
            known = record["files"].get(str(size))
            if dest.exists() and known and not force:
                results.append(FetchResult("bloodmnist", "already present", known["verified"], dest, size))
                continue
            if source is None:
                hint = (
                    f"Download {url} by hand (for example in a browser), then import it with: "
                    f"cellmorphnet fetch bloodmnist --size {size} --from PATH"
                )
                download(url, dest, md5=expected, progress=progress, manual_hint=hint)
                actual, origin, action = expected, url, "downloaded"
            else:
                src = source / filename if source.is_dir() else source
                if not src.is_file():
                    raise DatasetNotFound(f"{source} holds no {filename}.", hint="Point --from at the npz file itself.")
                tmp = folder / (filename + ".import")
                actual = copy_with_md5(src, tmp)
                if actual != expected and not allow_unverified:
                    tmp.unlink()
                    raise ChecksumMismatch(
                        f"{src} has MD5 {actual}, but the official {filename} has MD5 {expected}.",
                        hint="If you trust this file, import it with --allow-unverified; it will be marked unverified.",
                    )
                tmp.replace(dest)
                origin, action = str(src.resolve()), "imported"
            verified = actual == expected
            record["files"][str(size)] = {
                "file": filename,
                "md5": actual,
                "expected_md5": expected,
                "verified": verified,
                "origin": origin,
                "fetched": now_iso(),
            }
            write_source_record(self.name, record, home)
            results.append(FetchResult("bloodmnist", action, verified, dest, size, {"md5": actual}))
        return results

    def default_size(self, home: Path | None) -> int:
        """The smallest fetched size, else 28."""
        record = read_source_record(self.name, home) or {"files": {}}
        sizes = sorted(int(s) for s in record["files"])
        return sizes[0] if sizes else self.info.default_size

    def cache_entry(self, home: Path | None) -> dict[str, Any]:
        files = (read_source_record(self.name, home) or {}).get("files", {})
        return {
            "fetched": bool(files),
            "fetched_sizes": {s: {"verified": f["verified"], "md5": f["md5"]} for s, f in sorted(files.items())},
            "verified": bool(files) and all(f["verified"] for f in files.values()),
        }

    def source_state(self, name: str, *, home: Path | None, size: int) -> SourceState:
        entry = _entry(home, size)
        return SourceState(checksum=f"md5:{entry['md5']}", verified=entry["verified"], origin=entry["origin"])

    def build(self, name: str, *, home: Path | None, size: int, seed: int, progress=None) -> Built:
        entry = _entry(home, size)
        classes = list(SHORT_NAMES)
        splits = validate_npz(dataset_dir(self.name, home) / entry["file"], size, len(classes))
        info = medmnist_info()
        return Built(
            splits=splits,
            classes=classes,
            preprocessing=PBC_PREPROCESSING | {"source": "MedMNIST npz"},
            split_policy="official MedMNIST split from the npz",
            extra={"class_descriptions": [info["label"][str(i)] for i in range(len(classes))]},
        )


# How MedMNIST made BloodMNIST from PBC's ~360x363 images (also the embedded sample's geometry).
PBC_PREPROCESSING = {
    "crop": "centre 200x200 of the ~360x363 PBC image",
    "centre_crop_px": 200,
    "centre_crop_fraction": 200 / 360,
    "resize": "bicubic",
}


def _entry(home: Path | None, size: int) -> dict:
    record = read_source_record("bloodmnist", home) or {"files": {}}
    entry = record["files"].get(str(size))
    if entry is None or not (dataset_dir("bloodmnist", home) / entry["file"]).exists():
        raise DatasetNotFound(
            f"BloodMNIST at {size} px is not fetched.",
            hint=f"Run: cellmorphnet fetch bloodmnist --size {size} (or add --from FILE to import one you have)",
        )
    return entry


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
