"""Rebuild the embedded sample from the shared PBC arrays (run once by a developer; the result is committed).

    python scripts/make_sample.py ../shared/data/bloodmnist-pbc/bloodmnist_pbc.npz

Takes, per class and with a fixed seed, 64 train and 12 val images from the PBC train/val splits and
24 test images from its test split, at 28 px. The source indices are stored beside the arrays.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PER_CLASS = {"train": 64, "val": 12, "test": 24}
OUT = Path(__file__).resolve().parents[1] / "cellmorphnet" / "data" / "embedded" / "bloodmnist_sample.npz"


def main(src: str) -> None:
    rng = np.random.default_rng(2024)
    data = np.load(src)
    out = {}
    for split, n in PER_CLASS.items():
        labels = data[f"{split}_labels"].reshape(-1)
        picked = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), n, replace=False)) for c in range(8)])
        out[f"{split}_images"] = data[f"{split}_images"][picked]
        out[f"{split}_labels"] = labels[picked].reshape(-1, 1).astype(np.uint8)
        out[f"{split}_source_index"] = picked.astype(np.int32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/bloodmnist-pbc/bloodmnist_pbc.npz")
