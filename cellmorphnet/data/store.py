"""The prepared store: compact uint8 arrays per split plus a ``manifest.json``.

Layout: ``prepared/<dataset>/<size>/{train,val,test}_{images,labels}.npy`` and ``manifest.json``.
Arrays are plain ``.npy`` so training can memory-map them; no image is decoded again after prepare.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import __version__, paths
from cellmorphnet._io import read_json, write_json
from cellmorphnet.errors import DatasetNotFound, InvalidData

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64, indices into the manifest's classes


def prepared_path(name: str, size: int, home: Path | None = None) -> Path:
    return paths.prepared_dir(home) / safe_name(name) / str(size)


def safe_name(name: str) -> str:
    """The folder name of a dataset; ``folder:PATH`` datasets get a readable, unique slug."""
    if ":" not in name:
        return name
    import hashlib

    path = name.split(":", 1)[1]
    resolved = str(Path(path).expanduser().resolve())
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(resolved).name)[:40] or "root"
    return f"folder-{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels.astype(np.int64), minlength=n_classes).tolist()


def content_digest(splits: dict[str, Split]) -> str:
    """sha256 over every split's images and labels, in a fixed order: what a run records it trained on."""
    import hashlib

    h = hashlib.sha256()
    for s in sorted(splits):
        for a in (np.ascontiguousarray(splits[s].images, dtype=np.uint8), np.asarray(splits[s].labels, np.int64)):
            h.update(f"{s}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def write_prepared(target: Path, splits: dict[str, Split], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write arrays and manifest into ``target`` atomically (a temporary folder renamed into place)."""
    n_classes = len(manifest["classes"])
    manifest = {
        "format": FORMAT_VERSION,
        **manifest,
        "content_digest": content_digest(splits),
        "counts": {
            s: {"total": int(len(sp.labels)), "per_class": class_counts(sp.labels, n_classes)}
            for s, sp in splits.items()
        },
        "cellmorphnet_version": __version__,
    }
    tmp = target.with_name(target.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for s, sp in splits.items():
            np.save(tmp / f"{s}_images.npy", np.ascontiguousarray(sp.images, dtype=np.uint8))
            np.save(tmp / f"{s}_labels.npy", np.asarray(sp.labels, dtype=np.int64))
        write_json(tmp / MANIFEST, manifest)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(target: Path) -> dict[str, Any] | None:
    p = target / MANIFEST
    if not p.exists():
        return None
    try:
        return read_json(p)
    except ValueError:
        return None


def load_split(name: str, size: int, split: str, home: Path | None = None, mmap: bool = True) -> Split:
    """Load one split of a prepared dataset (memory-mapped by default)."""
    target = prepared_path(name, size, home)
    if read_manifest(target) is None:
        raise DatasetNotFound(
            f"{name} is not prepared at {size} px.", hint=f"Run: cellmorphnet prepare {name} --size {size}"
        )
    mode = "r" if mmap else None
    try:
        images = np.load(target / f"{split}_images.npy", mmap_mode=mode)
        labels = np.load(target / f"{split}_labels.npy", mmap_mode=mode)
    except (OSError, ValueError) as e:
        raise InvalidData(
            f"Prepared {name} ({size} px) is damaged: {e}", hint=f"Run: cellmorphnet prepare {name} --force"
        ) from None
    return Split(images, labels)


def prepared_sizes(name: str, home: Path | None = None) -> dict[int, dict[str, Any]]:
    """Manifests of every size at which ``name`` is prepared."""
    root = paths.prepared_dir(home) / safe_name(name)
    out: dict[int, dict[str, Any]] = {}
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name.isdigit():
                m = read_manifest(d)
                if m is not None:
                    out[int(d.name)] = m
    return out


def stratified_split(
    labels: np.ndarray, seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, np.ndarray]:
    """Seeded stratified split of sample indices into train/val/test.

    Per class, the shuffled indices are cut at the rounded cumulative fractions, so every class
    keeps its proportions. A class with a single sample goes to train.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(n * fractions[1])) if n >= 3 else 0
        n_test = int(round(n * fractions[2])) if n >= 2 else 0
        n_train = max(n - n_val - n_test, 1 if n else 0)
        n_test = n - n_train - n_val
        out["train"].append(idx[:n_train])
        out["val"].append(idx[n_train : n_train + n_val])
        out["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(v)) if v else np.zeros(0, dtype=np.int64) for s, v in out.items()}
