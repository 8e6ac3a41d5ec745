"""The cells a lab reviewed in `cellmorphnet serve`: list the cases, or export the reviewed cells as a dataset
(class sub-folders and cells.csv) to adapt a model with: cellmorphnet train --init RUN --datasets folder:DIR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import JsonFlag, home_of
from cellmorphnet.cli.output import output

NAME = "reviews"
app = typer.Typer(no_args_is_help=True, add_completion=False)

DbArg = Annotated[
    Path | None,
    typer.Argument(help="The review database \\[default: HOME/reviews.sqlite, serve's].", show_default=False),
]


def _open(ctx: typer.Context, db: Path | None):
    from cellmorphnet.errors import InvalidData
    from cellmorphnet.reviews.store import ReviewStore, store_path

    path = db or store_path(home_of(ctx))
    if not path.exists():
        raise InvalidData(f"{path} does not exist.", hint="Reviews are made in cellmorphnet serve's review view.")
    return ReviewStore(path, [], read_only=True)  # read, never changed


@app.command("list")
def list_cases(ctx: typer.Context, db: DbArg = None, as_json: JsonFlag = False) -> None:
    """The cases, with their cells and how many are reviewed."""
    from rich.table import Table

    store = _open(ctx, db)
    try:
        if as_json:
            output.print_json({"database": str(store.path), "cases": store.cases()})
            return
        table = Table(title=f"Cases in {store.path}", title_justify="left")
        for col in ("case", "opened", "cells", "reviewed"):
            table.add_column(col, justify="right" if col in ("cells", "reviewed") else "left")
        for c in store.cases():
            table.add_row(c["name"], c["created"][:19].replace("T", " "), str(c["cells"]), str(c["reviewed"]))
        output.out.print(table)
    finally:
        store.close()


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    db: DbArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="A new folder for the dataset.")] = ...,
    case: Annotated[str | None, typer.Option("--case", help="Only this case \\[default: every case].")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the reviewed cells as class sub-folders plus cells.csv (source file, box, predicted, reviewed class,
    reviewer, time). Refuses to write into an existing folder."""
    from cellmorphnet.reviews.export import export

    store = _open(ctx, db)
    try:
        result = export(store, out, case)
    finally:
        store.close()
    output.result(result, lambda: _said(result, out), as_json=as_json)


def _said(result, out) -> None:
    per = ", ".join(f"{c} {n}" for c, n in result["per_class"].items())
    output.info(f"Exported {result['cells']} reviewed cells to {out} ({per}).")
    if result["refused"]:
        ids = ", ".join(str(r["id"]) for r in result["refused"][:10])
        output.warn(f"Left out {len(result['refused'])} cells whose stored class is not a class name (cells {ids}"
                     f"{', …' if len(result['refused']) > 10 else ''}): the database was changed outside cellmorphnet.")
    output.info(f"Adapt a model to them: cellmorphnet train --init RUN --datasets folder:{out}")
