"""The loss: cross-entropy over targets that may cover several classes (coarse labels such as BCCD's WBC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coarse_cross_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, target_table: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-sample cross-entropy where a target may cover several classes.

    ``target_table[t]`` is a 0/1 row over the model's classes. The loss is ``-log(sum of the
    probabilities of the covered classes)``: for a fine label (one class) this is ordinary
    cross-entropy; for a coarse label such as BCCD's WBC it rewards any white-cell class. Label
    smoothing mixes in the mean of ``-log p`` over all classes, as ``torch.nn.CrossEntropyLoss`` does.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    mask = target_table.index_select(0, target_ids) > 0
    nll = -torch.logsumexp(logp.masked_fill(~mask, float("-inf")), dim=1)
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * (-logp.mean(dim=1))
    return nll
