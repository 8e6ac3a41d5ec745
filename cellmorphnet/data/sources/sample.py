"""The embedded sample: 800 real PBC cells (100 per class) in BloodMNIST format, shipped in the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet._io import file_digest
from cellmorphnet.data import store
from cellmorphnet.data.registry import register
from cellmorphnet.data.source import Built, DatasetInfo, FetchResult, Source, SourceState
from cellmorphnet.data.sources.bloodmnist import PBC_PREPROCESSING, SHORT_NAMES
from cellmorphnet.errors import InvalidData

SAMPLE_FILE = "bloodmnist_sample.npz"


def sample_path() -> Path:
    return Path(str(resources.files("cellmorphnet.data.embedded") / SAMPLE_FILE))


@register
class Sample(Source):
    info = DatasetInfo(
        name="sample",
        title="Embedded BloodMNIST-format sample (800 real PBC cells, stored at 28 px)",
        classes=SHORT_NAMES,
        licence="CC BY 4.0",
        homepage="https://data.mendeley.com/datasets/snkd93bnjr/1",
        citation="Acevedo et al., Data in Brief 30 (2020); Yang et al., MedMNIST v2 (2023)",
        # Prepared at 64 px by default: EfficientNet's stride-32 stem leaves 28 px inputs a 1x1 feature
        # map, and upscaled 64 px trains far better (see docs/benchmarks.md).
        default_size=64,
        # 512 training images give 8 optimizer steps an epoch: the full-dataset recipe is tuned for
        # thousands of steps (measurements in docs/benchmarks.md).
        recipe="quick",
    )

    def fetch(self, home, *, sizes, source, allow_unverified, force, progress) -> list[FetchResult]:
        return [FetchResult(self.name, "embedded", True, None, details={"note": "ships inside cellmorphnet"})]

    def cache_entry(self, home: Path | None) -> dict[str, Any]:
        return {"fetched": True, "verified": True, "note": "embedded"}

    def source_state(self, name: str, *, home: Path | None, size: int) -> SourceState:
        return SourceState(f"sha256:{file_digest(sample_path())}", verified=True, origin="embedded in cellmorphnet")

    def build(self, name: str, *, home: Path | None, size: int, seed: int, progress=None) -> Built:
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

                images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                                   for im in images])  # fmt: skip
            splits[s] = store.Split(images, arrays[f"{s}_labels"].reshape(-1).astype(np.int64))
        return Built(
            splits=splits,
            classes=list(SHORT_NAMES),
            preprocessing=PBC_PREPROCESSING | {
                "source": "embedded PBC sample (BloodMNIST format)",
                "stored_size": stored,  # larger sizes are bicubic upscales of the stored 28 px cells
            },
            split_policy="per class 64 train and 12 val from the PBC train/val splits, 24 test from its test split",
        )
