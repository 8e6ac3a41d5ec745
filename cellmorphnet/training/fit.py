"""The fit driver: start or resume a run, train epoch by epoch, checkpoint, stop early, report events.

Library code: it reports through the ``events`` callback and returns values; it never prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellmorphnet import __version__
from cellmorphnet._io import write_json
from cellmorphnet.data.loader import BatchLoader
from cellmorphnet.errors import CheckpointError, ConfigError, RunError
from cellmorphnet.model.network import create_model, data_config
from cellmorphnet.runs import checkpoint
from cellmorphnet.runs import folders as runs
from cellmorphnet.runs.config import TrainConfig
from cellmorphnet.runs.load import save_reference_images
from cellmorphnet.runs.parts import Calibration, Distributed
from cellmorphnet.runs.record import RunRecord, policy_for
from cellmorphnet.runtime import distributed
from cellmorphnet.runtime.devices import (
    make_scaler,
    pick_device,
    pick_precision,
    resolve_channels_last,
)
from cellmorphnet.training import schedule
from cellmorphnet.training.augment import AUGMENTATIONS, Augment
from cellmorphnet.training.calibration import calibrate_run, write_trust
from cellmorphnet.training.data import appearance, load_data, pick_data_size
from cellmorphnet.training.ema import WeightAverage
from cellmorphnet.training.engine import HISTORY_KEYS, adamw, evaluate, train_one_epoch

Events = Callable[..., None]


def _versions() -> dict[str, str]:
    import timm

    return {"cellmorphnet": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__),
            "numpy": np.__version__, "python": platform.python_version()}  # fmt: skip


@dataclass
class _Start:
    """Where a run starts: fresh, or from its last checkpoint."""

    record: RunRecord | None  # the saved record on resume
    state: dict[str, Any] | None  # the last checkpoint on resume
    data_changes: list[str]  # differences accepted with --accept-data-change


def _starting_point(cfg: TrainConfig, run_dir: Path, home: Path | None, resume: bool, accept: bool) -> _Start:
    last_path = run_dir / "checkpoints" / "last.pt"
    if not resume:
        if (run_dir / runs.HISTORY).exists() or last_path.exists():
            raise RunError(f"{run_dir} already holds a run.",
                           hint=f"Continue it with: cellmorphnet train --resume {run_dir}; or choose another --name.")
        return _Start(None, None, [])  # fmt: skip
    if not last_path.exists():
        raise RunError(f"{run_dir} has no checkpoint to resume from.", hint="Start it again without --resume.")
    state = checkpoint.load(last_path)
    record = RunRecord.load(run_dir) if (run_dir / runs.CONFIG).exists() else checkpoint.record_of(state)
    changes = record.check_data(home, accept=accept)
    return _Start(record, state, changes)


def fit(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    home: Path | None = None,
    resume: bool = False,
    accept_data_change: bool = False,
    events: Events | None = None,
    group: distributed.Group = distributed.SINGLE,
    sync_bn: bool | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``. Returns a summary with the final state.

    In a distributed job (``group``, see ``distributed``) every rank calls this: each trains on its block of
    every batch under DistributedDataParallel, rank 0 alone validates (and hands the others the result, so all
    agree on the best epoch and on early stopping) and writes the run folder. ``sync_bn`` converts batch norm to
    SyncBatchNorm (default: with CUDA; torch has no CPU implementation of it). A run may be resumed with any
    number of processes: the global batch, hence every step, is the same.

    Ctrl-C or SIGTERM ends the run cleanly with state ``interrupted``: ``last.pt`` holds the last
    finished epoch and ``--resume`` continues from there. Any other error marks the run
    ``crashed`` and is raised again. A resume reads the data sizes its record names and refuses
    changed data unless ``accept_data_change``.
    """
    emit = events or (lambda *a, **k: None)
    run_dir = Path(run_dir)
    lock = runs.RunLock(run_dir) if group.is_main else contextlib.nullcontext()
    with lock, checkpoint.stop_signals_raise():
        return _fit_locked(cfg, run_dir, home, resume=resume, accept=accept_data_change, emit=emit, group=group,
                           sync_bn=sync_bn)  # fmt: skip


def _fit_locked(
    cfg: TrainConfig, run_dir: Path, home: Path | None, *, resume: bool, accept: bool, emit: Events,
    group: distributed.Group, sync_bn: bool | None,
) -> dict[str, Any]:
    start = _starting_point(cfg, run_dir, home, resume, accept)
    device = pick_device(cfg.device)
    if group.active and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # distributed.start chose this rank's GPU
    sync_bn = group.active and (device.type == "cuda" if sync_bn is None else sync_bn)
    if sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs: torch has no SyncBatchNorm for CPUs.",
                          hint="Leave it out: each process then normalises over its own block of the batch.")
    precision = pick_precision(device, cfg.amp)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    torch.manual_seed(cfg.seed)
    if start.record is not None:
        sizes = start.record.data_sizes  # never picked again: a resumed run reads what it trained on
    else:
        # rank 0 alone prepares what is not prepared yet (the others would write the same folder at once)
        sizes = group.on_main(lambda: {name: pick_data_size(name, cfg, home) for name in cfg.datasets})
    data = load_data(cfg.datasets, sizes, home, device, cfg.class_weights)
    model = create_model(
        cfg.model,
        num_classes=len(data.taxonomy.classes),
        pretrained=cfg.pretrained and cfg.weights is None and start.state is None,
        weights=Path(cfg.weights) if cfg.weights and start.state is None else None,
        drop_rate=cfg.drop_rate,
    ).to(device)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = data_config(model)
    image_size = start.record.image_size if start.record else (cfg.image_size or max(sizes.values()))
    train_loader = BatchLoader(
        data.train, data.space.target_offset, cfg.batch_size, image_size, norm["mean"], norm["std"],
        train=True, seed=cfg.seed, limit_batches=cfg.limit_batches, channels_last=channels_last,
        augment=Augment(AUGMENTATIONS[cfg.augment]),
    )  # fmt: skip
    val_loader = BatchLoader(
        data.val, data.space.target_offset, cfg.eval_batch_size, image_size, norm["mean"], norm["std"],
        train=False, channels_last=channels_last,
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = make_scaler(device, precision)
    total_steps = cfg.epochs * steps_per_epoch
    lr_plan = schedule.LrPlan(total_steps, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
    start_epoch, best_f1, best_epoch, bad_epochs = 0, -1.0, None, 0
    state = start.state
    if state is not None:
        saved = start.record
        changed = {k: v for k, v in cfg.to_dict().items() if saved.config.to_dict().get(k) != v}
        record = dataclasses.replace(saved, config=cfg)
        if "lr_plan" in state:
            lr_plan = schedule.LrPlan.from_dict(state["lr_plan"])
        else:  # a format-1 checkpoint: its plan was the plain warmup-cosine of its saved config
            old = saved.config
            lr_plan = schedule.LrPlan(old.epochs * saved.steps_per_epoch,
                                      round(old.warmup_epochs * saved.steps_per_epoch), old.min_lr_ratio)  # fmt: skip
        done_steps = int(state["scheduler"].get("last_epoch", 0))
        lr_plan = lr_plan.extended(done_steps, total_steps)
        resumed = {"at": runs.now_iso(), "epoch": int(state["epoch"]), "device": str(device), "changed": changed,
                   "data_changes_accepted": start.data_changes, "world_size": group.world_size}  # fmt: skip
        record.resumed = [*saved.resumed, resumed]
    else:
        first = next(iter(data.datasets.values()))
        looks = appearance(data.train[first.name], first.classes)  # framing and colour, for infer
        record = RunRecord(
            config=cfg, device=str(device), precision=precision.name, image_size=image_size,
            classes=list(data.taxonomy.classes), taxonomy=data.taxonomy.to_dict(), mean=norm["mean"],
            std=norm["std"], datasets=data.datasets, steps_per_epoch=steps_per_epoch,
            inference=policy_for(first, image_size, norm["mean"], norm["std"], looks),
            versions=_versions(), created=runs.now_iso(), distributed=_job(group, sync_bn),
        )  # fmt: skip
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_plan.as_lambda())
    if state is not None:
        try:
            # with a weight average, "model" holds the average (what eval and infer use), "trained" the raw weights
            model.load_state_dict(state.get("trained", state["model"]))
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{run_dir / 'checkpoints' / 'last.pt'} does not fit this run's model ({e}).") \
                from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state.get("rng", {}))
        start_epoch = int(state["epoch"])
        stop = state["early_stopping"]
        best_f1, best_epoch, bad_epochs = stop["best_f1"], stop["best_epoch"], stop["bad_epochs"]
        saved_history = state.get("history") or {}
        history = {k: list(saved_history.get(k, []))[:start_epoch] for k in HISTORY_KEYS}
    elif group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        name = next(iter(data.val))
        save_reference_images(run_dir, data.val[name].images, data.val[name].labels_cpu, name)
    ema = None
    if cfg.ema > 0:
        ema = WeightAverage(model, cfg.ema, updates=int(state.get("ema_updates", 0)) if state else 0)
        if state is not None and "trained" in state:
            ema.module.load_state_dict(state["model"])
    if group.is_main:
        record.save(run_dir)
    return _epochs(
        cfg, run_dir, record, lr_plan=lr_plan, model=model, optimizer=optimizer, lr_schedule=lr_schedule,
        scaler=scaler, device=device, precision=precision, data=data, train_loader=train_loader,
        val_loader=val_loader, history=history, progress=(start_epoch, best_f1, best_epoch, bad_epochs),
        resume=resume, emit=emit, ema=ema, group=group,
    )  # fmt: skip


def _job(group: distributed.Group, sync_bn: bool) -> Distributed | None:
    """How a distributed run was launched, for its record (None for one process)."""
    if not group.active:
        return None
    return Distributed(group.world_size, group.backend, bool(sync_bn))


def _wrapped(model: torch.nn.Module, group: distributed.Group, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel in a distributed job (built again whenever the trainable parameters
    change: DDP registers them when it is built), else ``model`` itself."""
    if not group.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _NoHeartbeat:
    """What ranks other than 0 have instead of a heartbeat: rank 0 alone writes the run folder."""

    def start(self) -> _NoHeartbeat:
        return self

    def update(self, **fields: Any) -> None:
        pass

    def close(self, state: str, **fields: Any) -> None:
        pass


def _epochs(cfg, run_dir, record, *, lr_plan, model, optimizer, lr_schedule, scaler, device, precision, data,
            train_loader, val_loader, history, progress, resume, emit, ema=None,
            group: distributed.Group = distributed.SINGLE) -> dict[str, Any]:  # fmt: skip
    """The epoch loop, with the heartbeat, the log, checkpoints and the final state.

    With a weight average (``ema``) the average is what is validated, kept as best and saved as the
    checkpoints' model; ``last.pt`` also carries the trained weights to resume from. In a distributed job rank 0
    alone validates, writes and logs; the others take its validation result (``group.on_main``)."""
    start_epoch, best_f1, best_epoch, bad_epochs = progress
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    main = group.is_main
    log = open(run_dir / "train.log", "a", encoding="utf-8") if main else None  # noqa: SIM115 - closed below

    def log_line(text: str) -> None:
        if log is not None:
            log.write(f"{runs.now_iso()} {text}\n")
            log.flush()

    job = {"world_size": group.world_size} if group.active else {}
    heartbeat = (runs.Heartbeat(run_dir, epochs_planned=cfg.epochs, epoch=start_epoch, batch=0, batches=0, **job)
                 if main else _NoHeartbeat()).start()  # fmt: skip
    processes = f", {group.world_size} processes ({group.backend})" if group.active else ""
    log_line(f"{'resume at epoch ' + str(start_epoch) if resume else 'start'}: device {device}, {precision.name}"
             f"{processes}")  # fmt: skip
    emit("start", run_dir=run_dir, record=record, device=str(device), precision=precision.name,
         start_epoch=start_epoch, epochs=cfg.epochs, resumed=resume)  # fmt: skip

    final_state, reason = "finished", None
    net, net_stage = model, None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if bad_epochs >= cfg.patience:
                final_state = "early-stopped"
                break
            stage = schedule.stage_for_epoch(epoch, cfg.unfreeze_epochs)
            schedule.apply_stage(model, stage)
            if stage != net_stage:
                net, net_stage = _wrapped(model, group, device), stage
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
                model, train_loader, optimizer, lr_schedule, scaler=scaler, device=device, precision=precision, cfg=cfg,
                data=data, on_batch=on_batch, ema=ema, group=group, net=net,
            )  # fmt: skip
            va = group.on_main(lambda: evaluate(ema.module if ema else model, val_loader, data, device, precision))
            entry = {
                "epoch": epoch + 1, "stage": stage, "lr": lr, "train_loss": tr["loss"], "train_acc": tr["acc"],
                "val_loss": va["loss"], "val_acc": va["acc"], "val_f1": va["f1"],
                "val_f1_per_class": va["per_class_f1"],
                "val_per_dataset": {k: {kk: vv for kk, vv in v.items() if kk != "per_class_f1"}
                                    for k, v in va["per_dataset"].items()},
                "epoch_time": tr["time"], "images_per_s": tr["images_per_s"],
            }  # fmt: skip
            for k, v in entry.items():
                history[k].append(v)
            improved = va["f1"] > best_f1
            if improved:
                best_f1, best_epoch, bad_epochs = va["f1"], epoch + 1, 0
            else:
                bad_epochs += 1
            if main:  # rank 0 alone writes the run folder
                ckpt = checkpoint.make(
                    ema.module if ema else model, optimizer, lr_schedule, scaler=scaler, epoch=epoch + 1, record=record,
                    lr_plan=lr_plan, history=history,
                    early_stopping={"best_f1": best_f1, "best_epoch": best_epoch, "bad_epochs": bad_epochs},
                )  # fmt: skip
                if ema is not None:
                    ckpt["trained"], ckpt["ema_updates"] = model.state_dict(), ema.updates
            with checkpoint.defer_interrupt():  # a stop here would leave last.pt and history.json apart
                if main:
                    checkpoint.save(ckpt, last_path)
                    if improved:
                        # the trained weights under an average are only for resuming, which reads last.pt
                        checkpoint.save({k: v for k, v in ckpt.items() if k != "trained"}, best_path)
                    write_json(run_dir / runs.HISTORY, history)
            heartbeat.update(epoch=epoch + 1, batch=0, best_val_f1=best_f1, best_epoch=best_epoch)
            skipped = f", {tr['skipped_steps']} steps skipped (fp16 overflow)" if tr["skipped_steps"] else ""
            log_line(
                f"epoch {epoch + 1}/{cfg.epochs} [{stage}] train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                f"val loss {va['loss']:.4f} acc {va['acc']:.4f} f1 {va['f1']:.4f}{' *' if improved else ''} | "
                f"{tr['time']:.1f}s {tr['images_per_s']:.0f} img/s{skipped}"
            )
            emit("epoch_end", record=entry, improved=improved, best_f1=best_f1, best_epoch=best_epoch)
        else:
            if bad_epochs >= cfg.patience and len(history["epoch"]) < cfg.epochs:
                final_state = "early-stopped"
        if best_epoch is not None:
            c = group.on_main(
                lambda: calibrate_run(run_dir, record, model, val_loader=val_loader, data=data, device=device,
                                      precision=precision))  # fmt: skip
            record.calibration = Calibration.from_dict(c)
            log_line(f"calibrated: temperature {c['temperature']:.3f}, validation ECE {c['val_ece_before']:.4f} -> "
                     f"{c['val_ece_after']:.4f}")  # fmt: skip
            emit("calibrated", calibration=c)
            marks = group.on_main(lambda: write_trust(run_dir, record, model, data=data, device=device))
            log_line(f"trust reference: typicality marks {marks['typical']:.3f} and {marks['home']:.3f}")
    except KeyboardInterrupt as e:  # Ctrl-C, or checkpoint.Stopped for SIGTERM
        final_state = "interrupted"
        reason = f"stopped by {e.args[0]}" if isinstance(e, checkpoint.Stopped) else "stopped by SIGINT"
    except BaseException as e:
        if group.active and distributed.is_job_failure(e):  # another rank is gone: stop, resumable
            done = len(history["epoch"])
            heartbeat.close("interrupted", error="another process of the job stopped",
                            best_val_f1=best_f1 if best_epoch else None, best_epoch=best_epoch)  # fmt: skip
            log_line(f"interrupted: another process of the job stopped; {done} epochs done")
            if log is not None:
                log.close()
            raise distributed.JobBroken(
                f"{distributed.broken_message()} {done} of {cfg.epochs} epochs are in {last_path}.",
                hint=f"Resume with any number of processes, one included: cellmorphnet train --resume {run_dir}",
            ) from None
        heartbeat.close("crashed", error=f"{type(e).__name__}: {e}")
        log_line(f"crashed: {type(e).__name__}: {e}")
        if log is not None:
            log.close()
        raise
    heartbeat.close(final_state, best_val_f1=best_f1 if best_epoch else None, best_epoch=best_epoch,
                    **({"error": reason} if reason else {}))  # fmt: skip
    log_line(f"{final_state}{f' ({reason})' if reason else ''}; best val F1 {best_f1:.4f} at epoch {best_epoch}")
    if log is not None:
        log.close()
    summary = {
        "run_dir": str(run_dir),
        "state": final_state,
        "reason": reason,
        "epochs_done": len(history["epoch"]),
        "epochs_planned": cfg.epochs,
        "best_val_f1": best_f1 if best_epoch else None,
        "best_epoch": best_epoch,
        "device": str(device),
        "precision": precision.name,
        "calibration": record.calibration.to_dict() if record.calibration else None,
        "world_size": group.world_size,
    }
    emit("end", summary=summary)
    return summary
