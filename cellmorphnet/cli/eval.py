"""Evaluate a run: per-class metrics, confusion matrix, calibration and the generalisation gap.

Uses the run's best checkpoint on a prepared split (test by default), each dataset in its own label
space. Prints tables, checks the original design's success criteria, and writes metrics.json and
PNG plots (confusion matrix, per-class F1, reliability diagram).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import (
    AcceptDataChangeFlag,
    AdaptBnFlag,
    ClassesOption,
    ColourMatchFlag,
    CropOption,
    DeviceOption,
    EngineOption,
    JsonFlag,
    LabOption,
    LatestRunArg,
    ScaleViewsFlag,
    StainContrastFlag,
    StainNormFlag,
    TtaFlag,
    home_of,
)
from cellmorphnet.cli.output import output

NAME = "eval"


def command(
    ctx: typer.Context,
    run: LatestRunArg = None,
    split: Annotated[str, typer.Option("--split", help="test or val.")] = "test",
    datasets: Annotated[
        str | None, typer.Option("--datasets", help="Comma-separated subset of the run's datasets.")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for metrics.json and plots. \\[default: RUN/eval/SPLIT]")
    ] = None,
    on: Annotated[
        Path | None,
        typer.Option("--on", help="Score the run on your own labelled images instead: a folder with one sub-folder "
                     "per class, preprocessed exactly as infer does.", show_default=False),
    ] = None,
    classes_only: ClassesOption = None,
    crop: CropOption = None,
    stain_norm: StainNormFlag = None,
    stain_contrast: StainContrastFlag = None,
    colour_match: ColourMatchFlag = None,
    adapt_bn: AdaptBnFlag = None,
    tta: TtaFlag = None,
    scale_views: ScaleViewsFlag = None,
    lab: LabOption = None,
    device: DeviceOption = "auto",
    engine: EngineOption = "auto",
    accept_data_change: AcceptDataChangeFlag = False,
    as_json: JsonFlag = False,
) -> None:
    from cellmorphnet._io import check_writable
    from cellmorphnet.errors import ConfigError
    from cellmorphnet.evaluation.report import evaluate_run, write_report
    from cellmorphnet.runs import folders as runs

    if split not in ("test", "val"):
        raise ConfigError(f"--split must be test or val, not '{split}'.")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint must be best or last, not '{checkpoint}'.")
    if out is not None:
        check_writable(out, folder=True)
    home = home_of(ctx)
    run_dir = runs.resolve_run(run, home)
    if on is not None:
        target = out or _free(runs.output_dir(run_dir, home, "eval", f"on-{Path(on).expanduser().resolve().name}"))
        _eval_on(run_dir, on, checkpoint, device, accept_data_change, classes_only, crop, colour_match, adapt_bn, tta,
                 stain_norm, target, as_json, scale_views, stain_contrast, lab, home, engine)  # fmt: skip
        return
    subset = [d.strip() for d in datasets.split(",") if d.strip()] if datasets else None
    with output.progress(f"Evaluating ({split} and val)" if split == "test" else "Evaluating", unit="batches") as cb:
        report = evaluate_run(run_dir, home=home, split=split, datasets=subset, which=checkpoint, device=device,
                              accept_data_change=accept_data_change, tta=tta, progress=cb)  # fmt: skip
    for change in report["data_changes_accepted"]:
        output.warn(f"Evaluating on changed data (accepted): {change}")
    out_dir = out or runs.output_dir(run_dir, home, "eval", split)
    files = write_report(report, out_dir)
    def human() -> None:
        _show(report)
        output.info(f"Wrote {len(files)} files to {out_dir}")

    output.result(report, human, as_json=as_json)


def _free(folder: Path) -> Path:
    """``folder``, or ``folder-2``, ``-3``... where an earlier report is there: a report is never overwritten unless
    --out names its folder."""
    candidate, n = folder, 1
    while (candidate / "metrics.json").exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


def _eval_on(run_dir, folder, checkpoint, device, accept, classes_only, crop, colour_match, adapt_bn, tta, stain_norm,
             out, as_json, scale_views=None, stain_contrast=None, lab=None, home=None, engine="auto"):  # fmt: skip
    from cellmorphnet._io import write_json
    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.evaluation.report import plot_dataset
    from cellmorphnet.inference import inference_options
    from cellmorphnet.inference.engine import load_model
    from cellmorphnet.labs import profile as profiles

    rm = load_model(run_dir, checkpoint, device, engine="torch" if adapt_bn and engine == "auto" else engine, home=home,
                    accept_mismatch=accept)  # fmt: skip
    lab_values, home_only = profiles.resolve(lab, rm, home)
    options = inference_options(rm.record, crop=crop, colour_match=colour_match, adapt_bn=adapt_bn,
                                classes=classes_only, tta=tta, stain_norm=stain_norm, scale_views=scale_views,
                                stain_contrast=stain_contrast, lab=lab_values,
                                home_preprocessing=home_only)  # fmt: skip
    with output.progress("Classifying") as cb:
        report = evaluate_folder(rm, folder, options, progress=cb)
    report.update(run=str(run_dir), checkpoint=str(rm.checkpoint), epoch=rm.epoch)
    out_dir = out
    write_json(out_dir / "metrics.json", report)
    files = [out_dir / "metrics.json"]
    if report["metrics"]:
        files += plot_dataset(report["metrics"], out_dir, "on")
    if as_json:
        output.print_json(report)
        return
    for name, n in report["unknown_folders"].items():
        output.warn(f"Folder '{name}' ({n} images) matches none of the run's classes; it was left out.")
    if report["skipped"]:
        output.warn(f"{len(report['skipped'])} files could not be read and were left out (listed in metrics.json).")
    if report["metrics"]:
        entry = {"metrics": report["metrics"]}
        _show({"split": f"on {Path(folder).name}", "epoch": report["epoch"], "datasets": {"your images": entry}})
        key = f"balanced_accuracy_min{report['min_images']}"
        if report[key] is not None:
            output.out.print(f"Balanced accuracy over the classes with at least {report['min_images']} images: "
                              f"{report[key]:.4f}")  # fmt: skip
    framed = report["framing"]
    output.info("Framing: " + ", ".join(f"{k} {v}" for k, v in framed.items()) + "; adaptation: "
                 + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in report["adaptation"].items() if v is not None))
    if report["unlike_training"]:
        output.warn(f"{report['unlike_training']} images look unlike the training data (colour).")
    output.info(f"Wrote {len(files)} files to {out_dir}")


def _show(report) -> None:
    from rich.table import Table

    split = report["split"]
    for name, entry in report["datasets"].items():
        m = entry["metrics"]
        head = Table(title=f"{name}: {split} split ({m['n']:,} images), checkpoint of epoch {report['epoch']}",
                     title_justify="left")  # fmt: skip
        for col in ("accuracy", "balanced acc.", "macro-F1", "macro AUC (OvR)", "ECE"):
            head.add_column(col, justify="right")
        auc = "—" if m["macro_auc_ovr"] is None else f"{m['macro_auc_ovr']:.4f}"
        head.add_row(
            f"{m['accuracy']:.4f}", f"{m['balanced_accuracy']:.4f}", f"{m['macro_f1']:.4f}", auc, f"{m['ece']:.4f}"
        )
        output.out.print(head)

        per = Table(title="Per class", title_justify="left")
        for col in ("class", "precision", "recall", "F1", "support"):
            per.add_column(col, justify="left" if col == "class" else "right")
        for c, v in m["per_class"].items():
            style = "" if v["f1"] >= 0.8 else ("yellow" if v["f1"] > 0.75 else "red")
            per.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"[{style}]{v['f1']:.3f}[/{style}]" if style
                        else f"{v['f1']:.3f}", f"{v['support']:,}")  # fmt: skip
        output.out.print(per)

        cm = Table(title="Confusion matrix (rows: true, columns: predicted)", title_justify="left")
        cm.add_column("")
        short = [c[:8] for c in m["classes"]]
        for c in short:
            cm.add_column(c, justify="right")
        for c, row in zip(short, m["confusion_matrix"], strict=True):
            cm.add_row(c, *(f"[bold]{v}[/bold]" if i == short.index(c) else str(v) for i, v in enumerate(row)))
        output.out.print(cm)

        if "criteria" not in entry:
            continue
        if "generalisation_gap" in entry:
            gap = entry["generalisation_gap"]
            output.out.print(
                f"Generalisation gap{' (8-view average)' if report.get('tta') else ''}: validation macro-F1 "
                f"{entry['val_metrics']['macro_f1']:.4f} − test "
                f"{m['macro_f1']:.4f} = {gap * 100:+.2f} points"
            )
        crit = Table(title="Success criteria (original design)", title_justify="left")
        crit.add_column("criterion")
        crit.add_column("value", justify="right")
        crit.add_column("")
        for row in entry["criteria"]:
            if row["value"] is None:
                value = "—"
            else:  # a gap in points reads as points (2.1 points, not 0.0210)
                value = f"{row['value'] * 100:+.2f} points" if row.get("unit") == "points" else f"{row['value']:.4f}"
            crit.add_row(row["criterion"], value, "[green]PASS[/green]" if row["pass"] else "[red]FAIL[/red]")
        output.out.print(crit)
