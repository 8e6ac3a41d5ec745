"""Fetch datasets into the cache: download, or import a file or folder the user already has.

Every path goes through the same verification. The outcome of each fetch is recorded in
``downloads/<dataset>/source.json``, which ``prepare`` and ``status`` read.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import paths
from cellmorphnet._io import file_digest, read_json, tree_digest, write_json
from cellmorphnet.data import registry
from cellmorphnet.data.archive import safe_extract
from cellmorphnet.data.download import ByteProgress, copy_with_md5, download, part_path
from cellmorphnet.errors import ChecksumMismatch, DatasetNotFound, InvalidData

SOURCE_RECORD = "source.json"


@dataclass
class FetchResult:
    """What one fetch did."""

    dataset: str  # registry name
    action: str  # "downloaded", "imported", "already present" or "embedded"
    verified: bool  # whether the content matched the registry's pins
    path: Path | None  # where the data now lies in the cache
    size: int | None = None  # BloodMNIST image size, else None
    details: dict[str, Any] = field(default_factory=dict)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dataset_dir(name: str, home: Path | None = None) -> Path:
    return paths.downloads_dir(home) / name


def read_source_record(name: str, home: Path | None = None) -> dict[str, Any] | None:
    """The fetch record of ``name``, or ``None`` if it was never fetched."""
    p = dataset_dir(name, home) / SOURCE_RECORD
    return read_json(p) if p.exists() else None


def _write_record(name: str, record: dict[str, Any], home: Path | None) -> None:
    write_json(dataset_dir(name, home) / SOURCE_RECORD, record)


def fetch(
    name: str,
    *,
    home: Path | None = None,
    sizes: list[int] | None = None,
    source: Path | None = None,
    allow_unverified: bool = False,
    force: bool = False,
    progress: ByteProgress | None = None,
) -> list[FetchResult]:
    """Fetch or import one dataset. See ``cellmorphnet fetch --help`` for the behaviour."""
    if name.startswith(registry.FOLDER_PREFIX):
        raise DatasetNotFound("A folder dataset needs no fetch.", hint=f"Run: cellmorphnet prepare {name}")
    registry.get_info(name)
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise DatasetNotFound(f"{source} does not exist.", hint="Check the path given to --from.")
    if name == "sample":
        return [FetchResult("sample", "embedded", True, None, details={"note": "ships inside cellmorphnet"})]
    if name == "bloodmnist":
        return _fetch_bloodmnist(home, sizes, source, allow_unverified, force, progress)
    if sizes:
        raise InvalidData(f"--size applies to bloodmnist only; {name} is prepared at any size with prepare --size.")
    if name == "bccd":
        return [_fetch_bccd(home, source, allow_unverified, force, progress)]
    return [_fetch_lisc(home, source, allow_unverified, force, progress)]


# --- BloodMNIST ---------------------------------------------------------------------------------


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


def _fetch_bloodmnist(home, sizes, source, allow_unverified, force, progress) -> list[FetchResult]:
    folder = dataset_dir("bloodmnist", home)
    record = read_source_record("bloodmnist", home) or {"dataset": "bloodmnist", "files": {}}
    if source is not None and source.is_file():
        detected = npz_image_size(source)
        if sizes and sizes != [detected]:
            raise InvalidData(f"{source} holds {detected} px images, not {', '.join(map(str, sizes))} px.")
        sizes = [detected]
    sizes = sizes or [registry.REGISTRY["bloodmnist"].default_size]
    results = []
    for size in sizes:
        url, filename, expected = registry.bloodmnist_file(size)
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
        _write_record("bloodmnist", record, home)
        results.append(FetchResult("bloodmnist", action, verified, dest, size, {"md5": actual}))
    return results


# --- archives (BCCD, LISC) -----------------------------------------------------------------------


def _obtain_archive(name: str, home, source, force, progress) -> tuple[Path, str, bool]:
    """Return ``(zip or folder, origin, is_download)`` for an archive dataset."""
    info = registry.get_info(name)
    if source is not None:
        return source, str(source.resolve()), False
    url, filename = info.extra["url"], info.extra["filename"]
    dest = dataset_dir(name, home) / filename
    if force and dest.exists():
        dest.unlink()
    if not dest.exists():
        hint = (
            f"Download {url} by hand (or from {info.homepage}), then import it with: "
            f"cellmorphnet fetch {name} --from PATH (the zip or the unpacked folder)"
        )
        download(url, dest, progress=progress, manual_hint=hint)
    return dest, url, True


def _unpack(src: Path, target: Path) -> Path:
    """Extract a zip, or copy a folder, into ``target`` (replaced atomically at the end)."""
    if src.is_dir():
        tmp = target.with_name(target.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target
    return safe_extract(src, target)


def _promote(checked: Path, final: Path) -> Path:
    """Move a verified folder into its place in the cache, replacing what was there."""
    shutil.rmtree(final, ignore_errors=True)
    checked.rename(final)
    return final


def _find_dir(root: Path, predicate: Callable[[Path], bool], what: str) -> Path:
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for c in candidates:
        if predicate(c):
            return c
    raise InvalidData(f"Could not find {what} in the given archive or folder.")


def _fetch_bccd(home, source, allow_unverified, force, progress) -> FetchResult:
    info = registry.get_info("bccd")
    folder = dataset_dir("bccd", home)
    record = read_source_record("bccd", home)
    if record and source is None and not force and (folder / "unpacked").exists():
        return FetchResult("bccd", "already present", record["verified"], folder / "unpacked")
    src, origin, downloaded = _obtain_archive("bccd", home, source, force, progress)
    staging = _unpack(src, folder / "staging")
    try:
        bccd = _find_dir(
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
        final = _promote(bccd, folder / "unpacked")
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
    _write_record("bccd", record, home)
    return FetchResult("bccd", "downloaded" if downloaded else "imported", not problems, final, details=record)


def lisc_layout(root: Path) -> dict[str, dict[str, int]]:
    """Check a LISC folder's layout; return per class folder the counts of images and expert masks."""
    info = registry.get_info("lisc")
    main, truth = root / "Main Dataset", root / "Ground Truth Segmentation"
    counts: dict[str, dict[str, int]] = {}
    for class_dir in info.extra["class_dirs"]:
        images = sorted((main / class_dir).glob("*.bmp"))
        masks = sorted((truth / class_dir / "areaforexpert1").glob("*_expert.bmp"))
        if not images:
            raise InvalidData(f"LISC: 'Main Dataset/{class_dir}' is missing or holds no .bmp images.")
        if not masks:
            raise InvalidData(f"LISC: 'Ground Truth Segmentation/{class_dir}/areaforexpert1' holds no masks.")
        counts[class_dir] = {"images": len(images), "masks": len(masks)}
    return counts


def _fetch_lisc(home, source, allow_unverified, force, progress) -> FetchResult:
    folder = dataset_dir("lisc", home)
    record = read_source_record("lisc", home)
    if record and source is None and not force and (folder / "unpacked").exists():
        return FetchResult("lisc", "already present", record["verified"], folder / "unpacked")
    src, origin, downloaded = _obtain_archive("lisc", home, source, force, progress)
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
    staging = _unpack(src, folder / "staging")
    try:
        root = _find_dir(staging, lambda p: (p / "Main Dataset").is_dir(), "'Main Dataset'")
        counts = lisc_layout(root)
        final = _promote(root, folder / "unpacked")
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
    _write_record("lisc", record, home)
    return FetchResult("lisc", "downloaded" if downloaded else "imported", record["verified"], final, details=record)


def partial_download(name: str, home: Path | None = None) -> list[Path]:
    """``.part`` files left by interrupted downloads of ``name``."""
    folder = dataset_dir(name, home)
    return sorted(folder.glob("*.part")) if folder.exists() else []


__all__ = ["FetchResult", "fetch", "read_source_record", "npz_image_size", "lisc_layout", "part_path"]
