"""Learning-rate schedule (linear warmup, cosine decay) and progressive unfreezing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

STAGES = ("head", "top", "all")


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """A LambdaLR factor: linear from ~0 to 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, progress))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class LrPlan:
    """Warmup then cosine decay over ``total_steps``, with any later extensions of the run.

    Raising ``--epochs`` on ``--resume`` must not make the learning rate jump back up (the plain
    cosine over a longer total would put a resumed step near its middle). An extension starts a
    new cosine at the step where it happens, from the factor reached there, down to ``min_ratio``
    at the new total: the rate stays continuous and keeps decaying. The plan is saved in every
    checkpoint, so each resume continues from the curve that was really followed.
    """

    total_steps: int  # steps the plan first decayed over
    warmup_steps: int  # linear warmup steps
    min_ratio: float  # the factor the cosine ends at
    extensions: list[dict[str, Any]] = field(default_factory=list)  # {"at_step", "total_steps", "from_factor"}

    def factor(self, step: int) -> float:
        for ext in reversed(self.extensions):
            if step >= ext["at_step"]:
                span = max(1, ext["total_steps"] - ext["at_step"])
                progress = min(1.0, (step - ext["at_step"]) / span)
                return self.min_ratio + (ext["from_factor"] - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return warmup_cosine(self.total_steps, self.warmup_steps, self.min_ratio)(step)

    @property
    def final_total(self) -> int:
        return self.extensions[-1]["total_steps"] if self.extensions else self.total_steps

    def extended(self, at_step: int, total_steps: int) -> LrPlan:
        """The plan with its end moved to ``total_steps`` from ``at_step`` on (no change if the end is the same)."""
        if total_steps == self.final_total:
            return self
        if at_step < self.warmup_steps and not self.extensions:  # still warming up: just decay over the new total
            return LrPlan(total_steps, self.warmup_steps, self.min_ratio)
        ext = {"at_step": at_step, "total_steps": total_steps, "from_factor": self.factor(at_step)}
        return LrPlan(self.total_steps, self.warmup_steps, self.min_ratio, [*self.extensions, ext])

    def as_lambda(self):
        """For ``LambdaLR``: a plain function, so the scheduler's state dict never stores the plan itself."""
        return lambda step: self.factor(step)

    def to_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "min_ratio": self.min_ratio,
                "extensions": [dict(e) for e in self.extensions]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LrPlan:
        return cls(int(d["total_steps"]), int(d["warmup_steps"]), float(d["min_ratio"]),
                   [dict(e) for e in d.get("extensions", [])])  # fmt: skip


def stage_for_epoch(epoch: int, unfreeze_epochs: list[int]) -> str:
    """``head`` before ``unfreeze_epochs[0]``, ``top`` before ``unfreeze_epochs[1]``, then ``all``."""
    if epoch < unfreeze_epochs[0]:
        return "head"
    if epoch < unfreeze_epochs[1]:
        return "top"
    return "all"


_BLOCK = re.compile(r"^(blocks|stages|layers)\.(\d+)\.|^layer(\d+)\.")


def parameter_parts(model: torch.nn.Module) -> dict[str, list[str]]:
    """Split parameter names into ``stem``, ``blocks`` (in order, as lists) and ``head``.

    Parameters before the first block are the stem; after the last block, the head (for
    EfficientNet: ``conv_head``, ``bn2`` and the classifier). Models without numbered blocks get
    their classifier as head and the rest as one backbone.
    """
    names = [n for n, _ in model.named_parameters()]
    block_of: dict[str, int] = {}
    for n in names:
        m = _BLOCK.match(n)
        if m:
            block_of[n] = int(m.group(2) if m.group(2) is not None else m.group(3))
    if not block_of:
        classifier = model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "fc"
        head = [n for n in names if n.startswith(classifier + ".")]
        rest = [n for n in names if n not in head]
        half = len(rest) // 2
        return {"stem": [], "blocks": [rest[:half], rest[half:]], "head": head}
    first = names.index(next(n for n in names if n in block_of))
    last = max(i for i, n in enumerate(names) if n in block_of)
    ids = sorted(set(block_of.values()))
    return {
        "stem": names[:first],
        "blocks": [[n for n in names if block_of.get(n) == b] for b in ids],
        "head": names[last + 1 :],
    }


def apply_stage(model: torch.nn.Module, stage: str) -> list[str]:
    """Set ``requires_grad`` for ``stage``; return the names of trainable parameters.

    Frozen parameters get no gradient at all (``grad`` stays ``None``), so AdamW leaves them alone,
    weight decay included. Their batch-norm statistics are frozen too (see ``freeze_norm_stats``).
    """
    parts = parameter_parts(model)
    trainable = set(parts["head"])
    if stage in ("top", "all"):
        blocks = parts["blocks"]
        for b in blocks[len(blocks) // 2 :] if stage == "top" else blocks:
            trainable.update(b)
    if stage == "all":
        trainable.update(parts["stem"])
        for b in parts["blocks"]:
            trainable.update(b)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    return [n for n, _ in model.named_parameters() if n in trainable]


def freeze_norm_stats(model: torch.nn.Module) -> None:
    """Put norm layers whose parameters are all frozen in eval mode, so their running statistics stay put.

    Call after ``model.train()``: a frozen backbone should compute what it computed on ImageNet.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
