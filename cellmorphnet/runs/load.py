"""Rebuild a trained run from its folder: the model of a checkpoint, its record, and predictions on prepared splits.

The checkpoint carries the run record it was trained with; ``config.json`` carries the same record
for tools that must not import torch (``status``). When the two disagree on anything that changes
predictions (classes, input size, normalisation, preprocessing, architecture), loading refuses
unless told to accept it: a hand-edited or swapped ``config.json`` must not silently relabel outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import CellMorphNetError, CheckpointError, ExportError, RunError
from cellmorphnet.runs import folders as runs
from cellmorphnet.runs.record import REFERENCE_FILE, REFERENCE_IMAGES, RunRecord


@dataclass
class RunModel:
    model: Any  # torch.nn.Module in eval mode, on ``device``
    record: RunRecord  # what the run is (from the checkpoint)
    epoch: int  # epochs completed when the checkpoint was written
    checkpoint: Path
    device: Any  # torch.device
    channels_last: bool  # the memory layout the model and its inputs use
    record_mismatch: list[str]  # fields where config.json differs from the checkpoint (accepted)
    trust: Any = None  # runs.trust.TrustReference, or None for a run without one
    sha256: str | None = None  # the checkpoint's, once read (``checkpoint_sha256``)

    def checkpoint_sha256(self) -> str:
        """The checkpoint file's SHA-256, read once (profiles, the review store and serve's card all ask for it)."""
        if self.sha256 is None:
            from cellmorphnet._io import file_digest

            self.sha256 = file_digest(self.checkpoint)
        return self.sha256

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)

    @property
    def run_dir(self) -> Path:
        """The run folder the checkpoint is in (``RUN/checkpoints/best.pt``)."""
        return Path(self.checkpoint).parent.parent


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """``RUN/checkpoints/<which>.pt``; a ``RunError`` that says why where there is none."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not path.exists():
        if runs.is_packaged(run_dir):
            raise RunError(f"{Path(run_dir).name} ships with its best checkpoint only (no {which}.pt).",
                           hint="Leave out --checkpoint, or use --checkpoint best.")  # fmt: skip
        raise RunError(f"{Path(run_dir).name} has no {which}.pt yet.", hint="Wait for the first epoch to finish.")
    return path


def record_mismatch(run_dir: Path, record: RunRecord, which: str, *, accept: bool) -> list[str]:
    """Where the run's config.json differs from the record its checkpoint ``which`` carries: refused unless
    ``accept`` (``--accept-data-change``), then the differing fields."""
    if not (Path(run_dir) / runs.CONFIG).exists():
        return []
    mismatch = RunRecord.load(run_dir).mismatch(record)
    if mismatch and not accept:
        raise RunError(
            f"{runs.CONFIG} of {Path(run_dir).name} does not match its {which}.pt ({', '.join(mismatch)} differ).",
            hint=f"Restore the run's own {runs.CONFIG}, or pass --accept-data-change to trust the checkpoint.",
        )
    return mismatch


def load_run_model(
    run_dir: Path, which: str = "best", device: str = "auto", *, accept_mismatch: bool = False
) -> RunModel:
    """Load ``checkpoints/<which>.pt`` of a run (safely, tensors only) into a freshly built model on ``device``."""
    import torch

    from cellmorphnet.model.network import create_model
    from cellmorphnet.runs import checkpoint
    from cellmorphnet.runtime.devices import pick_device, resolve_channels_last

    path = checkpoint_path(run_dir, which)
    state = checkpoint.load(path)
    record = checkpoint.record_of(state)
    mismatch = record_mismatch(run_dir, record, which, accept=accept_mismatch)
    model = create_model(record.config.model, num_classes=len(record.classes), pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own model ({e}).") from None
    dev = pick_device(device)
    channels_last = resolve_channels_last(record.config.channels_last, dev)
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    from cellmorphnet.runs import trust

    reference = trust.load(path.parent.parent, len(record.classes), getattr(model, "num_features", None))
    return RunModel(model, record, int(state["epoch"]), path, dev, channels_last, mismatch, reference)


def predict_split(
    rm: RunModel, split: str, home: Path | None = None, datasets: list[str] | None = None, *, batch_size: int = 256,
    tta: bool = False, progress=None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: ``labels`` (local) and ``probs`` (local label space) for one prepared split (``tta``: the
    mean over the 8 flips and turns)."""
    from cellmorphnet.data import store
    from cellmorphnet.data.loader import BatchLoader, DeviceArrays
    from cellmorphnet.data.taxonomy import Taxonomy
    from cellmorphnet.model.prediction import LabelSpace, predict_local
    from cellmorphnet.runtime.devices import Precision

    rec = rm.record
    names = datasets or list(rec.datasets)
    unknown = [n for n in names if n not in rec.datasets]
    if unknown:
        raise RunError(f"The run was not trained on {', '.join(unknown)}.",
                       hint=f"It knows: {', '.join(rec.datasets)}.")  # fmt: skip
    parts = {}
    for name in names:
        sp = store.load_split(name, rec.datasets[name].size, split, home)
        parts[name] = DeviceArrays(sp.images, sp.labels, rm.device)
    space = LabelSpace.build(Taxonomy.from_dict(rec.taxonomy), names, rm.device)
    loader = BatchLoader(parts, space.target_offset, batch_size, rec.image_size, rec.mean, rec.std, train=False,
                         channels_last=rm.channels_last)  # fmt: skip
    return predict_local(rm.model, loader, space, rm.device, precision=Precision(None, False),
                         temperature=rm.record.temperature, tta=tta, progress=progress)  # fmt: skip


def save_reference_images(run_dir: Path, images, labels, dataset: str) -> None:
    """A few real validation images of the first dataset (tensors or arrays), so export can check parity from the
    run folder alone (``reference_images`` reads them)."""
    from cellmorphnet._io import atomic_path

    n = min(REFERENCE_IMAGES, len(images))
    as_np = [x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x) for x in (images[:n], labels[:n])]
    with atomic_path(Path(run_dir) / REFERENCE_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=as_np[0], labels=as_np[1], dataset=np.array(dataset))


def reference_images(run_dir: Path, record: RunRecord, home: Path | None = None) -> np.ndarray:
    """Real images the run saw, as prepared (N, S, S, 3 uint8): those kept in the run folder at training time.

    Runs from before that file existed fall back to the prepared validation split in the cache.
    """
    path = Path(run_dir) / REFERENCE_FILE
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data["images"])
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f"{path} is damaged ({e}).") from None
    from cellmorphnet.data import store

    first = next(iter(record.datasets.values()))
    try:
        return store.load_split(first.name, first.size, "val", home).images[:REFERENCE_IMAGES].copy()
    except CellMorphNetError as e:
        raise ExportError(
            f"{Path(run_dir).name} keeps no reference images ({REFERENCE_FILE}; runs trained before version 0.2 "
            f"have none) and {first.name} is not prepared here.",
            hint=f"Run cellmorphnet prepare {first.name} --size {first.size}, or export where it was trained.",
        ) from e
