"""One training epoch and one validation pass: plain functions, readable top to bottom."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cellmorphnet.data.loader import BatchLoader
from cellmorphnet.model.losses import coarse_cross_entropy
from cellmorphnet.model.prediction import predict_local
from cellmorphnet.runs.config import TrainConfig
from cellmorphnet.runtime.devices import Precision, autocast, synchronize
from cellmorphnet.runtime.distributed import SINGLE, Group
from cellmorphnet.training import schedule
from cellmorphnet.training.data import TrainData
from cellmorphnet.training.ema import WeightAverage
from cellmorphnet.training.mixing import mix_batch

LOG_EVERY = 10  # batches between progress reports: each report reads the loss back (a device sync on GPUs)
# what a run's history records per epoch (history.json and every checkpoint), for training and fine-tuning alike
HISTORY_KEYS = (
    "epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1",
    "val_f1_per_class", "val_per_dataset", "epoch_time", "images_per_s",
)  # fmt: skip


def adamw(parameters, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weights only (not on norm parameters and biases)."""
    decay, no_decay = [], []
    for p in parameters:
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)  # fmt: skip


def optimizer_step(optimizer, scaler, params, grad_clip: float) -> bool:
    """Clip and step (through the scaler when there is one). Returns False when the scaler skipped the step.

    A GradScaler skips the step when the gradients overflowed, and then lowers its scale: a lower
    scale after ``update()`` is how a skipped step is seen (one read of the scale, fp16 only).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before


def _losses(logits, target_ids, space, cfg: TrainConfig, data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's loss against ``target_ids``, unweighted and weighted by its class weight (if any)."""
    per_sample = coarse_cross_entropy(logits, target_ids, space.target_table, cfg.label_smoothing)
    if data.class_weights is None:
        return per_sample, per_sample
    return per_sample, per_sample * data.class_weights.index_select(0, target_ids)


def train_one_epoch(
    model: torch.nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    *,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    precision: Precision,
    cfg: TrainConfig,
    data: TrainData,
    on_batch: Callable[[int, int, float, float, float], None] | None = None,
    ema: WeightAverage | None = None,
    group: Group = SINGLE,
    net: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One pass over the training batches with gradient accumulation; returns loss, accuracy, images/s.

    Each optimizer step accumulates ``accum_steps`` batches. The loss of every batch is divided by
    the number of samples (or total class weight) of its whole accumulation group, so the summed
    gradient equals that of one big batch, even when the last group is smaller. The learning-rate
    schedule advances only on steps the optimizer really took, and so does the weight average (``ema``).
    With mixup or cutmix a mixed image's loss is ``lam`` of its own label's and the rest of its
    partner's; the reported training accuracy counts the label with the larger share.

    In a distributed job (``group``) every rank plans the same batches and runs its block of each
    (``BatchLoader.batches(shard=...)``) through ``net``, ``model`` wrapped in DistributedDataParallel,
    which averages the ranks' gradients at the last batch of each accumulation group. Each rank's loss is
    divided by the whole group's sample count and multiplied by the world size, so the average is the
    gradient of the whole batch, as in one process. Loss, accuracy and images/s are summed over the ranks.
    """
    net = net if net is not None else model
    net.train()
    schedule.freeze_norm_stats(model)
    space = data.space
    plan = loader.plan()
    chunks = [plan[i : i + cfg.accum_steps] for i in range(0, len(plan), cfg.accum_steps)]  # one step each
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen, skipped = 0, 0
    synchronize(device)
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    # Batches are built in this thread on purpose: a prefetching thread competed with the model's
    # own threads for the CPU cores (see docs/benchmarks.md).
    batches = loader.batches(plan, (group.rank, group.world_size) if group.active else None)
    weights_cpu = data.class_weights.cpu() if data.class_weights is not None else None
    ranks = float(group.world_size)
    i = 0
    for chunk in chunks:
        if weights_cpu is None:
            norm = float(sum(len(idx) for _, idx in chunk))
        else:  # from the CPU copies: no device round trip
            norm = float(sum(weights_cpu[data.train[name].labels_cpu[idx] + space.target_offset[name]].sum()
                             for name, idx in chunk))  # fmt: skip
        for j in range(len(chunk)):
            batch = next(batches)
            # DDP averages the ranks' gradients on the chunk's last backward only
            last = j == len(chunk) - 1 or net is model
            with contextlib.nullcontext() if last else net.no_sync():
                images, partner, lam = mix_batch(batch.images, cfg.mixup, cfg.cutmix)
                with autocast(device, precision):
                    logits = net(images)
                per_sample, weighted = _losses(logits, batch.target_ids, space, cfg, data)
                counted = batch.target_ids
                if partner is not None:
                    other_ids = batch.target_ids[partner]
                    other, other_weighted = _losses(logits, other_ids, space, cfg, data)
                    per_sample = lam * per_sample + (1.0 - lam) * other
                    weighted = lam * weighted + (1.0 - lam) * other_weighted
                    counted = batch.target_ids if lam >= 0.5 else other_ids
                loss = weighted.sum() / norm
                if group.active:  # DDP divides the ranks' summed gradients by their number
                    loss = loss * (0.0 if batch.padding else ranks)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            if not batch.padding:
                with torch.no_grad():
                    loss_sum += per_sample.detach().sum()
                    correct += space.target_table[counted, logits.detach().argmax(1)].sum()
                seen += len(batch.labels)
            i += 1
            if on_batch is not None and (i % LOG_EVERY == 0 or i == len(plan)):
                elapsed = time.perf_counter() - start
                n = max(seen, 1)
                on_batch(i, len(plan), loss_sum.item() / n, correct.item() / n, ranks * seen / max(elapsed, 1e-9))
        if optimizer_step(optimizer, scaler, params, cfg.grad_clip):
            lr_schedule.step()
            if ema is not None:
                ema.update(model)
        else:
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    elapsed = time.perf_counter() - start
    loss_total, correct_total, seen_total = group.sum([loss_sum.item(), correct.item(), seen])
    return {
        "loss": loss_total / max(seen_total, 1),
        "acc": correct_total / max(seen_total, 1),
        "images_per_s": seen_total / max(elapsed, 1e-9),
        "time": elapsed,
        "skipped_steps": skipped,
    }


def evaluate(
    model: torch.nn.Module, loader: BatchLoader, data: TrainData, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """Validation metrics, each dataset in its own label space; the overall F1 is the mean of their macro-F1s."""
    from sklearn.metrics import f1_score

    per_dataset = {}
    for name, d in predict_local(model, loader, data.space, device, precision=precision).items():
        classes = list(data.taxonomy.local_classes[name])
        pred = d["probs"].argmax(1)
        f1s = f1_score(d["labels"], pred, labels=list(range(len(classes))), average=None, zero_division=0)
        per_dataset[name] = {
            "loss": float(d["losses"].mean()),
            "acc": float((pred == d["labels"]).mean()),
            "f1": float(f1s.mean()),
            "per_class_f1": {c: float(f) for c, f in zip(classes, f1s, strict=True)},
            "n": int(len(pred)),
        }
    n_total = sum(m["n"] for m in per_dataset.values())
    multi = len(per_dataset) > 1
    return {
        "loss": sum(m["loss"] * m["n"] for m in per_dataset.values()) / n_total,
        "acc": sum(m["acc"] * m["n"] for m in per_dataset.values()) / n_total,
        "f1": float(np.mean([m["f1"] for m in per_dataset.values()])),
        "per_class_f1": {
            (f"{name}/{c}" if multi else c): f for name, m in per_dataset.items() for c, f in m["per_class_f1"].items()
        },
        "per_dataset": per_dataset,
    }
