"""Prediction on prepared splits, each dataset in its own label space: used by training's validation and by eval.

``LabelSpace`` maps every (dataset, local label) to the model's classes (see ``data.taxonomy``);
``predict_local`` runs a model over a loader and returns, per dataset, the local labels, the
probabilities summed into that dataset's own labels, and the per-sample losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cellmorphnet.data.loader import BatchLoader
from cellmorphnet.data.taxonomy import Taxonomy
from cellmorphnet.model.losses import coarse_cross_entropy
from cellmorphnet.runtime.devices import Precision, autocast


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


ORIENTATIONS = tuple((flip, k) for flip in (False, True) for k in range(4))  # (flipped, quarter turns): all 8


def oriented(x: torch.Tensor, views=ORIENTATIONS) -> list[torch.Tensor]:
    """The given flips and quarter turns of a batch (N, C, H, W), in its memory format: a cell has no up or
    down, so all are the same cell."""
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    out = [(x.flip(3) if flip else x).rot90(k, dims=(2, 3)) for flip, k in views]
    return [v.contiguous(memory_format=fmt) if fmt else v.contiguous() for v in out]


@torch.no_grad()
def collect_logits(
    model: torch.nn.Module, loader: BatchLoader, device: torch.device, precision: Precision, tta: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per dataset, on the CPU: the raw ``logits``, the ``target_ids`` and the local ``labels``.

    With ``tta``, also ``view_logits`` (8, N, C): the logits of each of the 8 flips and turns (``logits``
    stays the plain view's).
    """
    model.eval()
    out: dict[str, dict[str, list]] = {}
    total = len(loader)
    for i, batch in enumerate(loader, 1):
        with autocast(device, precision):
            views = [model(v) for v in oriented(batch.images)] if tta else [model(batch.images)]
        logits = views[0]
        d = out.setdefault(batch.dataset, {"logits": [], "target_ids": [], "labels": []})
        if tta:
            d.setdefault("view_logits", []).append(torch.stack(views).float().cpu())
        d["logits"].append(logits.float().cpu())
        d["target_ids"].append(batch.target_ids.cpu())
        d["labels"].append(batch.labels.cpu())
        if progress is not None:
            progress(i, total)
    return {k: {kk: torch.cat(vv, dim=1 if kk == "view_logits" else 0) for kk, vv in v.items()}
            for k, v in out.items()}  # fmt: skip


def predict_local(
    model: torch.nn.Module, loader: BatchLoader, space: LabelSpace, device: torch.device, *, precision: Precision,
    temperature: float = 1.0, tta: bool = False, progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: local ``labels``, local-space ``probs`` (after the temperature) and per-sample ``losses``.

    With ``tta`` the probabilities are the mean over the 8 flips and turns (as ``infer`` computes them);
    the losses stay those of the plain view.
    """
    table = space.target_table.float().cpu()
    out = {}
    for name, d in collect_logits(model, loader, device, precision, tta, progress).items():
        losses = coarse_cross_entropy(d["logits"], d["target_ids"], table)
        probs = (d["view_logits"] / temperature).softmax(2).mean(0) if tta else (d["logits"] / temperature).softmax(1)
        # the summed probability of the classes each local label covers
        local = probs @ space.rows(name).float().cpu().T
        out[name] = {"labels": d["labels"].numpy(), "probs": local.numpy(), "losses": losses.numpy()}
    return out


@torch.no_grad()
def pooled_features(model: torch.nn.Module, images, *, image_size: int, mean, std, device: torch.device,
                    batch_size: int = 64):  # fmt: skip
    """Each prepared image's pooled features (the classifier's input; N x F, float32 numpy), averaged over the 8
    flips and turns as ``infer`` reads a cell (``runs.trust``)."""
    import numpy as np

    from cellmorphnet.data.loader import eval_transform

    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        x = eval_transform(x, image_size, mean, std)
        views = [model.forward_head(model.forward_features(v), pre_logits=True).float() for v in oriented(x)]
        out.append(torch.stack(views).mean(0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
