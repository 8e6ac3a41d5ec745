"""Turn fetched data into training-ready arrays with seeded splits and a manifest.

BCCD boxes become cell crops, LISC masks become leukocyte crops, folder:PATH reads your own
class folders. Each image is decoded once; running prepare again on unchanged input does nothing.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cellmorphnet.cli._options import DatasetsArg, ForceFlag, JsonFlag, home_of
from cellmorphnet.cli.output import output

NAME = "prepare"


def command(
    ctx: typer.Context,
    datasets: DatasetsArg,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", "-s", help="Image size in pixels. \\[default: 64; bloodmnist: the fetched size]"
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the splits that prepare makes itself.")] = 42,
    include_mixt: Annotated[
        bool, typer.Option("--include-mixt", help="LISC: keep the 'mixt' (mixed) folder as a class.")
    ] = False,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    from rich.table import Table

    from cellmorphnet.data.prepare import prepare

    results = []
    for name in datasets:
        options = {"include_mixt": True} if include_mixt and name == "lisc" else {}
        with output.progress(f"Preparing {name}") as cb:
            r = prepare(name, home=home_of(ctx), size=size, seed=seed, force=force, options=options, progress=cb)
        results.append(r)
        if not as_json:  # each as it is done
            _show(r, Table)
    output.result(
            [
                {
                    "dataset": r.dataset,
                    "size": r.size,
                    "path": r.path,
                    "unchanged": r.skipped,
                    "counts": r.manifest["counts"],
                    "classes": r.manifest["classes"],
                    "verified": r.manifest["source"]["verified"],
                    "warnings": r.warnings,
                }
                for r in results
            ], as_json=as_json,
        )  # fmt: skip


def _show(r, table_cls) -> None:
    """Print one prepared dataset: where it went, warnings, and a class-by-split table."""
    m = r.manifest
    verified = "" if m["source"]["verified"] else " [yellow](UNVERIFIED source)[/yellow]"
    head = "unchanged, kept" if r.skipped else "prepared"
    output.info(f"{r.dataset} at {r.size} px: {head}{verified} → {r.path}")
    for w in r.warnings:
        output.warn(w)
    table = table_cls(title=f"{r.dataset} ({r.size} px)", show_lines=False)
    table.add_column("class")
    for s in m["counts"]:
        table.add_column(s, justify="right")
    for i, c in enumerate(m["classes"]):
        table.add_row(c, *(f"{m['counts'][s]['per_class'][i]:,}" for s in m["counts"]))
    table.add_row("[bold]total[/bold]", *(f"[bold]{m['counts'][s]['total']:,}[/bold]" for s in m["counts"]))
    output.out.print(table)
