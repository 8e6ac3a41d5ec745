"""Prediction on prepared splits, each dataset in its own label space: used by training's validation and by eval.

``LabelSpace`` maps every (dataset, local label) to the model's classes (see ``data.taxonomy``);
``predict_local`` runs a model over a loader and returns, per dataset, the local labels, the
probabilities summed into that dataset's own labels, and the per-sample losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cellmorphnet.data.loader import BatchLoader
from cellmorphnet.data.taxonomy import Taxonomy
from cellmorphnet.training.losses import coarse_cross_entropy
from cellmorphnet.training.precision import Precision, autocast


@dataclass
class LabelSpace:
    taxonomy: Taxonomy
    target_table: torch.Tensor  # rows: every (dataset, local label); columns: the model's classes
    target_offset: dict[str, int]  # dataset -> its first row in target_table

    @classmethod
    def build(cls, taxonomy: Taxonomy, names: list[str], device: torch.device) -> LabelSpace:
        rows, offsets = [], {}
        for name in names:
            offsets[name] = sum(r.shape[0] for r in rows)
            rows.append(taxonomy.target_matrix(name))
        return cls(taxonomy, torch.cat(rows).to(device), offsets)

    def rows(self, name: str) -> torch.Tensor:
        """The target rows of one dataset's local labels."""
        start = self.target_offset[name]
        return self.target_table[start : start + len(self.taxonomy.targets[name])]


@torch.no_grad()
def collect_logits(
    model: torch.nn.Module, loader: BatchLoader, device: torch.device, precision: Precision
) -> dict[str, dict[str, torch.Tensor]]:
    """Per dataset, on the CPU: the raw ``logits``, the ``target_ids`` and the local ``labels``."""
    model.eval()
    out: dict[str, dict[str, list]] = {}
    for batch in loader:
        with autocast(device, precision):
            logits = model(batch.images)
        d = out.setdefault(batch.dataset, {"logits": [], "target_ids": [], "labels": []})
        d["logits"].append(logits.float().cpu())
        d["target_ids"].append(batch.target_ids.cpu())
        d["labels"].append(batch.labels.cpu())
    return {k: {kk: torch.cat(vv) for kk, vv in v.items()} for k, v in out.items()}


def predict_local(
    model: torch.nn.Module, loader: BatchLoader, space: LabelSpace, device: torch.device, precision: Precision,
    temperature: float = 1.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: local ``labels``, local-space ``probs`` (after the temperature) and per-sample ``losses``."""
    table = space.target_table.float().cpu()
    out = {}
    for name, d in collect_logits(model, loader, device, precision).items():
        losses = coarse_cross_entropy(d["logits"], d["target_ids"], table)
        # the summed probability of the classes each local label covers
        local = (d["logits"] / temperature).softmax(1) @ space.rows(name).float().cpu().T
        out[name] = {"labels": d["labels"].numpy(), "probs": local.numpy(), "losses": losses.numpy()}
    return out
