"""Download datasets into the cache, or import files you already have with --from.

BloodMNIST comes in the MedMNIST sizes 28, 64, 128 and 224 (checked against the MD5s in the
medmnist package); BCCD is the pinned GitHub commit (checked by content); LISC is checked by
layout and its sha256 is recorded on first use. Interrupted downloads resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import DatasetsArg, ForceFlag, JsonFlag, home_of
from cellmorphnet.cli.output import output

NAME = "fetch"


def command(
    ctx: typer.Context,
    datasets: DatasetsArg,
    size: Annotated[
        list[int] | None,
        typer.Option("--size", "-s",
                     help="BloodMNIST size(s): 28, 64, 128 or 224; repeat for several. \\[default: 28]"),
    ] = None,
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="Import this already-downloaded file or folder instead of downloading."),
    ] = None,
    allow_unverified: Annotated[
        bool, typer.Option("--allow-unverified", help="Accept a file whose checksum differs; it is marked unverified.")
    ] = False,
    force: ForceFlag = False,
    as_json: JsonFlag = False,
) -> None:
    from cellmorphnet.data.fetch import fetch
    from cellmorphnet.errors import InvalidData

    if from_ is not None and len(datasets) > 1:
        raise InvalidData("--from imports one dataset at a time.")
    results = []
    for name in datasets:
        with output.progress(f"Downloading {name}", unit="bytes") as cb:
            results += fetch(
                name,
                home=home_of(ctx),
                sizes=size,
                source=from_,
                allow_unverified=allow_unverified,
                force=force,
                progress=cb,
            )
    data = [{"dataset": r.dataset, "size": r.size, "action": r.action, "verified": r.verified, "path": r.path}
            for r in results]  # fmt: skip
    output.result(data, lambda: _show(results), as_json=as_json)


def _show(results) -> None:
    for r in results:
        label = r.dataset + (f" ({r.size} px)" if r.size else "")
        state = "[green]verified[/green]" if r.verified else "[yellow]UNVERIFIED[/yellow]"
        where = f" → {r.path}" if r.path else ""
        output.info(f"{label}: {r.action}, {state}{where}")
    names = dict.fromkeys(r.dataset for r in results)
    # train prepares what it needs itself; prepare is the step for other sizes or a look at the splits first
    output.info(f"Next: cellmorphnet train --datasets {','.join(names)}  (or: cellmorphnet prepare {' '.join(names)})")
