"""The cells a lab reviewed in `cellmorphnet serve`: list the cases, see the lab's own accuracy (stats), or export
the reviewed cells as a dataset (class sub-folders and cells.csv) to adapt a model with: cellmorphnet train --init
RUN --datasets folder:DIR."""

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


@app.command("stats")
def stats(
    ctx: typer.Context,
    db: DbArg = None,
    case: Annotated[str | None, typer.Option("--case", help="Only this case \\[default: every case].")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The lab's own accuracy: how often the model's answers were confirmed (overall, per type, per case, per day),
    Cohen's kappa between model and reviewers, the confusion, how often an answer given without a person (verdict
    classified) was changed, and two reviewers' agreement."""
    from cellmorphnet.reviews.stats import review_stats

    store = _open(ctx, db)
    try:
        result = review_stats(store, case)
    finally:
        store.close()
    output.result(result, lambda: _said_stats(result), as_json=as_json)


@app.command("report")
def report(
    ctx: typer.Context,
    case: Annotated[str, typer.Argument(help="The case to report.", show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The HTML file to write (prints to PDF from a browser).")
    ] = ...,
    db: Annotated[Path | None, typer.Option("--db", help="The review database \\[default: HOME/reviews.sqlite, "
                                            "serve's].", show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a case's report: one self-contained HTML file with its differential (count, %, 95% interval, nucleated
    red cells per 100 white cells), what awaits review, the cells by type, the model, the reviewers and when."""
    from cellmorphnet._io import atomic_path, check_writable
    from cellmorphnet.errors import InvalidData
    from cellmorphnet.reviews.report import render_case

    if out.suffix.lower() not in (".html", ".htm"):
        raise InvalidData(f"--out must end in .html, not '{out.suffix}'.")
    check_writable(out, folder=False)
    store = _open(ctx, db)
    try:
        page, summary = render_case(store, case)
    finally:
        store.close()
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    said = (f"Wrote the report of {case} to {out}: {summary['white_cells']} white cells counted, "
            f"{summary['awaiting_review']} await review ({summary['version']}).")  # fmt: skip
    output.result({**summary, "file": str(out)}, lambda: output.info(said), as_json=as_json)


def _said_stats(s) -> None:
    from rich.table import Table

    if not s["reviewed"]:
        output.info(f"No reviewed cells yet in {s['database']} ({s['cells']} stored). Review them in cellmorphnet "
                    "serve's review view.")  # fmt: skip
        return
    c = s["confirmed"]
    kappa = "" if s["kappa"] is None else f"; Cohen's kappa model against reviewers {s['kappa']:.2f}"
    output.info(f"{s['reviewed']} of {s['cells']} cells reviewed: the model's answer confirmed for {c['share']:.1%} "
                f"(95% interval {c['ci95'][0]:.1%}–{c['ci95'][1]:.1%}){kappa}.")  # fmt: skip
    for v, row in s["by_verdict"].items():
        what = {"classified": "answers given without a person (verdict classified)",
                "review": "cells the model sent to review", "unknown": "cells stored before verdicts"}[v]
        output.info(f"Of the {what}: {row['changed']} of {row['reviewed']} changed ({row['error_rate']:.1%}, "
                    f"95% interval {row['ci95'][0]:.1%}–{row['ci95'][1]:.1%}).")  # fmt: skip
    table = Table(title="Confirmed, per type the model said", title_justify="left")
    for col in ("type", "reviewed", "confirmed", "share"):
        table.add_column(col, justify="left" if col == "type" else "right", no_wrap=col == "type")
    for t, row in s["per_type"].items():
        table.add_row(t, str(row["reviewed"]), str(row["confirmed"]), f"{row['share']:.1%}")
    output.out.print(table)
    pair = s["reviewers"]["pair"]
    if pair:
        output.info(f"{pair['reviewers'][0]} and {pair['reviewers'][1]} both reviewed {pair['cells']} cells: they "
                    f"agree on {pair['agreement']:.1%} (kappa {pair['kappa']:.2f}).")  # fmt: skip


def _said(result, out) -> None:
    per = ", ".join(f"{c} {n}" for c, n in result["per_class"].items())
    output.info(f"Exported {result['cells']} reviewed cells to {out} ({per}).")
    if result["refused"]:
        ids = ", ".join(str(r["id"]) for r in result["refused"][:10])
        output.warn(f"Left out {len(result['refused'])} cells whose stored class is not a class name (cells {ids}"
                     f"{', …' if len(result['refused']) > 10 else ''}): the database was changed outside cellmorphnet.")
    output.info(f"Adapt a model to them: cellmorphnet train --init RUN --datasets folder:{out}")
