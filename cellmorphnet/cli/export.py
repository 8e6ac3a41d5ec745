"""Export a run's best model to ONNX or CoreML, check it, and optionally time it.

Works from the run folder alone (no dataset cache needed): the export is checked against the trained
model on real validation images kept in the run. ONNX is verified with onnxruntime against PyTorch. CoreML
packages convert on any OS; predictions (and so --benchmark) need macOS, and on other systems the
saved package's spec is validated instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import AcceptDataChangeFlag, JsonFlag, LatestRunArg, home_of
from cellmorphnet.cli.output import output

NAME = "export"


def command(
    ctx: typer.Context,
    run: LatestRunArg = None,
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or coreml.")] = "onnx",
    quantize: Annotated[str | None, typer.Option("--quantize", help="CoreML: fp16 or int8.")] = None,
    all_variants: Annotated[
        bool, typer.Option("--all", help="CoreML: write fp32, fp16 and int8 and compare them.")
    ] = False,
    benchmark: Annotated[bool, typer.Option("--benchmark", help="Time the export (CoreML: macOS only).")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file or folder. \\[default: RUN/export/]")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    device: Annotated[
        str, typer.Option("--device", help="Where --benchmark times PyTorch: auto, cuda, cuda:N, mps or cpu.")
    ] = "auto",
    accept_data_change: AcceptDataChangeFlag = False,
    as_json: JsonFlag = False,
) -> None:
    from cellmorphnet import export
    from cellmorphnet._io import check_writable
    from cellmorphnet.errors import ConfigError, ExportError
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model, reference_images

    if format not in ("onnx", "coreml"):
        raise ConfigError(f"--format must be onnx or coreml, not '{format}'.")
    if format == "onnx" and (quantize or all_variants):
        raise ConfigError("--quantize and --all apply to CoreML only.")
    if out is not None:  # a file, or a folder to write into (a CoreML package is a folder too)
        out = out.expanduser()
        check_writable(out, folder=format == "coreml" or out.is_dir())
    home = home_of(ctx)
    run_dir = runs.resolve_run(run, home)
    rm = load_run_model(run_dir, checkpoint, "cpu", accept_mismatch=accept_data_change)  # conversion runs on the CPU
    images = reference_images(run_dir, rm.record, home)
    result: dict = {"run": str(run_dir), "format": format}
    if format == "onnx":
        if out is None or out.is_dir():
            path = (out or runs.output_dir(run_dir, home, "export")) / f"{run_dir.name}.onnx"
        else:
            path = out
        with output.err.status("Exporting to ONNX…"):
            export.export_onnx(rm, path, images)
            check = export.verify_onnx(rm, path, images)
        result.update(path=str(path), size_bytes=path.stat().st_size, verification=check)
        if check["top1_agreement"] < 1.0 or check["max_abs_diff"] > 1e-3:
            raise ExportError(
                f"The ONNX model disagrees with PyTorch (max difference {check['max_abs_diff']:.2e}, "
                f"top-1 agreement {check['top1_agreement']:.1%}); {path} was kept for inspection."
            )
        if benchmark:
            with output.err.status("Timing PyTorch and onnxruntime…"):
                result["benchmark"] = export.benchmark_onnx(rm, path, device)
    else:
        variants = ["fp32", "fp16", "int8"] if all_variants else [quantize or "fp32"]
        folder = out if (out and (all_variants or out.suffix != ".mlpackage")) else None
        result["variants"] = []
        for v in variants:
            if folder is not None or out is None:
                path = (folder or runs.output_dir(run_dir, home, "export")) / f"{run_dir.name}-{v}.mlpackage"
            else:
                path = out
            with output.err.status(f"Converting to CoreML ({v})…"):
                export.export_coreml(rm, path, images, None if v == "fp32" else v)
                spec = export.coreml_spec_summary(path)
            entry = {"variant": v, "path": str(path), "spec": spec}
            if benchmark or all_variants:
                if export.coreml_can_predict():
                    entry["benchmark"] = export.benchmark_coreml(rm, path, images)
                else:
                    entry["benchmark"] = None
            result["variants"].append(entry)
        if (benchmark or all_variants) and not export.coreml_can_predict():
            result["note"] = "CoreML predictions need macOS: the packages' specs were validated, latency not measured."
    output.result(result, lambda: _show(result), as_json=as_json)


def _show(result) -> None:
    from rich.table import Table

    if result["format"] == "onnx":
        v = result["verification"]
        output.info(f"ONNX model: {result['path']} ({result['size_bytes'] / 1e6:.1f} MB)")
        output.info(
            f"Verified on {v['images']} real images: max |ONNX − PyTorch| = {v['max_abs_diff']:.2e}, "
            f"top-1 agreement {v['top1_agreement']:.1%}"
        )
        b = result.get("benchmark")
        if b:
            t = Table(title=f"Speed on this machine ({b['image_size']} px; PyTorch on {b['pytorch_device']}, "
                      "onnxruntime on the CPU)", title_justify="left")  # fmt: skip
            for col in ("runtime", "latency, batch 1 (ms)", "throughput, batch 32 (img/s)"):
                t.add_column(col, justify="right")
            t.add_row("PyTorch", f"{b['pytorch_latency_ms']:.1f}", f"{b['pytorch_images_per_s']:.0f}")
            t.add_row("onnxruntime", f"{b['onnxruntime_latency_ms']:.1f}", f"{b['onnxruntime_images_per_s']:.0f}")
            output.out.print(t)
        return
    t = Table(title="CoreML packages", title_justify="left")
    for col in ("variant", "size (MB)", "input", "classes", "latency (ms)", "top-1 agreement"):
        t.add_column(col)
    for e in result["variants"]:
        s = e["spec"]
        inp = s["inputs"][0]
        b = e.get("benchmark")
        t.add_row(
            e["variant"], f"{s['size_bytes'] / 1e6:.2f}", f"{inp['type']} {inp['width']}x{inp['height']}",
            str(len(s["class_labels"])), f"{b['latency_ms']:.1f}" if b else "macOS only",
            f"{b['top1_agreement']:.1%}" if b else "macOS only",
        )  # fmt: skip
    output.out.print(t)
    for e in result["variants"]:  # whole, to copy: a table column cuts long paths short
        output.info(f"Wrote {e['path']}")
    if result.get("note"):
        output.warn(result["note"])
