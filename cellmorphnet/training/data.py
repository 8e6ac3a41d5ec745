"""The training data of a run: prepared splits on the device, the shared label space and class weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from cellmorphnet.data import store
from cellmorphnet.data.loader import DeviceArrays
from cellmorphnet.data.taxonomy import Taxonomy
from cellmorphnet.errors import ConfigError
from cellmorphnet.model.prediction import LabelSpace
from cellmorphnet.runs.config import TrainConfig
from cellmorphnet.runs.record import DatasetRecord


def pick_data_size(name: str, cfg: TrainConfig, home: Path | None) -> int:
    """The prepared size a new run reads: ``--data-size``, else the input size if prepared, else the largest.

    Prepares the dataset at that size first when it is not prepared yet. A resumed run never calls
    this: it reads the sizes its record names.
    """
    sizes = store.prepared_sizes(name, home)
    if cfg.data_size:
        wanted = cfg.data_size
    elif cfg.image_size and cfg.image_size in sizes:
        wanted = cfg.image_size
    elif sizes:
        wanted = max(sizes)
    else:
        wanted = None
    if wanted is None or wanted not in sizes:
        from cellmorphnet.data.prepare import prepare

        wanted = prepare(name, home=home, size=wanted).size  # raises with a hint if not fetched
    return wanted


@dataclass
class TrainData:
    datasets: dict[str, DatasetRecord]  # what each dataset is, as the run records it
    space: LabelSpace  # every (dataset, local label) onto the model's classes
    train: dict[str, DeviceArrays]
    val: dict[str, DeviceArrays]
    class_weights: torch.Tensor | None  # per target row

    @property
    def taxonomy(self) -> Taxonomy:
        return self.space.taxonomy


def load_data(
    names: list[str], sizes: dict[str, int], home: Path | None, device: torch.device, class_weights: bool
) -> TrainData:
    """Load the train and val splits of ``names`` at ``sizes`` onto ``device``."""
    records = {}
    for name in names:
        manifest = store.read_manifest(store.prepared_path(name, sizes[name], home))
        if manifest is None:
            raise ConfigError(f"{name} is not prepared at {sizes[name]} px.",
                              hint=f"cellmorphnet prepare {name} --size {sizes[name]}")  # fmt: skip
        records[name] = DatasetRecord.from_manifest(name, sizes[name], manifest)
    taxonomy = Taxonomy.build({name: r.classes for name, r in records.items()})
    if len(taxonomy.classes) < 2:
        raise ConfigError(f"{', '.join(names)} holds one class ({taxonomy.classes[0]}): a classifier needs two at "
                          "least.", hint="Add a sub-folder of images for each other class.")  # fmt: skip
    space = LabelSpace.build(taxonomy, names, device)
    train, val = {}, {}
    for name in names:
        tr = store.load_split(name, sizes[name], "train", home)
        va = store.load_split(name, sizes[name], "val", home)
        if len(tr.labels) == 0 or len(va.labels) == 0:
            # the split is 70/10/20 within each class: a class gives validation images from 5 images on
            total = len(tr.labels) + len(va.labels) + len(store.load_split(name, sizes[name], "test", home).labels)
            raise ConfigError(f"{name} has no {'training' if len(tr.labels) == 0 else 'validation'} images: its "
                              f"{total} images are too few to split 70/10/20 within each class (a class gives "
                              "validation images from 5 images on).",
                              hint="Add images: dozens of each class.")  # fmt: skip
        train[name] = DeviceArrays(tr.images, tr.labels, device)
        val[name] = DeviceArrays(va.images, va.labels, device)
    weights = _inverse_frequency(space, train).to(device) if class_weights else None
    return TrainData(records, space, train, val, weights)


def _inverse_frequency(space: LabelSpace, train: dict[str, DeviceArrays]) -> torch.Tensor:
    """Per target row: total / (count x number of rows present), so a balanced set gets all ones."""
    counts = torch.zeros(space.target_table.shape[0])
    for name, arr in train.items():
        n = len(space.taxonomy.targets[name])
        start = space.target_offset[name]
        counts[start : start + n] += torch.bincount(arr.labels_cpu, minlength=n).float()
    return counts.sum() / (counts.clamp(min=1) * (counts > 0).sum())


APPEARANCE_PER_CLASS = 32  # training images per class measured for framing and colour
CONTRAST_PER_CLASS = 128  # and for the stain contrast, a per-class median of a noisier measure


def appearance(arrays: DeviceArrays, classes: list[str], seed: int = 0) -> dict:
    """How the training images frame and colour their cells, for ``InferencePolicy`` (see cellfinder, colour).

    Measured on a class-balanced sample of the training split. The nucleus fraction (median nucleus
    side / crop side) comes from the white-cell classes where the data has them, since the finder
    frames white cells (a platelet's or an erythroblast's small dark body would pull the median
    down); the cell policy is used only where a nucleus was found in most of them. The CIELAB
    statistics and the stain reference (nucleus optical density, background) come from every class; the
    stain reference also holds each class's cytoplasm-to-nucleus density ratio (``colour.contrast_reference``,
    keyed by canonical class name), from up to ``CONTRAST_PER_CLASS`` images of each.
    """
    import numpy as np

    from cellmorphnet.data.taxonomy import WHITE_CELLS, canonical
    from cellmorphnet.vision import cellfinder, colour

    labels = arrays.labels_cpu.numpy()
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    idx = {c: np.sort(o[:APPEARANCE_PER_CLASS]) for c, o in order.items()}
    white = [c for c in idx if canonical(classes[c]) in (*WHITE_CELLS, "wbc")] or list(idx)

    def images_of(cs) -> np.ndarray:
        return arrays.images[torch.from_numpy(np.concatenate([idx[c] for c in cs]))].cpu().numpy()

    cells = images_of(white)
    fraction, found = cellfinder.nucleus_fraction(cells)
    use_cell = fraction is not None and found >= 0.5 * len(cells)
    every = images_of(list(idx))
    stain = colour.stain_reference(every)
    if stain is not None:
        pick = np.sort(np.concatenate([o[:CONTRAST_PER_CLASS] for o in order.values()]))
        sample = arrays.images[torch.from_numpy(pick)].cpu().numpy()
        contrast = colour.contrast_reference(sample, labels[pick], [canonical(c) for c in classes])
        stain = dataclasses.replace(stain, contrast=contrast)
    return {"crop": "cell" if use_cell else "centre", "nucleus_fraction": fraction if use_cell else None,
            "colour": colour.lab_stats(every, seed), "stain": stain}  # fmt: skip
