"""Adapt a trained run to one lab: fine-tune it on the lab's reviewed cells (``train --init RUN --datasets
folder:DIR``), so the model learns that lab's stain, camera and magnification.

- **The same preprocessing as infer.** The lab's images are framed, stain-normalised and stain-contrasted by
  the parent's own inference pipeline (``inference.prepare_set``: its framing and stain references, the lab's
  cells as one set), and the run records those set-level values (``InferencePolicy.lab_set``: crop side,
  nucleus density, stain contrast), which ``infer`` then uses for every set, so what the adapted model trains
  on is exactly what it is shown of that lab's other images. The rest of the parent's inference policy is kept.
- **Classes by name.** Folder names are matched to the parent's classes (``data.taxonomy.canonical``); a lab's
  own class (``smudge``, ``blast``) is added to the head, its row started from the mean of the others.
- **Replay.** Where the parent's training data is prepared here (checked against its record), every batch is
  half the lab's cells (each drawn equally often) and half the parent's training images (class-balanced), so
  what the parent knew holds.
  Without it (``replay`` off, or not prepared), the lab's cells alone, with the backbone's lower half frozen and
  the parent's own answers on them kept as a second target (``distill``, learning without forgetting): at ten
  cells per type, 0.906 on the other lab's remaining cells and PBC's test accuracy 0.850, against 0.608 without
  that term (``python -m benchmarks.adapt --no-replay``; docs/benchmarks.md).
- **Calibration on held-out reviewed cells.** A fifth of each class (one at least, from four cells on) is kept
  out of training and the temperature is fitted on it (with the parent's validation images where replayed),
  within a factor of 2 of the parent's (a handful of held-out cells, all right, would make every answer
  certain); with nothing to fit it on, the parent's. Then the held-out cells join the rest for a third as
  many steps again, at a tenth of the learning rate.
- **How many cells.** Each type's reviewed cells are counted in the record; a type with fewer than
  ``ENOUGH_PER_TYPE`` is named (``adaptation.few_cells``): on another lab's cells, ten per type reached 0.88-0.90
  balanced accuracy over six draws and twenty 0.93 (docs/benchmarks.md, "Adapting to a lab").
- **A run like any other.** The result is a run folder (record, checkpoints, history, calibration) that infer,
  serve, export and status read; its record names its parent (name and checkpoint digest).

Library code: reports through ``events``, never prints.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellmorphnet._io import file_digest, write_json
from cellmorphnet.errors import ConfigError, InvalidData
from cellmorphnet.reviews.store import ENOUGH_PER_TYPE
from cellmorphnet.runs import checkpoint
from cellmorphnet.runs import folders as runs
from cellmorphnet.training.engine import HISTORY_KEYS, adamw, optimizer_step
from cellmorphnet.training.lab_cells import LabCells, lab_cells
from cellmorphnet.training.replay import Replay, balanced, replay_data

Events = Callable[..., None]
FINAL_LR = 0.1
GRAD_CLIP = 1.0  # the gradient norm's ceiling, as training's default
DISTILL_TEMPERATURE = 2.0


@dataclass(frozen=True)
class AdaptSettings:
    """How a run is adapted (``train --init``); the defaults are the measured ones (benchmarks/adapt.py)."""

    steps: int = 300  # optimizer steps on the cells not held out
    final_share: float = 1 / 3  # then, calibrated, steps x this on every cell (held-out ones included), FINAL_LR x lr
    batch_size: int = 32  # lab_fraction of it the lab's cells, the rest replay (all the lab's without replay)
    lab_fraction: float = 0.5
    lr: float = 2e-4  # peak AdamW learning rate (warmup 10 %, cosine to 1 %)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    replay: bool | None = None  # None: replay the parent's training data where it is prepared here
    replay_per_class: int = 400  # parent training images kept per class for replay
    hold_out: float = 0.2  # of each class's cells, for the calibration
    seed: int = 42
    augment: str = "stain"
    # without replay: the parent's answers on the lab's cells kept as a second target (learning without forgetting,
    # Li & Hoiem 2016), weighted so, at DISTILL_TEMPERATURE; 0 = off
    distill: float = 0.3
    # the backbone's lower half kept as the parent had it (its stem and first blocks, and their batch-norm
    # statistics); None: only without replay
    freeze_lower: bool | None = None
    # class folders meant as the lab's own classes (--new-class); any other folder must name one of the parent's
    new_classes: tuple[str, ...] = ()


def split_held_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to train on and to hold out: ``fraction`` of each class (one at least, from four cells on; none at
    ``fraction`` 0)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(fraction * len(idx))) if len(idx) >= 4 and fraction > 0 else 0
        held += list(idx[:k])
        train += list(idx[k:])
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(held), dtype=np.int64)


def _adapted_model(rm, classes: list[str]) -> torch.nn.Module:
    """The parent's network with a head for ``classes``: its rows for the classes it had, the mean of those for
    new ones."""
    from cellmorphnet.model.network import create_model

    model = create_model(rm.record.config.model, num_classes=len(classes), pretrained=False)
    parent_state = {k: v.float() if v.is_floating_point() else v for k, v in rm.model.state_dict().items()}
    head = model.get_classifier()
    head_keys = {f"{n}" for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    body = {k: v for k, v in parent_state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or set(missing) - head_keys:
        raise ConfigError("The parent's network does not fit its own architecture.")
    old = rm.model.get_classifier()
    n_old = old.weight.shape[0]
    with torch.no_grad():
        head.weight[:n_old] = old.weight.float()
        head.bias[:n_old] = old.bias.float()
        if len(classes) > n_old:
            head.weight[n_old:] = old.weight.float().mean(0)
            head.bias[n_old:] = old.bias.float().min()
    return model


def adapt(parent_dir: Path, folder: Path, run_dir: Path, *, home: Path | None = None,
          settings: AdaptSettings = AdaptSettings(), device: str = "auto", events: Events | None = None,
          exclude: frozenset[Path] = frozenset()) -> dict[str, Any]:  # fmt: skip
    """Fine-tune the run in ``parent_dir`` on ``folder``'s cells (but ``exclude``) into a new run in ``run_dir``."""
    from cellmorphnet.data.loader import eval_transform, normalise
    from cellmorphnet.runs.load import load_run_model
    from cellmorphnet.training.augment import AUGMENTATIONS, Augment
    from cellmorphnet.training.calibration import fit_temperature

    emit = events or (lambda *a, **k: None)
    started = time.monotonic()
    if (run_dir / runs.CONFIG).exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(f"{run_dir} already holds a run.", hint="Choose another --name.")
    rm = load_run_model(parent_dir, "best", device)
    parent_sha = rm.checkpoint_sha256()
    emit("adapt_prepare", folder=folder)
    lab = lab_cells(rm, folder, new_classes=settings.new_classes, exclude=exclude)
    train_idx, held_idx = split_held_out(lab.labels, settings.hold_out, settings.seed)
    if len(train_idx) == 0:
        raise InvalidData(f"{folder} has too few cells to adapt on.")
    replay = None
    if settings.replay is not False:
        replay = replay_data(rm.record, lab.classes, home, settings.replay_per_class, settings.seed)
        if replay is None and settings.replay:
            names = ", ".join(f"{n} at {d.size} px" for n, d in rm.record.datasets.items())
            raise ConfigError(f"The parent's training data is not prepared here as it trained on it ({names}).",
                              hint="Prepare it (cellmorphnet prepare NAME --size N), or use --no-replay.")  # fmt: skip
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    dev = torch.device(rm.device)
    model = _adapted_model(rm, lab.classes).to(dev)
    if rm.channels_last:
        model = model.to(memory_format=torch.channels_last)
    rec = rm.record
    mean, std = torch.tensor(rec.mean, device=dev), torch.tensor(rec.std, device=dev)
    from cellmorphnet.training import schedule

    if settings.freeze_lower or (settings.freeze_lower is None and replay is None):
        schedule.apply_stage(model, "top")  # the lower half of the backbone kept as it was
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=settings.lr, weight_decay=settings.weight_decay)  # training's own optimizer
    # training's warmup-cosine: a tenth of the steps to warm up, down to 1 % of the peak
    lr_plan = schedule.LrPlan(settings.steps, max(1, settings.steps // 10), 0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_plan.as_lambda())
    augment = Augment(AUGMENTATIONS[settings.augment])
    gen = torch.Generator().manual_seed(settings.seed)
    lab_x, lab_y = torch.from_numpy(lab.arrays[train_idx]), torch.from_numpy(lab.labels[train_idx])
    half = round(settings.batch_size * settings.lab_fraction) if replay is not None else settings.batch_size
    size = rec.image_size
    model.train()
    schedule.freeze_norm_stats(model)  # frozen blocks keep their statistics
    losses, correct, seen = [], 0, 0
    emit("adapt_start", cells=len(lab.labels), train=len(train_idx), held_out=len(held_idx),
         replay=None if replay is None else len(replay.train_labels), steps=settings.steps,
         classes=lab.classes)  # fmt: skip

    def train_step(pool_x: torch.Tensor, pool_y: torch.Tensor) -> None:
        nonlocal correct, seen
        # every reviewed cell equally often (class-balanced drawing would show a class of one cell, a lone
        # basophil, in a fifth of every batch, and the model would learn that the lab is full of them)
        pick = torch.from_numpy(rng.integers(0, len(pool_y), half))
        xs, ys = [pool_x[pick]], [pool_y[pick]]
        if replay is not None:
            rp = torch.from_numpy(balanced(replay.train_labels, settings.batch_size - half, rng))
            images = torch.from_numpy(replay.train_images)[rp]
            xs.append(images if images.shape[1:] == lab.arrays.shape[1:] else _resized(images, lab.arrays.shape[1]))
            ys.append(torch.from_numpy(replay.train_labels)[rp])
        x = torch.cat(xs).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.cat(ys).to(dev)
        x = normalise(augment(x, size, gen), mean.cpu(), std.cpu()).to(dev)
        if rm.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
        if replay is None and settings.distill > 0:  # nothing of the parent's data: keep its answers on the lab's
            with torch.no_grad():
                teacher = rm.model(x).float()
            t = DISTILL_TEMPERATURE
            kept = torch.nn.functional.log_softmax(logits[:, : teacher.shape[1]] / t, dim=1)
            loss = loss + settings.distill * t * t * torch.nn.functional.kl_div(
                kept, torch.nn.functional.log_softmax(teacher / t, dim=1), log_target=True, reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(optimizer, None, params, GRAD_CLIP)
        losses.append(float(loss.detach()))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)

    final_steps = round(settings.steps * settings.final_share) if len(held_idx) else 0
    total = settings.steps + final_steps
    for step in range(settings.steps):
        train_step(lab_x, lab_y)
        sched.step()
        emit("adapt_step", step=step + 1, steps=total, loss=losses[-1])
    model.eval()

    def logits_of(images: np.ndarray) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), 128):
                x = eval_transform(torch.from_numpy(images[i : i + 128]).to(dev), size, rec.mean, rec.std)
                if rm.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(model(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(lab.classes))

    calib_x, calib_y = [lab.arrays[held_idx]], [lab.labels[held_idx]]
    if replay is not None:
        val = replay.val_images
        calib_x.append(val if val.shape[1:] == lab.arrays.shape[1:] else
                       _resized(torch.from_numpy(val), lab.arrays.shape[1]).numpy())  # fmt: skip
        calib_y.append(replay.val_labels)
    cx, cy = np.concatenate(calib_x), np.concatenate(calib_y)
    temperature, held = rec.temperature, {}  # nothing to fit it on (no replay, no class of 4 cells): the parent's
    if len(cy):
        logits = logits_of(cx)
        table = torch.eye(len(lab.classes))
        fitted = fit_temperature(logits, torch.from_numpy(cy).long(), table)
        # a few held-out cells, all right, would drive the temperature to its floor (every answer certain): it
        # stays within a factor of 2 of the parent's, fitted on thousands of validation images
        temperature = float(np.clip(fitted, rec.temperature / 2, rec.temperature * 2))
        if len(held_idx):
            pred = logits[: len(held_idx)].argmax(1).numpy()
            truth = lab.labels[held_idx]
            recalls = [float(np.mean(pred[truth == c] == c)) for c in np.unique(truth)]
            held = {"cells": len(held_idx), "accuracy": float(np.mean(pred == truth)),
                    "balanced_accuracy": float(np.mean(recalls))}  # fmt: skip
    if final_steps:
        # calibrated on them, the held-out cells now join the others for a few steps at a low learning rate: with
        # ten cells of a type, the two held out are a fifth of what the lab gave
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * FINAL_LR
        everything = np.arange(len(lab.labels))
        all_x, all_y = torch.from_numpy(lab.arrays[everything]), torch.from_numpy(lab.labels[everything])
        model.train()
        schedule.freeze_norm_stats(model)
        for step in range(final_steps):
            train_step(all_x, all_y)
            emit("adapt_step", step=settings.steps + step + 1, steps=total, loss=losses[-1])
        model.eval()
    trained = Trained(model, optimizer, sched, lr_plan, temperature, held, losses, correct / max(seen, 1),
                      time.monotonic() - started)  # fmt: skip
    summary = _write_run(run_dir, rm, lab, trained, parent_dir=parent_dir, parent_sha=parent_sha, settings=settings,
                         replay=replay, folder=folder)  # fmt: skip
    summary["lab_profile"] = _write_profile(run_dir, lab, folder, home)
    emit("adapt_end", summary=summary)
    return summary


def _resized(images_nhwc_uint8: torch.Tensor, side: int) -> torch.Tensor:
    from cellmorphnet.data.loader import resize_batch

    x = resize_batch(images_nhwc_uint8.permute(0, 3, 1, 2).float(), side)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class Trained:
    """What the fine-tuning loop ends with: the model and the optimizer's state, and what it measured."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    lr_plan: Any  # schedule.LrPlan
    temperature: float
    held: dict[str, Any]  # the held-out reviewed cells' accuracy ({} where none were held out)
    losses: list[float]
    train_acc: float
    seconds: float


def _write_run(run_dir: Path, rm, lab: LabCells, trained: Trained, *, parent_dir: Path, parent_sha: str,
               settings: AdaptSettings, replay: Replay | None, folder: Path) -> dict[str, Any]:  # fmt: skip
    """The adapted run's folder, as training writes one: record, checkpoints (training's, optimizer and schedule
    included), history (training's keys), heartbeat."""
    from cellmorphnet.data.taxonomy import Taxonomy, canonical
    from cellmorphnet.runs.parts import Adaptation, Calibration, Parent
    from cellmorphnet.runs.record import DatasetRecord

    rec = rm.record
    model, temperature, held, losses = trained.model, trained.temperature, trained.held, trained.losses
    name = f"folder:{Path(folder).resolve()}"
    counts = {"train": int(len(lab.labels) - held.get("cells", 0)), "val": int(held.get("cells", 0)), "test": 0}
    folder_classes = sorted(lab.folder_classes)
    lab_record = DatasetRecord(name=name, size=int(lab.arrays.shape[1]), checksum=_fingerprint(lab.files),
                               verified=False, classes=folder_classes,
                               preprocessing={"framing": "the parent's infer pipeline", "parent": rm.record.classes},
                               counts=counts, params={"init": str(parent_dir)})  # fmt: skip
    datasets = {**(rec.datasets if replay is not None else {}), name: lab_record}
    # the parent's classes in its order, then the lab's own; each dataset's labels onto them by name
    targets = {n: tuple((lab.classes.index(lab.folder_classes.get(c, canonical(c))),) for c in d.classes)
               for n, d in datasets.items()}  # fmt: skip
    taxonomy = Taxonomy(tuple(lab.classes), {n: tuple(d.classes) for n, d in datasets.items()}, targets)
    cfg = dataclasses.replace(rec.config, datasets=list(datasets), epochs=1, init=str(parent_dir))
    parent = Parent(Path(parent_dir).name, str(parent_dir), parent_sha, rm.epoch)
    fitted_on = [w for w, used in (("held-out reviewed cells", held),
                                   ("the parent's validation images", replay is not None)) if used]
    calibration = Calibration(round(float(temperature), 4),
                              " and ".join(fitted_on) or "nothing (the parent's temperature)")
    counts = np.bincount(lab.labels, minlength=len(lab.classes))
    per_class = {c: int(n) for c, n in zip(lab.classes, counts, strict=True) if n}
    adaptation = Adaptation(
        cells=int(len(lab.labels)), per_class=per_class,
        few_cells={c: n for c, n in per_class.items() if n < ENOUGH_PER_TYPE}, new_classes=lab.new_classes,
        held_out=held, steps=settings.steps, seconds=round(trained.seconds, 1), skipped=lab.skipped[:20],
        replay=None if replay is None else {"datasets": replay.datasets, "images": int(len(replay.train_labels))},
        skipped_total=len(lab.skipped), distill=settings.distill if replay is None else None,
    )  # fmt: skip
    inference = dataclasses.replace(rec.inference, lab_set=_plain(lab.lab_set))
    record = dataclasses.replace(rec, config=cfg, classes=list(lab.classes), taxonomy=taxonomy.to_dict(),
                                 inference=inference,
                                 datasets=datasets, calibration=calibration, created=runs.now_iso(), resumed=[],
                                 parent=parent, adaptation=adaptation)  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    history = {k: [None] for k in HISTORY_KEYS}
    history.update(epoch=[1], stage=["adapt"], lr=[trained.optimizer.param_groups[0]["lr"]],
                   train_loss=[float(np.mean(losses[-20:]))], train_acc=[trained.train_acc],
                   val_acc=[held.get("accuracy")], val_f1=[held.get("balanced_accuracy")],
                   epoch_time=[round(trained.seconds, 2)])  # fmt: skip
    early = {"best_f1": held.get("balanced_accuracy"), "best_epoch": 1, "bad_epochs": 0}
    state = checkpoint.make(model, trained.optimizer, trained.scheduler, scaler=None, epoch=1, record=record,
                            lr_plan=trained.lr_plan, early_stopping=early, history=history)  # fmt: skip
    with checkpoint.defer_interrupt():
        checkpoint.save(state, run_dir / "checkpoints" / "best.pt")
        checkpoint.save(state, run_dir / "checkpoints" / "last.pt")
        write_json(run_dir / runs.HISTORY, history)
        record.save(run_dir)
        runs.Heartbeat(run_dir, epochs_planned=1, epoch=1, batch=0, batches=0).close(
            "finished", best_val_f1=held.get("balanced_accuracy"), best_epoch=1)
    return {"run_dir": str(run_dir), "state": "finished", "parent": parent.to_dict(), "classes": lab.classes,
            "adaptation": adaptation.to_dict(), "calibration": calibration.to_dict(),
            "train_acc": trained.train_acc}  # fmt: skip


def _fingerprint(files: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(files):
        p = Path(f)
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"files:{h.hexdigest()}"


def _plain(lab_set: dict[str, Any]) -> dict[str, Any]:
    """The lab's set-level values as JSON takes them (exactly: infer repeats what the cells were prepared with)."""

    def plain(v):
        if v is None or isinstance(v, int | str):
            return v
        return [float(x) for x in v] if isinstance(v, list | tuple | np.ndarray) else float(v)

    return {k: plain(v) for k, v in lab_set.items()}


def _write_profile(run_dir: Path, lab: LabCells, folder: Path, home: Path | None) -> str | None:
    """The lab the run adapted to, as a lab profile named after the run (``--lab NAME`` for that lab's images with
    another run made from the same checkpoint; the adapted run uses these values by default anyway)."""
    from cellmorphnet.errors import ConfigError
    from cellmorphnet.inference.options import LabSet
    from cellmorphnet.labs import profile as profiles

    try:
        name = profiles.check_name(run_dir.name)
    except ConfigError:
        return None  # a run name a profile cannot take: the run keeps its lab's values all the same
    values = LabSet.from_dict(_plain(lab.lab_set), name=name)
    sha = file_digest(run_dir / "checkpoints" / "best.pt")
    profiles.save(profiles.LabProfile(name, run_dir.name, sha, profiles.now(), len(lab.labels),
                                      str(Path(folder).resolve()), values), home)  # fmt: skip
    return name
