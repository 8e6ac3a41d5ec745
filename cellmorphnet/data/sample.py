"""The embedded sample: 800 real PBC cells (100 per class) in BloodMNIST format, shipped in the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from cellmorphnet._io import file_digest
from cellmorphnet.data import registry, store
from cellmorphnet.data.prepare import Built, SourceState
from cellmorphnet.errors import InvalidData

SAMPLE_FILE = "bloodmnist_sample.npz"


def sample_path() -> Path:
    return Path(str(resources.files("cellmorphnet.data.embedded") / SAMPLE_FILE))


def source_state(name: str, *, home: Path | None, size: int) -> SourceState:
    return SourceState(f"sha256:{file_digest(sample_path())}", verified=True, origin="embedded in cellmorphnet")


def build(name: str, *, home: Path | None, size: int, seed: int, progress=None) -> Built:
    with np.load(sample_path()) as data:
        arrays = {k: data[k] for k in data.files}
    stored = arrays["train_images"].shape[1]
    if size > 4 * stored:
        raise InvalidData(f"The sample is stored at {stored} px; prepare it at {4 * stored} px or smaller.")
    splits = {}
    for s in store.SPLITS:
        images = arrays[f"{s}_images"]
        if size != stored:
            from PIL import Image

            images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
        splits[s] = store.Split(images, arrays[f"{s}_labels"].reshape(-1).astype(np.int64))
    return Built(
        splits=splits,
        classes=list(registry.BLOODMNIST_SHORT_NAMES),
        preprocessing={
            "source": "embedded PBC sample (BloodMNIST format)",
            "crop": "centre 200x200 of the ~360x363 PBC image",
            "centre_crop_px": 200,
            "centre_crop_fraction": 200 / 360,
            "resize": "bicubic",
            "stored_size": stored,  # larger sizes are bicubic upscales of the stored 28 px cells
        },
        split_policy="per class 64 train and 12 val from the PBC train/val splits, 24 test from its test split",
    )
