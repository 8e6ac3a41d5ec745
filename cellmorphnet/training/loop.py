"""The training loop, readable top to bottom: ``fit`` calls ``train_one_epoch`` and ``evaluate``.

Library code: it reports through the ``events`` callback and returns values; it never prints.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cellmorphnet import __version__, runs
from cellmorphnet._io import read_json, write_json
from cellmorphnet.data import store
from cellmorphnet.data.loader import BatchLoader, DeviceArrays
from cellmorphnet.data.taxonomy import Taxonomy
from cellmorphnet.errors import CheckpointError, ConfigError, RunError
from cellmorphnet.inference import inference_policy
from cellmorphnet.model import create_model, data_config
from cellmorphnet.training import checkpoint, schedule
from cellmorphnet.training.config import TrainConfig

Events = Callable[..., None]
LOG_EVERY = 10  # batches between progress reports: each report reads the loss back (a device sync on GPUs)


# --- device and precision ------------------------------------------------------------------------


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU for ``auto``; otherwise the device asked for, if present."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available.", hint="Use --device auto.")
    if preference == "mps" and not has_mps:
        raise ConfigError("--device mps was asked for, but Apple MPS is not available.", hint="Use --device auto.")
    return torch.device(preference)


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # autocast dtype, or None for full precision
    scaler: bool  # whether a GradScaler is used (fp16 on CUDA only)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]


def pick_precision(device: torch.device, amp: str) -> Precision:
    """bf16 on CUDA where supported, else fp16 with a grad scaler; fp16 without scaler on MPS (the
    scaler is unsupported there); on CPU, bf16 only when asked."""
    if amp == "off":
        return Precision(None, False)
    if device.type == "cuda":
        if amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, False)
        return Precision(torch.float16, True)
    if device.type == "mps":
        return Precision(torch.float16, False) if amp in ("auto", "fp16") else Precision(torch.bfloat16, False)
    if amp == "auto":
        return Precision(None, False)
    if amp == "fp16":
        raise ConfigError("fp16 autocast is not supported on the CPU.", hint="Use --amp bf16 or --amp off.")
    return Precision(torch.bfloat16, False)


def autocast(device: torch.device, precision: Precision):
    if precision.dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


# --- loss ------------------------------------------------------------------------------------------


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


# --- data -----------------------------------------------------------------------------------------


def _data_size(name: str, cfg: TrainConfig, home: Path | None) -> int:
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
    taxonomy: Taxonomy
    data_sizes: dict[str, int]
    manifests: dict[str, dict[str, Any]]
    target_table: torch.Tensor  # rows: every (dataset, local label); columns: the model's classes
    target_offset: dict[str, int]  # dataset -> first row in target_table
    train: dict[str, DeviceArrays]
    val: dict[str, DeviceArrays]
    class_weights: torch.Tensor | None  # per target row


def load_data(cfg: TrainConfig, home: Path | None, device: torch.device) -> TrainData:
    sizes = {name: _data_size(name, cfg, home) for name in cfg.datasets}
    manifests = {name: store.read_manifest(store.prepared_path(name, s, home)) for name, s in sizes.items()}
    taxonomy = Taxonomy.build({name: m["classes"] for name, m in manifests.items()})
    rows, offsets = [], {}
    for name in cfg.datasets:
        offsets[name] = sum(r.shape[0] for r in rows)
        rows.append(taxonomy.target_matrix(name))
    table = torch.cat(rows).to(device)
    train, val = {}, {}
    for name, size in sizes.items():
        tr = store.load_split(name, size, "train", home)
        va = store.load_split(name, size, "val", home)
        if len(tr.labels) == 0 or len(va.labels) == 0:
            raise ConfigError(f"{name} has an empty train or val split.", hint=f"cellmorphnet prepare {name} --force")
        train[name] = DeviceArrays(tr.images, tr.labels, device)
        val[name] = DeviceArrays(va.images, va.labels, device)
    weights = None
    if cfg.class_weights:
        counts = torch.zeros(table.shape[0])
        for name, arr in train.items():
            counts[offsets[name] : offsets[name] + table_rows(taxonomy, name)] += torch.bincount(
                arr.labels.cpu(), minlength=table_rows(taxonomy, name)
            ).float()
        w = counts.sum() / (counts.clamp(min=1) * (counts > 0).sum())
        weights = w.to(device)
    return TrainData(taxonomy, sizes, manifests, table, offsets, train, val, weights)


def table_rows(taxonomy: Taxonomy, name: str) -> int:
    return len(taxonomy.targets[name])


# --- one epoch ---------------------------------------------------------------------------------------


def train_one_epoch(
    model: torch.nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    precision: Precision,
    cfg: TrainConfig,
    data: TrainData,
    on_batch: Callable[[int, int, float, float, float], None] | None = None,
) -> dict[str, float]:
    """One pass over the training batches with gradient accumulation; returns loss, accuracy, images/s.

    Each optimizer step accumulates ``accum_steps`` batches. The loss of every batch is divided by
    the number of samples (or total class weight) of its whole accumulation group, so the summed
    gradient equals that of one big batch, even when the last group is smaller.
    """
    model.train()
    schedule.freeze_norm_stats(model)
    plan = loader.plan()
    groups = [plan[i : i + cfg.accum_steps] for i in range(0, len(plan), cfg.accum_steps)]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    # Batches are built in this thread on purpose: a prefetching thread competed with the model's
    # own threads and cut throughput by 30-45 % on a 2-core CPU (docs/benchmarks.md).
    batches = loader.batches(plan)
    weights_cpu = data.class_weights.cpu() if data.class_weights is not None else None
    i = 0
    for group in groups:
        if weights_cpu is None:
            norm = float(sum(len(idx) for _, idx in group))
        else:  # from the CPU copies: no device round trip
            norm = float(
                sum(
                    weights_cpu[data.train[name].labels_cpu[idx] + data.target_offset[name]].sum()
                    for name, idx in group
                )
            )
        for _ in group:
            batch = next(batches)
            with autocast(device, precision):
                logits = model(batch.images)
            per_sample = coarse_cross_entropy(logits, batch.target_ids, data.target_table, cfg.label_smoothing)
            weighted = per_sample
            if data.class_weights is not None:
                weighted = per_sample * data.class_weights.index_select(0, batch.target_ids)
            loss = weighted.sum() / norm
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            with torch.no_grad():
                loss_sum += per_sample.detach().sum()
                hit = data.target_table[batch.target_ids, logits.detach().argmax(1)]
                correct += hit.sum()
            seen += len(batch.labels)
            i += 1
            if on_batch is not None and (i % LOG_EVERY == 0 or i == len(plan)):
                elapsed = time.perf_counter() - start
                on_batch(i, len(plan), loss_sum.item() / seen, correct.item() / seen, seen / max(elapsed, 1e-9))
        if scaler is not None:
            scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "loss": loss_sum.item() / max(seen, 1),
        "acc": correct.item() / max(seen, 1),
        "images_per_s": seen / max(elapsed, 1e-9),
        "time": elapsed,
    }


@torch.no_grad()
def predict_local(
    model: torch.nn.Module, loader: BatchLoader, data: TrainData, device: torch.device, precision: Precision
) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: local labels, local-space probabilities and per-sample losses."""
    model.eval()
    out: dict[str, dict[str, list]] = {}
    for batch in loader:
        with autocast(device, precision):
            logits = model(batch.images)
        losses = coarse_cross_entropy(logits, batch.target_ids, data.target_table)
        probs = logits.float().softmax(1)
        rows = data.target_table[data.target_offset[batch.dataset] :][: table_rows(data.taxonomy, batch.dataset)]
        local = probs @ rows.T  # summed probability of the classes each local label covers
        d = out.setdefault(batch.dataset, {"labels": [], "probs": [], "losses": []})
        d["labels"].append(batch.labels.cpu())
        d["probs"].append(local.cpu())
        d["losses"].append(losses.cpu())
    return {k: {kk: torch.cat(vv).numpy() for kk, vv in v.items()} for k, v in out.items()}


def evaluate(
    model: torch.nn.Module, loader: BatchLoader, data: TrainData, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """Validation metrics, each dataset in its own label space; the overall F1 is the mean of their macro-F1s."""
    from sklearn.metrics import f1_score

    per_dataset = {}
    for name, d in predict_local(model, loader, data, device, precision).items():
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


# --- the whole run ------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import timm

    return {
        "cellmorphnet": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weights only (not on norm parameters and biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )


def _empty_history() -> dict[str, list]:
    keys = (
        "epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1",
        "val_f1_per_class", "val_per_dataset", "epoch_time", "images_per_s",
    )  # fmt: skip
    return {k: [] for k in keys}


def fit(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    home: Path | None = None,
    resume: bool = False,
    events: Events | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``. Returns a summary with the final state.

    Ctrl-C ends the run cleanly with state ``interrupted``: ``last.pt`` holds the last finished
    epoch and ``--resume`` continues from there. Any other error marks the run ``crashed`` and is
    raised again.
    """
    emit = events or (lambda *a, **k: None)
    run_dir = Path(run_dir)
    with runs.RunLock(run_dir):
        return _fit_locked(cfg, run_dir, home, resume, emit)


def _fit_locked(cfg: TrainConfig, run_dir: Path, home: Path | None, resume: bool, emit: Events) -> dict[str, Any]:
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    state = None
    if resume:
        if not last_path.exists():
            raise RunError(f"{run_dir} has no checkpoint to resume from.", hint="Start it again without --resume.")
        state = checkpoint.load(last_path)
    elif (run_dir / runs.HISTORY).exists() or last_path.exists():
        raise RunError(
            f"{run_dir} already holds a run.",
            hint=f"Continue it with: cellmorphnet train --resume {run_dir}; or choose another --name.",
        )

    device = pick_device(cfg.device)
    precision = pick_precision(device, cfg.amp)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, home, device)
    model = create_model(
        cfg.model,
        num_classes=len(data.taxonomy.classes),
        pretrained=cfg.pretrained and cfg.weights is None,
        weights=Path(cfg.weights) if cfg.weights else None,
        drop_rate=cfg.drop_rate,
    ).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = data_config(model)
    image_size = cfg.image_size or max(data.data_sizes.values())
    train_loader = BatchLoader(
        data.train, data.target_offset, cfg.batch_size, image_size, norm["mean"], norm["std"],
        train=True, seed=cfg.seed, limit_batches=cfg.limit_batches, channels_last=cfg.channels_last,
    )  # fmt: skip
    val_loader = BatchLoader(
        data.val, data.target_offset, cfg.eval_batch_size, image_size, norm["mean"], norm["std"], train=False,
        channels_last=cfg.channels_last,
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    optimizer = _optimizer(model, cfg)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        schedule.warmup_cosine(
            cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio
        ),
    )
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None

    resolved = {
        "device": str(device),
        "precision": precision.name,
        "image_size": image_size,
        "data_sizes": data.data_sizes,
        "classes": list(data.taxonomy.classes),
        "taxonomy": data.taxonomy.to_dict(),
        "mean": norm["mean"],
        "std": norm["std"],
        "datasets": {
            name: {
                "size": data.data_sizes[name],
                "checksum": m["source"]["checksum"],
                "verified": m["source"]["verified"],
                "classes": m["classes"],
                "preprocessing": m.get("preprocessing", {}),
                "counts": {s: c["total"] for s, c in m["counts"].items()},
            }
            for name, m in data.manifests.items()
        },
        "steps_per_epoch": steps_per_epoch,
    }
    # How infer must turn a new full-size image into what this network saw (see inference.py).
    resolved["inference"] = inference_policy(resolved)
    history = _empty_history()
    start_epoch, best_f1, best_epoch, bad_epochs = 0, -1.0, None, 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{last_path} does not fit this run's model ({e}).") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state.get("rng", {}))
        start_epoch = int(state["epoch"])
        stop = state["early_stopping"]
        best_f1, best_epoch, bad_epochs = stop["best_f1"], stop["best_epoch"], stop["bad_epochs"]
        saved = state.get("history") or {}
        history = {k: list(saved.get(k, []))[:start_epoch] for k in _empty_history()}
        config_file = run_dir / runs.CONFIG
        if config_file.exists():  # a resume may extend --epochs or --patience: keep config.json truthful
            saved_config = read_json(config_file)
            if saved_config.get("config") != cfg.to_dict():
                write_json(config_file, {**saved_config, "config": cfg.to_dict(), "resumed": runs.now_iso()})
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            run_dir / runs.CONFIG,
            {"config": cfg.to_dict(), "resolved": resolved, "versions": _versions(), "created": runs.now_iso()},
        )

    log = open(run_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in finally

    def log_line(text: str) -> None:
        log.write(f"{runs.now_iso()} {text}\n")
        log.flush()

    heartbeat = runs.Heartbeat(run_dir, epochs_planned=cfg.epochs, epoch=start_epoch, batch=0, batches=0).start()
    log_line(f"{'resume at epoch ' + str(start_epoch) if resume else 'start'}: device {device}, {precision.name}")
    emit("start", run_dir=run_dir, resolved=resolved, start_epoch=start_epoch, epochs=cfg.epochs, resumed=resume)

    final_state = "finished"
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if bad_epochs >= cfg.patience:
                final_state = "early-stopped"
                break
            stage = schedule.stage_for_epoch(epoch, cfg.unfreeze_epochs)
            schedule.apply_stage(model, stage)
            train_loader.set_epoch(epoch)
            # Reseed per epoch (dropout and the like): a resumed run then repeats exactly what an
            # uninterrupted one would have done in this epoch.
            torch.manual_seed(cfg.seed * 1000 + epoch)
            heartbeat.update(epoch=epoch, batch=0, batches=len(train_loader), stage=stage)
            emit("epoch_start", epoch=epoch, stage=stage, batches=len(train_loader))
            lr = optimizer.param_groups[0]["lr"]

            def on_batch(i, n, loss, acc, ips, epoch=epoch):
                heartbeat.update(batch=i, batches=n)
                emit("batch", epoch=epoch, batch=i, batches=n, loss=loss, acc=acc, images_per_s=ips)

            tr = train_one_epoch(
                model, train_loader, optimizer, lr_schedule, scaler, device, precision, cfg, data, on_batch
            )
            va = evaluate(model, val_loader, data, device, precision)
            record = {
                "epoch": epoch + 1,
                "stage": stage,
                "lr": lr,
                "train_loss": tr["loss"],
                "train_acc": tr["acc"],
                "val_loss": va["loss"],
                "val_acc": va["acc"],
                "val_f1": va["f1"],
                "val_f1_per_class": va["per_class_f1"],
                "val_per_dataset": {
                    k: {kk: vv for kk, vv in v.items() if kk != "per_class_f1"} for k, v in va["per_dataset"].items()
                },
                "epoch_time": tr["time"],
                "images_per_s": tr["images_per_s"],
            }
            for k, v in record.items():
                history[k].append(v)
            improved = va["f1"] > best_f1
            if improved:
                best_f1, best_epoch, bad_epochs = va["f1"], epoch + 1, 0
            else:
                bad_epochs += 1
            ckpt = checkpoint.make(
                model, optimizer, lr_schedule, scaler, epoch + 1, cfg, resolved,
                {"best_f1": best_f1, "best_epoch": best_epoch, "bad_epochs": bad_epochs}, history,
            )  # fmt: skip
            with checkpoint.defer_interrupt():  # Ctrl-C here would leave last.pt and history.json apart
                checkpoint.save(ckpt, last_path)
                if improved:
                    checkpoint.save(ckpt, best_path)
                write_json(run_dir / runs.HISTORY, history)
            heartbeat.update(epoch=epoch + 1, batch=0, best_val_f1=best_f1, best_epoch=best_epoch)
            log_line(
                f"epoch {epoch + 1}/{cfg.epochs} [{stage}] train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                f"val loss {va['loss']:.4f} acc {va['acc']:.4f} f1 {va['f1']:.4f}{' *' if improved else ''} | "
                f"{tr['time']:.1f}s {tr['images_per_s']:.0f} img/s"
            )
            emit("epoch_end", record=record, improved=improved, best_f1=best_f1, best_epoch=best_epoch)
        else:
            if bad_epochs >= cfg.patience and len(history["epoch"]) < cfg.epochs:
                final_state = "early-stopped"
    except KeyboardInterrupt:
        final_state = "interrupted"
    except BaseException as e:
        heartbeat.close("crashed", error=f"{type(e).__name__}: {e}")
        log_line(f"crashed: {type(e).__name__}: {e}")
        log.close()
        raise
    heartbeat.close(final_state, best_val_f1=best_f1 if best_epoch else None, best_epoch=best_epoch)
    log_line(f"{final_state}; best val F1 {best_f1:.4f} at epoch {best_epoch}")
    log.close()
    summary = {
        "run_dir": str(run_dir),
        "state": final_state,
        "epochs_done": len(history["epoch"]),
        "epochs_planned": cfg.epochs,
        "best_val_f1": best_f1 if best_epoch else None,
        "best_epoch": best_epoch,
        "device": str(device),
        "precision": precision.name,
    }
    emit("end", summary=summary)
    return summary
