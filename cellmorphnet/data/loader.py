"""Batches from prepared arrays, and the evaluation transform every prediction path shares.

The prepared uint8 arrays are held in memory (on the training device where there is one). Each
batch is gathered by index, resized to the network's input size (or handed to the training
augmentation, ``training.augment``, which resizes as it transforms) and normalised as tensor
arithmetic. No PIL image is touched per sample, so the data path stays cheap next to the model.

A batch holds samples of one dataset (datasets may be stored at different sizes); batches of all
datasets are shuffled together. The order and the augmentation of epoch ``e`` depend only on
``(seed, e)``, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cellmorphnet.runtime.distributed import block


@dataclass
class Batch:
    dataset: str  # which dataset its samples come from
    images: torch.Tensor  # (B, 3, H, W) float, normalised
    labels: torch.Tensor  # (B,) local labels of that dataset
    target_ids: torch.Tensor  # (B,) row of the run's target table (see Taxonomy / losses)
    padding: bool = False  # a distributed rank's stand-in for an empty block: its loss is weighted 0


class DeviceArrays:
    """One split of one dataset as uint8 NHWC tensors on ``device``, plus labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        # np.array copies: the prepared arrays are read-only memory maps, which torch will not wrap.
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, order="C")).to(device)
        self.labels_cpu = torch.from_numpy(np.array(labels, dtype=np.int64))
        self.labels = self.labels_cpu.to(device)

    def __len__(self) -> int:
        return len(self.labels)


def _to_float_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an NCHW float batch to ``size`` (bilinear; antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class BatchLoader:
    """Yield ``Batch`` objects over one split of several datasets.

    Args:
        parts: ``{dataset: DeviceArrays}``.
        target_offset: ``{dataset: first row in the run's target table}``.
        batch_size: samples per batch (the last batch of each dataset may be smaller).
        image_size: the network's input size.
        mean, std: normalisation, from the model's config.
        train: shuffle when True; fixed order when False.
        augment: with ``train``, ``augment(x, image_size, generator)`` transforms each float NCHW batch to the
            input size (``training.augment.Augment``); else batches are only resized.
        seed: base seed; epoch ``e`` uses ``seed * 1000 + e``.
        limit_batches: stop after this many batches (quick checks and tests).
        channels_last: hand out batches in channels-last memory layout (for a channels-last model).
    """

    def __init__(
        self,
        parts: dict[str, DeviceArrays],
        target_offset: dict[str, int],
        batch_size: int,
        image_size: int,
        mean: list[float],
        std: list[float],
        *,
        train: bool,
        augment: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor] | None = None,
        seed: int = 42,
        limit_batches: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.parts = parts
        self.target_offset = target_offset
        self.batch_size = batch_size
        self.image_size = image_size
        device = next(iter(parts.values())).images.device
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.train = train
        self.augment = augment
        self.seed = seed
        self.limit_batches = limit_batches
        # The batch's layout must match the model's: a mismatch makes every convolution reorder its
        # input (the cost is measured in docs/benchmarks.md).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[tuple[str, torch.Tensor]]:
        """The epoch's batches as ``(dataset, indices)``: shuffled with the epoch's seed when training."""
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        batches = []
        for name, arr in self.parts.items():
            order = torch.randperm(len(arr), generator=g) if self.train else torch.arange(len(arr))
            batches += [(name, idx) for idx in order.split(self.batch_size)]
        if self.train:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.limit_batches is not None:
            batches = batches[: self.limit_batches]
        return batches

    def __len__(self) -> int:
        n = sum(math.ceil(len(a) / self.batch_size) for a in self.parts.values())
        return min(n, self.limit_batches) if self.limit_batches is not None else n

    def __iter__(self):
        return self.batches(self.plan())

    def batches(self, plan: list[tuple[str, torch.Tensor]], shard: tuple[int, int] | None = None):
        """Materialise the planned batches in order (augmenting when training).

        With ``shard = (rank, world_size)`` each batch is cut into ``world_size`` contiguous blocks and only block
        ``rank`` is materialised, augmented exactly as it would be in the whole batch (``Batch.padding`` marks a
        block left empty by a batch smaller than the world: it holds the batch's first sample, to be weighted 0).
        """
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch + 500_000)
        for name, full in plan:
            arr = self.parts[name]
            rows, padding, idx = None, False, full
            if shard is not None:
                start, stop = block(len(full), *shard)
                padding = stop == start
                start, stop = (0, 1) if padding else (start, stop)
                rows, idx = (start, stop, len(full)), full[start:stop]
            idx_dev = idx.to(arr.images.device)
            x = _to_float_nchw(arr.images.index_select(0, idx_dev))
            if self.train and self.augment is not None:
                x = self.augment(x, self.image_size, g) if rows is None else self.augment(x, self.image_size, g, rows)
            else:
                x = resize_batch(x, self.image_size)
            labels = arr.labels.index_select(0, idx_dev)
            x = normalise(x, self.mean, self.std).contiguous(memory_format=self.memory_format)
            yield Batch(name, x, labels, labels + self.target_offset[name], padding)


def eval_transform(images_uint8_nhwc: torch.Tensor, image_size: int, mean, std) -> torch.Tensor:
    """The evaluation transform (what ``BatchLoader`` does with ``train=False``), for one batch."""
    x = resize_batch(_to_float_nchw(images_uint8_nhwc), image_size)
    return normalise(x, torch.as_tensor(mean, device=x.device), torch.as_tensor(std, device=x.device))
