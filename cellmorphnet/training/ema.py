"""An exponential moving average of the weights (Polyak averaging), validated and saved in place of the raw ones."""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """A copy of the model whose weights (and batch-norm statistics) follow the trained ones slowly.

    After each optimizer step every floating-point entry of the state moves ``1 - decay`` of the way
    to the trained model's value. The decay ramps up as ``(1 + n) / (10 + n)`` over the first steps, so
    the average does not drag the ImageNet starting point along for thousands of steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0) -> None:
        self.decay = decay
        self.updates = updates
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        trained = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.lerp_(trained[name].to(avg.dtype), weight)
            else:
                avg.copy_(trained[name])
