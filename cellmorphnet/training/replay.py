"""Replay: the parent's own training images mixed into fine-tuning's batches, so what it knew holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Replay:
    """The parent's own images kept for replay: a class-balanced draw of its training and validation splits, labelled
    in the adapted model's classes."""

    train_images: np.ndarray  # N x S x S x 3 uint8, as prepared
    train_labels: np.ndarray
    val_images: np.ndarray  # for the temperature, beside the held-out reviewed cells
    val_labels: np.ndarray
    datasets: list[str]  # the parent's datasets they come from


def replay_data(record, classes: list[str], home: Path | None, per_class: int, seed: int) -> Replay | None:
    """The parent's training (and validation) images for replay where every dataset of it is prepared here as it
    trained on it, else None."""
    from cellmorphnet.data import store
    from cellmorphnet.data.taxonomy import canonical
    from cellmorphnet.runs.record import DatasetRecord

    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [[], []], "val": [[], []]}
    for name, d in record.datasets.items():
        manifest = store.read_manifest(store.prepared_path(name, d.size, home))
        if manifest is None or DatasetRecord.from_manifest(name, d.size, manifest).differences(d):
            return None
        for split in ("train", "val"):
            arr = store.load_split(name, d.size, split, home)
            images, local = np.asarray(arr.images), np.asarray(arr.labels)
            to_class = np.array([classes.index(canonical(c)) if canonical(c) in classes else -1 for c in d.classes])
            target = to_class[local]
            keep = []
            for c in np.unique(target[target >= 0]):
                idx = np.flatnonzero(target == c)
                keep += list(rng.choice(idx, min(len(idx), per_class if split == "train" else per_class // 4),
                                        replace=False))  # fmt: skip
            keep = np.array(sorted(keep), dtype=np.int64)
            parts[split][0].append(images[keep])
            parts[split][1].append(target[keep])
    sizes = {im.shape[1] for im in parts["train"][0]}
    if len(sizes) != 1:
        return None
    return Replay(np.concatenate(parts["train"][0]), np.concatenate(parts["train"][1]),
                  np.concatenate(parts["val"][0]), np.concatenate(parts["val"][1]), list(record.datasets))  # fmt: skip


def balanced(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn class-balanced (with replacement) from ``labels``."""
    classes = np.unique(labels)
    picked = rng.choice(classes, n)
    return np.array([rng.choice(np.flatnonzero(labels == c)) for c in picked], dtype=np.int64)
