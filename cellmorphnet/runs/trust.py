"""What a run knows of its own training cells, so a new cell can be told typical or not (``inference.verdict``).

``trust.npz`` in the run folder holds the pooled features of a stratified sample of training cells (float16,
``REFERENCE_PER_CLASS`` per class) and two similarity marks measured on the run's validation cells: a cell's
typicality is its cosine similarity to its ``K``-th nearest reference cell. ``typical`` is the validation
quantile ``TYPICAL_QUANTILE`` (below it a cell is unlike anything the run trained on) and ``home`` the quantile
``HOME_QUANTILE`` (a rare, clinically significant type is classified without a person only above it: where the
model can vouch for it). Written by training (``training.calibration``) and ``cellmorphnet upgrade``; read as
data (no pickle), checked on load.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellmorphnet._io import atomic_path
from cellmorphnet.errors import RunError

TRUST_FILE = "trust.npz"
TRUST_VERSION = 1
REFERENCE_PER_CLASS = 128
K = 3
# The two marks, as quantiles of the validation cells' typicality (chosen on PBC validation and the other lab's
# cells, docs/benchmarks.md, "Verdicts"): 0.1% of home cells fall below ``typical``, 5% below ``home``.
TYPICAL_QUANTILE = 0.001
HOME_QUANTILE = 0.05
MAX_REFERENCE = 65_536  # rows a trust file may hold (a file claiming more is refused, not loaded)


@dataclass(frozen=True)
class TrustReference:
    features: np.ndarray  # (N, F) float32, each row of unit length
    labels: np.ndarray  # (N,) each reference cell's label in its dataset (the run's first)
    typical: float  # below this similarity a cell is unlike the training cells
    home: float  # at or above it a cell looks like the home lab's

    def typicality(self, features: np.ndarray) -> np.ndarray:
        """Cosine similarity of each row of ``features`` (N, F) to its ``K``-th nearest reference cell."""
        f = np.asarray(features, dtype=np.float32)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        sim = f @ self.features.T
        k = min(K, sim.shape[1])
        return np.partition(sim, -k, axis=1)[:, -k]

    def save(self, run_dir: Path) -> None:
        with atomic_path(Path(run_dir) / TRUST_FILE) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, version=np.int64(TRUST_VERSION), features=self.features.astype(np.float16),
                                labels=self.labels.astype(np.int16), typical=np.float64(self.typical),
                                home=np.float64(self.home))  # fmt: skip


def sample(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The training cells kept as the reference: up to ``REFERENCE_PER_CLASS`` of each class, drawn at random."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).ravel()
    return np.sort(np.concatenate([rng.permutation(np.nonzero(labels == c)[0])[:REFERENCE_PER_CLASS]
                                   for c in np.unique(labels)]))  # fmt: skip


def build(features: np.ndarray, labels: np.ndarray, val_features: np.ndarray) -> TrustReference:
    """The reference from the sampled training cells' features (``sample``) and the marks from validation's."""
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    f = f.astype(np.float16).astype(np.float32)  # as it will be read back
    labels = np.asarray(labels).ravel()
    t = TrustReference(f, labels, 0.0, 0.0).typicality(val_features)
    return TrustReference(f, labels, float(np.quantile(t, TYPICAL_QUANTILE)), float(np.quantile(t, HOME_QUANTILE)))


def load(run_dir: Path, num_classes: int, num_features: int | None = None) -> TrustReference | None:
    """The run's trust reference, or None for a run without one (trained before it existed); a damaged or foreign
    file is refused with ``RunError``."""
    path = Path(run_dir) / TRUST_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as d:
            version = int(d["version"])
            if version > TRUST_VERSION:
                raise RunError(f"{path} was written by a newer cellmorphnet (version {version}).",
                               hint="Upgrade cellmorphnet.")  # fmt: skip
            if d["features"].ndim != 2 or d["features"].shape[0] > MAX_REFERENCE or d["features"].dtype != np.float16:
                raise ValueError("features of the wrong shape or type")
            features = d["features"].astype(np.float32)
            labels = d["labels"].astype(np.int64)
            typical, home = float(d["typical"]), float(d["home"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise RunError(f"{path} is damaged ({e}).", hint="Rebuild it: cellmorphnet upgrade RUN.") from None
    ok = (labels.shape == (features.shape[0],) and features.shape[0] > 0 and np.isfinite(features).all()
          and labels.min() >= 0 and labels.max() < 65_536 and -1 <= typical <= 1 and -1 <= home <= 1
          and (num_features is None or features.shape[1] == num_features))  # fmt: skip
    if not ok:
        raise RunError(f"{path} does not fit this run.", hint="Rebuild it: cellmorphnet upgrade RUN.")
    return TrustReference(features, labels, typical, home)
