"""Classify microscope images: any mix of files and folders (searched recursively), single-cell crops or
photos of whole smear fields.

A field (by default, an image whose shorter side has 400 pixels or more; --cells) is searched for every
white cell, at a scale read from its red cells, and each cell found is classified; a crop is one cell.
Each cell is framed like the training images (the white cell found and cropped at the training data's
scale; --crop centre for the exact BloodMNIST geometry) and resized as the training arrays were made. Each
cell's answer is its own, whatever else is sent with it; --lab NAME reads every image with a lab profile's
stain, contrast and scale (cellmorphnet lab create). Each cell gets a verdict: classified, or review with the
reason. One row per cell (CSV or JSON), and the differential of the classified cells, with how many await
review. Unreadable files are listed with the reason and skipped; the exit code is 3 when any were.
"""

from __future__ import annotations

from collections import Counter
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
    MaxCellsOption,
    RunArg,
    ScaleViewsFlag,
    StainContrastFlag,
    StainNormFlag,
    TtaFlag,
    home_of,
)
from cellmorphnet.cli.output import output

NAME = "infer"


def command(
    ctx: typer.Context,
    run: RunArg,
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write results to FILE.csv or FILE.json.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="How many classes to list per image.")] = 3,
    gradcam: Annotated[
        Path | None, typer.Option("--gradcam", help="Write a Grad-CAM overlay PNG per image here.")
    ] = None,
    sort_into: Annotated[
        Path | None, typer.Option("--sort-into", help="Copy (never move) each image into DIR/<predicted class>/.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    workers: Annotated[int, typer.Option("--workers", help="Decoding threads (1: in the calling thread).")] = 2,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    crop: CropOption = None,
    crop_fraction: Annotated[
        float | None,
        typer.Option("--crop-fraction", help="Centre crop of this fraction of the shorter side (1.0 = whole square)."),
    ] = None,
    stain_norm: StainNormFlag = None,
    stain_contrast: StainContrastFlag = None,
    colour_match: ColourMatchFlag = None,
    adapt_bn: AdaptBnFlag = None,
    tta: TtaFlag = None,
    scale_views: ScaleViewsFlag = None,
    classes_only: ClassesOption = None,
    min_confidence: Annotated[
        float,
        typer.Option("--min-confidence", help="Flag (not drop) predictions whose calibrated confidence is below this "
                     "(column low_confidence)."),
    ] = 0.0,
    cells: Annotated[
        str, typer.Option("--cells", help="auto: search fields (shorter side >= 400 px) for every white cell, take "
                          "smaller images as one cell; one: every image is one cell; all: search every image.")
    ] = "auto",
    max_cells: MaxCellsOption = None,
    count_edge_cells: Annotated[
        bool, typer.Option("--count-edge-cells", help="Count cells cut by a field's border in the differential "
                           "(a lab leaves them out; they are always listed).")
    ] = False,
    overlays: Annotated[
        Path | None, typer.Option("--overlays", help="Draw each field with its cells' boxes and classes into DIR.")
    ] = None,
    lab: LabOption = None,
    device: DeviceOption = "auto",
    engine: EngineOption = "auto",
    accept_data_change: AcceptDataChangeFlag = False,
    as_json: JsonFlag = False,
) -> None:
    from rich.table import Table

    from cellmorphnet._io import check_writable
    from cellmorphnet.errors import ConfigError, InvalidData
    from cellmorphnet.inference import check_results_path, inference_options, write_results
    from cellmorphnet.inference import sort_into as copy_sorted
    from cellmorphnet.inference.engine import is_engine, load_model
    from cellmorphnet.inference.output import check_sort_folder
    from cellmorphnet.inference.pipeline import files_of, infer_files
    from cellmorphnet.labs import profile as profiles
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runtime import distributed

    if batch_size < 1 or top_k < 1 or workers < 1:
        raise ConfigError("--batch-size, --top-k and --workers must be at least 1.")
    if not 0 <= min_confidence <= 1:
        raise ConfigError("--min-confidence must be between 0 and 1.")
    if out is not None:  # where the results cannot go: said before the work, not after it
        check_results_path(out)
    for folder in (gradcam, overlays):
        if folder is not None:
            check_writable(folder, folder=True)
    if sort_into is not None:
        check_sort_folder(sort_into)
    group = distributed.env_group()
    output.only_rank_zero(group.rank)
    home = home_of(ctx)
    run_dir = runs.resolve_run(run, home)
    group = distributed.start(device)
    device = distributed.local_device(group, device)
    files, missing = files_of(paths, group)
    if engine == "auto" and adapt_bn:  # AdaBN changes the network itself: PyTorch's
        engine = "torch"
    rm = load_model(run_dir, checkpoint, device, engine=engine, home=home, accept_mismatch=accept_data_change)
    for field in rm.record_mismatch:
        output.warn(f"Using the checkpoint's {field}: config.json differs (accepted).")
    lab_values, home_only = profiles.resolve(lab, rm, home)
    options = inference_options(rm.record, crop=crop, crop_fraction=crop_fraction, colour_match=colour_match,
                                adapt_bn=adapt_bn, classes=classes_only, tta=tta, stain_norm=stain_norm,
                                scale_views=scale_views, stain_contrast=stain_contrast, cells=cells,
                                max_cells=max_cells, lab=lab_values,
                                home_preprocessing=home_only)  # fmt: skip
    with output.progress("Classifying") as cb:
        result = infer_files(rm, files, options, missing=missing, batch_size=batch_size, top_k=top_k,
                             workers=workers, min_confidence=min_confidence, count_edge_cells=count_edge_cells,
                             keep_inputs=gradcam is not None, group=group, progress=cb)  # fmt: skip
    classes, policy, preds, summary = rm.classes, options.policy, result.predictions, result.summary
    ok, skipped, fields_seen, diff = result.classified, result.skipped, result.fields, summary["differential"]
    counts = summary["class_counts"]
    if out is not None and group.is_main:
        write_results(preds, out, summary)
    if gradcam is not None and ok:  # each process draws its own block's
        from cellmorphnet.inference.gradcam import write_gradcams

        cam = rm
        if is_engine(rm.model):  # Grad-CAM needs the network's gradients: PyTorch's model, loaded for it
            from cellmorphnet.runs.load import load_run_model

            cam = load_run_model(run_dir, checkpoint, device, accept_mismatch=accept_data_change)
        with output.progress("Grad-CAM") as cb:
            written = write_gradcams(cam.model, policy, ok, result.inputs, gradcam, channels_last=cam.channels_last,
                                     progress=cb)  # fmt: skip
        total = int(group.sum([len(written)])[0])
        output.info(f"Wrote {total} Grad-CAM overlays to {gradcam}")
    if not group.is_main:  # rank 0 copies, draws and reports for the job; the same exit code everywhere
        group.barrier()
        if result.exit_code:
            raise typer.Exit(result.exit_code)
        return
    group.barrier()
    if sort_into is not None:
        n = copy_sorted(ok, sort_into)
        output.info(f"Copied {n} images into {sort_into}/<class>/ (the originals are untouched; a cell of a field "
                     "as its crop).")  # fmt: skip
    if overlays is not None and fields_seen:
        from cellmorphnet.inference.output import write_overlays

        drawn = write_overlays(preds, overlays)
        output.info(f"Drew {len(drawn)} fields with their cells into {overlays}")

    if as_json:  # what --out x.json writes: the summary and one entry per cell; the exit code as below
        output.print_json({"summary": summary, "predictions": [p.to_dict() for p in preds]})
        if result.exit_code:
            raise typer.Exit(result.exit_code)
        return
    unit = "cells" if fields_seen else "images"
    table = Table(title=f"Predictions ({len(ok)} {unit}) with {run_dir.name}", title_justify="left")
    table.add_column("class")
    table.add_column(unit, justify="right")
    table.add_column("share", justify="right")
    table.add_column("for review", justify="right")
    review = Counter(p.predicted for p in ok if p.verdict == "review")
    for c in classes:
        n = counts[c]
        table.add_row(c, f"{n:,}", f"{n / max(len(ok), 1):.1%}", f"{review[c]:,}")
    output.out.print(table)
    _report_verdicts(summary["verdicts"])
    if fields_seen:
        _print_fields(fields_seen, diff, preds)
    if out is None and ok:
        for p in ok[:20]:
            where = f"#{p.cell.index} {p.cell.box}" if p.cell else ""
            output.out.print(f"{p.source}{where}  {p.predicted}  {p.confidence:.3f}")
        if len(ok) > 20:
            output.out.print(f"… {len(ok) - 20} more; use --out FILE.csv for all of them.")
    if out is not None:
        output.info(f"Wrote {out}")
    _report_framing_and_colour(ok)
    low = sum(p.low_confidence for p in ok)
    if low:
        output.warn(f"{low} of {len(ok)} predictions have a confidence below {min_confidence:g} (column "
                     "'low_confidence'): check those images by eye.")  # fmt: skip
    if skipped:
        rep = Table(title=f"Skipped files ({len(skipped)})", title_justify="left")
        rep.add_column("file", overflow="fold")  # the file is what the table is for: wrapped, never cut
        rep.add_column("reason", overflow="fold")
        for p in skipped:
            rep.add_row(str(p.path), p.error)
        output.err.print(rep)
        if not ok:
            raise InvalidData(f"None of the {len(preds)} files could be read; see the skipped-files report above.")
        output.err.print(f"[yellow]Skipped {len(skipped)} of {len(preds)} files[/yellow]; the others were classified.")
        raise typer.Exit(result.exit_code)


def _report_verdicts(v) -> None:
    """Classified and for-review counts, the reasons, and the next step where most cells need a person."""
    if not v["classified"] and not v["review"]:
        return
    reasons = "; ".join(f"{n} {why}" for why, n in v["reasons"].items())
    output.info(f"Verdicts: {v['classified']} classified, {v['review']} for review" + (f" ({reasons})." if reasons
                else ".") + " Columns 'verdict' and 'review_reason'.")  # fmt: skip
    if v["next_step"]:
        output.warn(v["next_step"])


def _print_fields(fields_seen, diff, preds) -> None:
    """The fields in a few words, and the differential as a lab reads it."""
    from rich.table import Table

    cells = sum(i.cells for i in fields_seen.values())
    empty = diff["fields_without_cells"]
    scales = sorted({round(i.diameter) for i in fields_seen.values() if i.diameter})
    scale = f"; red cells {scales[0]} px across ({7.5 / scales[0]:.3f} µm per pixel)" if len(scales) == 1 else ""
    output.info(f"{len(fields_seen)} fields: {cells} white cells found, {empty} fields without any{scale}.")
    n = diff["white_cells"]
    table = Table(title=f"Differential ({n} white cells)", title_justify="left")
    table.add_column("type")
    table.add_column("count", justify="right")
    table.add_column("%", justify="right")
    table.add_column("95% interval", justify="right")
    for t in diff["types"]:
        ci = f"{t['ci95'][0]:.1f}–{t['ci95'][1]:.1f}" if t["ci95"] else ""
        table.add_row(t["class"], str(t["count"]), "" if t["percent"] is None else f"{t['percent']:.1f}", ci)
    if diff["nucleated_red_cells"] is not None:
        per = diff["nrbc_per_100_wbc"]
        table.add_row("nucleated red cells", str(diff["nucleated_red_cells"]), "", "" if per is None else
                      f"{per:.1f} per 100 WBC")  # fmt: skip
    for c, k in diff["other"].items():
        table.add_row(f"other: {c}", str(k), "", "")
    output.out.print(table)
    notes = []
    if diff["edge_cells"]:
        notes.append(f"{diff['edge_cells']} cells cut by a field's border are "
                     + ("counted" if diff["edge_cells_counted"] else "left out (--count-edge-cells counts them)"))
    if diff["awaiting_review"]:
        notes.append(f"{diff['awaiting_review']} cells ({diff['awaiting_review_percent']:.1f}%) await review and are "
                     "not counted")  # fmt: skip
    if diff["low_confidence"]:
        notes.append(f"{diff['low_confidence']} below the confidence threshold are counted apart: check them by eye")
    if notes:
        output.info("; ".join(notes) + ".")


def _report_framing_and_colour(ok) -> None:
    """Say how the images were framed, and warn about those whose colours lie far from the training images'."""
    from cellmorphnet.inference import COLOUR_DISTANCE_WARN

    missed = [p for p in ok if not p.cell_found]
    if missed:
        output.warn(f"No cell was found in {len(missed)} of {len(ok)} images; they were cropped at the centre "
                     "(column 'framing') and are not counted as cells in the differential.")  # fmt: skip
    unusual = [p for p in ok if p.unusual]
    if unusual:
        output.warn(
            f"{len(unusual)} of {len(ok)} images look unlike the training data (colour distance above "
            f"{COLOUR_DISTANCE_WARN:g}; column 'unlike_training'): other stain, camera or white balance. Check "
            "the model on labelled images of your own first: cellmorphnet eval RUN --on FOLDER"
        )
