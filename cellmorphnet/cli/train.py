"""Train a blood-cell classifier (EfficientNet-Lite0 with ImageNet weights by default).

AdamW with warmup and cosine decay, gradient accumulation, mixed precision on GPUs, progressive
unfreezing, gradient clipping and early stopping on validation macro-F1. Checkpoints every epoch;
Ctrl-C stops cleanly and --resume continues. Flags override a --config TOML file.

--init RUN --datasets folder:DIR adapts a trained run (the shipped bloodmnist included) to a lab's own
labelled cells, such as those reviewed in cellmorphnet serve: classes matched by name, new ones added,
the parent's training data replayed where it is prepared here; a few minutes on a CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import AcceptDataChangeFlag, home_of
from cellmorphnet.cli.output import output

NAME = "train"


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def command(
    ctx: typer.Context,
    datasets: Annotated[
        str | None,
        typer.Option(
            "--datasets", "-d", help="Comma-separated: sample, bloodmnist, bccd, lisc, folder:PATH. \\[default: sample]"
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="default (the best measured), original (the original design's settings) or "
                     "quick (tiny sets; the sample's own). Flags and --config override any single setting.",
                     show_default=False),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A TOML file with keys named like these flags.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name under the home's runs/ folder.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run folder anywhere (instead of --name).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue this run (a name, 'latest').")] = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="Adapt this trained run (a name, folder, 'latest', or the shipped bloodmnist) to "
                     "--datasets folder:DIR, a lab's labelled cells.", show_default=False),
    ] = None,
    replay: Annotated[
        bool | None,
        typer.Option("--replay/--no-replay", help="With --init: mix the parent's training data into every batch "
                     "\\[default: where it is prepared here].", show_default=False),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="With --init: optimizer steps. \\[default: 300]")] = None,
    new_class: Annotated[
        list[str] | None,
        typer.Option("--new-class", help="With --init: this class folder is a class of the lab's own, not one of the "
                     "model's (repeatable); any other folder must name one of the model's classes.",
                     show_default=False),
    ] = None,
    calibrate: Annotated[
        int | None,
        typer.Option("--calibrate", help="With --init: set N reviewed cells of each type aside from training and fit "
                     "the lab profile's conformal rule on them, at a 5% error rate (as lab calibrate does).",
                     show_default=False),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="timm architecture. \\[default: tf_efficientnet_lite0]")
    ] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="Start from this state dict file.")] = None,
    pretrained: Annotated[
        bool | None, typer.Option("--pretrained/--no-pretrained", help="ImageNet weights. \\[default: pretrained]")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Network input size, resized from the prepared data. \\[default: 96; "
                     "the data's own size in the quick and original recipes]"),
    ] = None,
    data_size: Annotated[int | None, typer.Option("--data-size", help="Prepared size to train from.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="\\[default: 20]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="\\[default: 32]")] = None,
    accum_steps: Annotated[
        int | None, typer.Option("--accum-steps", help="Batches per optimizer step. \\[default: 2]")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate. \\[default: 5e-4]")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="\\[default: 1e-4]")] = None,
    warmup_epochs: Annotated[float | None, typer.Option("--warmup-epochs", help="\\[default: 1]")] = None,
    grad_clip: Annotated[
        float | None, typer.Option("--grad-clip", help="Max gradient norm, 0 = off. \\[default: 1.0]")
    ] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing", help="\\[default: 0.1]")] = None,
    class_weights: Annotated[
        bool | None, typer.Option("--class-weights/--no-class-weights", help="Inverse-frequency loss weights.")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option("--ema", help="Decay of a moving average of the weights, validated and saved instead "
                     "(e.g. 0.998; 0 = off). \\[default: 0]"),
    ] = None,
    mixup: Annotated[float | None, typer.Option("--mixup", help="Mixup alpha, 0 = off. \\[default: 0]")] = None,
    cutmix: Annotated[float | None, typer.Option("--cutmix", help="CutMix alpha, 0 = off. \\[default: 0]")] = None,
    amp: Annotated[str | None, typer.Option("--amp", help="auto, bf16, fp16 or off. \\[default: auto]")] = None,
    augment: Annotated[
        str | None,
        typer.Option("--augment", help="stain: stain, hue, blur and JPEG jitter for other labs' slides; basic: "
                     "geometry and mild colour jitter. \\[default: stain]"),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cuda, mps or cpu. \\[default: auto]")] = None,
    unfreeze_epochs: Annotated[
        str | None,
        typer.Option(
            "--unfreeze-epochs", help="Head only until A, top half of the backbone until B: 'A,B'. \\[default: 1,2]"
        ),
    ] = None,
    patience: Annotated[int | None, typer.Option("--patience", help="Early-stopping patience. \\[default: 10]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="\\[default: 42]")] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last",
                     help="Channels-last memory layout. \\[default: on, except on Apple MPS]"),
    ] = None,
    limit_batches: Annotated[
        int | None, typer.Option("--limit-batches", help="Cap batches per epoch (quick checks).")
    ] = None,
    sync_bn: Annotated[
        bool | None,
        typer.Option("--sync-bn/--no-sync-bn", help="Under torchrun: batch-norm statistics over every process's "
                     "block of the batch (SyncBatchNorm). \\[default: on with CUDA GPUs; torch has none for CPUs]",
                     show_default=False),
    ] = None,
    accept_data_change: AcceptDataChangeFlag = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON.")] = False,
) -> None:
    from cellmorphnet.errors import ConfigError
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.config import load_toml, resolve, resume_config
    from cellmorphnet.runs.record import RunRecord
    from cellmorphnet.runtime import distributed

    home = home_of(ctx)
    try:
        unfreeze = [int(v) for v in _csv(unfreeze_epochs)] if unfreeze_epochs else None
    except ValueError:
        raise ConfigError("--unfreeze-epochs takes two numbers, e.g. 5,10.") from None
    flags = {
        "datasets": _csv(datasets), "recipe": recipe, "model": model, "weights": str(weights) if weights else None,
        "pretrained": pretrained, "image_size": image_size, "data_size": data_size, "epochs": epochs,
        "batch_size": batch_size, "accum_steps": accum_steps, "lr": lr, "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs, "grad_clip": grad_clip, "label_smoothing": label_smoothing,
        "class_weights": class_weights, "ema": ema, "mixup": mixup, "cutmix": cutmix, "amp": amp, "augment": augment,
        "device": device, "unfreeze_epochs": unfreeze,
        "patience": patience, "seed": seed, "channels_last": channels_last, "limit_batches": limit_batches,
    }  # fmt: skip
    group = distributed.env_group()
    output.only_rank_zero(group.rank)
    if name is not None:
        runs.check_run_name(name)
    if init:
        if group.active:
            raise ConfigError("train --init runs in one process (a few minutes on a CPU): launch it without torchrun.")
        own = ("datasets", "lr", "seed", "device", "model")
        _adapt(ctx, init, datasets, name, run_dir, replay, steps, lr, seed, device, as_json, model,
               [k for k, v in flags.items() if v is not None and k not in own], new_class or [], calibrate)
        return
    if replay is not None or steps is not None or new_class or calibrate is not None:
        raise ConfigError("--replay, --steps, --new-class and --calibrate go with --init.")
    if sync_bn and not group.active:
        raise ConfigError("--sync-bn is for a distributed job: launch with torchrun --nproc-per-node N -m cellmorphnet "
                          "train ...")  # fmt: skip
    group = distributed.start(device or "auto")
    if resume:
        target = group.on_main(lambda: runs.resolve_run(resume, home))
        if runs.is_packaged(target):
            raise ConfigError(f"{target.name} ships with cellmorphnet and cannot be resumed in place.",
                              hint=f"Train your own: cellmorphnet train --datasets {target.name}")  # fmt: skip
        cfg, ignored = resume_config(RunRecord.load(target).config.to_dict(), flags)
        if ignored:
            output.warn(f"--resume keeps the run's own settings; ignoring {', '.join(ignored)}.")
    else:
        file_values = load_toml(config) if config else {}
        cfg, kept = resolve(file_values, flags)
        if not as_json:
            shown = {"image_size": "the data's own"}  # (None means: as prepared)
            settings = ", ".join(f"{k.replace('_', '-')} {shown.get(k, 'none') if v is None else v}"
                                 for k, v in kept.items())  # fmt: skip
            output.info(f"Recipe: {cfg.recipe}{f' ({settings})' if settings else ''}; flags override any setting.")
        # one folder for the job: rank 0 names it (a new name holds the time)
        target = group.on_main(lambda: run_dir.expanduser().resolve() if run_dir else
                               runs.new_run_dir(home, name, cfg.datasets))  # fmt: skip

    from cellmorphnet.cli._train_view import TrainView
    from cellmorphnet.training.fit import fit

    view = TrainView(quiet=as_json)
    start = time.perf_counter()
    summary = fit(cfg, target, home=home, resume=bool(resume), accept_data_change=accept_data_change,
                  events=view.event, group=group, sync_bn=sync_bn)  # fmt: skip
    summary["wall_time_s"] = round(time.perf_counter() - start, 1)
    output.result(summary, lambda: view.finish(summary), as_json=as_json)
    if summary["state"] == "interrupted":
        raise typer.Exit(143 if summary.get("reason") == "stopped by SIGTERM" else 130)


def _adapt(ctx, init, datasets, name, run_dir, replay, steps, lr, seed, device, as_json, model, ignored,
           new_class, calibrate) -> None:  # fmt: skip
    """train --init: adapt a run to a lab's cells (adapt)."""
    import dataclasses

    from cellmorphnet.data.registry import FOLDER_PREFIX
    from cellmorphnet.errors import ConfigError
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.training.finetune import AdaptSettings, adapt

    home = home_of(ctx)
    names = _csv(datasets) or []
    if len(names) != 1 or not names[0].startswith(FOLDER_PREFIX):
        raise ConfigError("--init adapts a run to one folder of a lab's labelled cells: --datasets folder:DIR.",
                          hint="Export reviewed cells with: cellmorphnet reviews export --out DIR")  # fmt: skip
    folder = Path(names[0][len(FOLDER_PREFIX) :]).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder.", hint="Use folder:PATH with one sub-folder per class.")
    if ignored:
        output.warn(f"--init adapts with its own settings; ignoring {', '.join(sorted(ignored))}.")
    parent = runs.resolve_run(init, home)
    from cellmorphnet.runs.record import RunRecord

    architecture = RunRecord.load(parent).config.model
    if model is not None and model != architecture:
        raise ConfigError(f"{parent.name} is a {architecture}; --init keeps its architecture, not {model}.",
                          hint="Leave out --model, or train a run of that architecture without --init.")  # fmt: skip
    settings = AdaptSettings()
    changes = {k: v for k, v in {"replay": replay, "steps": steps, "lr": lr, "seed": seed}.items() if v is not None}
    settings = dataclasses.replace(settings, **changes, new_classes=tuple(new_class))
    if calibrate is not None and calibrate < 1:
        raise ConfigError("--calibrate takes how many reviewed cells of each type to set aside (10 or so).")
    if settings.steps < 1 or settings.lr <= 0:
        raise ConfigError("--steps must be at least 1 and --lr positive.")
    target = run_dir.expanduser().resolve() if run_dir else runs.new_run_dir(home, name, [f"{parent.name}-adapted"])
    with output.progress("Adapting", unit="steps") as bar:

        def events(kind: str, **info) -> None:
            if kind == "adapt_prepare" and not as_json:
                output.info(f"Reading {info['folder']} as {parent.name}'s infer sees it …")
            elif kind == "adapt_step":
                bar(info["step"], info["steps"])

        if calibrate is None:
            summary = adapt(parent, folder, target, home=home, settings=settings, device=device or "auto",
                            events=events)  # fmt: skip
        else:
            from cellmorphnet.training.lab_conformal import adapt_and_calibrate

            summary = adapt_and_calibrate(parent, folder, target, per_type=calibrate, alpha=0.05, home=home,
                                          settings=settings, device=device or "auto", events=events)  # fmt: skip
    if as_json:
        output.print_json(summary)
        return
    a = summary["adaptation"]
    replayed = (f"replaying {a['replay']['images']:,} of the parent's training images" if a["replay"]
                else "without replay (the parent's training data is not prepared here)")  # fmt: skip
    output.info(f"Adapted {parent.name} to {a['cells']} cells of {folder} in {a['seconds']:.0f} s, {replayed}.")
    if a["new_classes"]:
        output.info(f"New classes: {', '.join(a['new_classes'])}.")
    if a["skipped"]:
        shown = "; ".join(f"{f} ({why})" for f, why in a["skipped"][:10])
        more = f"; … {a['skipped_total'] - 10} more" if a["skipped_total"] > 10 else ""
        output.warn(f"Skipped {a['skipped_total']} files that could not be read: {shown}{more}.")
    if a["few_cells"]:
        from cellmorphnet.reviews.store import ENOUGH_PER_TYPE

        few = ", ".join(f"{c} {n}" for c, n in a["few_cells"].items())
        output.warn(f"Few reviewed cells of {few}: on another lab's cells, 10 per type reached 0.88-0.90 balanced "
                     f"accuracy and 20 reached 0.93. Review at least {ENOUGH_PER_TYPE} of each type, from every "
                     "stain and camera the lab uses, and adapt again.")  # fmt: skip
    held = a["held_out"]
    if held:
        t = summary["calibration"]["temperature"]
        output.info(f"Held-out reviewed cells ({held['cells']}): accuracy {held['accuracy']:.3f}, balanced "
                     f"{held['balanced_accuracy']:.3f}; temperature {t:.3f}.")  # fmt: skip
    output.info(f"Run: {summary['run_dir']} (use it as any run: cellmorphnet infer {Path(summary['run_dir']).name} …)")
    conformal = summary.get("conformal")
    if conformal:
        right = conformal["classified_right"]
        output.info(f"Lab profile {summary['lab_profile']} calibrated on {conformal['cells']} cells set aside from "
                    f"training: at {conformal['alpha']:.0%} error, the sets held the true type for "
                    f"{conformal['coverage']:.1%}; {conformal['classified']:.0%} of those cells would be classified"
                    + (f", {right:.1%} of them right." if right is not None else "."))  # fmt: skip
    elif summary.get("lab_profile"):
        # the held-out cells trained in the final steps: a stated error rate needs cells the run never learned from
        output.info(f"For a stated error rate, review about 10 more cells of each type that this run did not learn "
                    f"from, then: cellmorphnet lab calibrate {summary['lab_profile']} --from DB|FOLDER "
                    f"--run {Path(summary['run_dir']).name} (or adapt with --calibrate 10)")  # fmt: skip
