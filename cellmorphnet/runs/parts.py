"""The typed parts of the run record that only some runs have: a calibration, the run a ``train --init`` run was
adapted from and what it was adapted on, and how a run trained under torchrun. Each reads and writes the same JSON
keys as the dictionaries older versions wrote, so their runs and checkpoints load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted after training (``training.calibration``) or on a lab's held-out cells."""

    temperature: float  # logits are divided by it before the softmax
    fitted_on: str | None = None  # what it was fitted on, where it was not the validation split (train --init)
    measured: dict[str, float] = field(default_factory=dict)  # validation NLL and ECE before and after

    def to_dict(self) -> dict[str, Any]:
        fitted = {"fitted_on": self.fitted_on} if self.fitted_on is not None else {}
        return {"temperature": self.temperature, **fitted, **self.measured}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        rest = {k: float(v) for k, v in d.items() if k not in ("temperature", "fitted_on")}
        return cls(float(d["temperature"]), d.get("fitted_on"), rest)


@dataclass(frozen=True)
class Parent:
    """The run a ``train --init`` run was adapted from."""

    name: str
    path: str
    checkpoint_sha256: str  # the parent's checkpoint, so a changed parent is seen
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Parent:
        return cls(str(d["name"]), str(d["path"]), str(d["checkpoint_sha256"]), int(d["epoch"]))


@dataclass(frozen=True)
class Adaptation:
    """What a ``train --init`` run was adapted on: the lab's cells, and what the adaptation measured."""

    cells: int  # reviewed cells used
    per_class: dict[str, int]  # of them, per class
    few_cells: dict[str, int]  # the classes with fewer than reviews.ENOUGH_PER_TYPE
    new_classes: list[str]  # the lab's own classes, added to the head
    held_out: dict[str, Any]  # the held-out cells' count and accuracy ({} where none were held out)
    replay: dict[str, Any] | None  # the parent's datasets and images replayed (None: no replay)
    steps: int
    seconds: float
    skipped: list[Any] = field(default_factory=list)  # (file, why), the first 20
    skipped_total: int = 0
    distill: float | None = None  # the weight of the parent's answers, without replay

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Adaptation:
        return cls(cells=int(d["cells"]), per_class=dict(d.get("per_class", {})),
                   few_cells=dict(d.get("few_cells", {})), new_classes=list(d.get("new_classes", [])),
                   held_out=dict(d.get("held_out") or {}), replay=d.get("replay"), steps=int(d.get("steps", 0)),
                   seconds=float(d.get("seconds", 0.0)), skipped=list(d.get("skipped", [])),
                   skipped_total=int(d.get("skipped_total", len(d.get("skipped", [])))),
                   distill=d.get("distill"))  # fmt: skip


@dataclass(frozen=True)
class Distributed:
    """How a run trained under torchrun."""

    world_size: int
    backend: str | None
    sync_batch_norm: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Distributed:
        return cls(int(d["world_size"]), d.get("backend"), bool(d.get("sync_batch_norm", False)))
