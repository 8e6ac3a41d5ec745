"""Lab profiles: a lab's stain, contrast and scale measured once from a folder of its images (labels not needed), then
used for every image with --lab NAME on infer, eval --on and serve; calibrated on the lab's reviewed cells, a
profile also states an error rate for the cells it classifies without a person."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellmorphnet.cli._options import DeviceOption, JsonFlag, home_of
from cellmorphnet.cli.output import output

NAME = "lab"
app = typer.Typer(no_args_is_help=True, add_completion=False)

NameArg = Annotated[
    str, typer.Argument(help="The profile's name (letters, digits, '.', '_', '-').", show_default=False)
]
RunOption = Annotated[str, typer.Option("--run", help="The run to measure with (a name, a folder, or bloodmnist).")]


def _model(ctx: typer.Context, run: str, device: str):
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model

    return load_run_model(runs.resolve_run(run, home_of(ctx)), "best", device)


def _values(p) -> str:
    v = p.values
    parts = [f"crop side {v.side:.1f} px" if v.side else "crop side: each image's own",
             "stain " + (", ".join(f"{x:.3f}" for x in v.stain) if v.stain else "none"),
             f"contrast {v.contrast:.3f}" if v.contrast else "contrast none",
             f"red cells {v.rbc_diameter:.1f} px" if v.rbc_diameter else "red cells: each field's own"]  # fmt: skip
    if v.conformal:
        parts.append(f"conformal at {v.conformal.alpha:g} from {v.conformal.cells} reviewed cells")
    return "; ".join(parts)


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameArg,
    folder: Annotated[Path, typer.Argument(help="A folder of the lab's images (crops or smear fields).")],
    run: RunOption = "bloodmnist",
    force: Annotated[bool, typer.Option("--force", help="Measure again over an existing profile.")] = False,
    device: DeviceOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Measure a lab's stain, contrast and scale from a folder of its images and store them as a profile."""
    from cellmorphnet.labs.build import create_profile

    rm = _model(ctx, run, device)
    output.info(f"Measuring {folder} with {rm.run_dir.name} …")
    p = create_profile(rm, name, folder, home=home_of(ctx), force=force)
    output.result(p.to_dict(), lambda: _said_created(p), as_json=as_json)


def _said_created(p) -> None:
    output.info(f"Lab profile '{p.name}' made from {p.cells} cells: {_values(p)}.")
    output.info(f"Use it: cellmorphnet infer {p.run} FOLDER --lab {p.name}. Once its cells are reviewed: "
                f"cellmorphnet lab calibrate {p.name} --from DB")  # fmt: skip


@app.command("list")
def list_cmd(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The lab profiles in the home."""
    from rich.table import Table

    from cellmorphnet.labs import profile as profiles

    found = profiles.list_profiles(home_of(ctx))

    def human() -> None:
        if not found:
            output.info("No lab profiles yet. Make one: cellmorphnet lab create NAME FOLDER")
            return
        table = Table(title="Lab profiles", title_justify="left")
        for col in ("name", "run", "cells", "calibrated", "created"):
            table.add_column(col, no_wrap=col == "name", justify="right" if col == "cells" else "left")
        for p in found:
            cal = f"at {p.values.conformal.alpha:g}" if p.values.conformal else "no"
            table.add_row(p.name, p.run, str(p.cells), cal, p.created[:19].replace("T", " "))
        output.out.print(table)

    output.result({"profiles": [p.to_dict() for p in found]}, human, as_json=as_json)


@app.command("show")
def show(ctx: typer.Context, name: NameArg, as_json: JsonFlag = False) -> None:
    """One profile: what was measured, on what, with which run."""
    from cellmorphnet.labs import profile as profiles

    p = profiles.load(name, home_of(ctx))

    def human() -> None:
        output.info(f"{p.name}: made {p.created[:19].replace('T', ' ')} with run {p.run} "
                    f"(checkpoint {p.checkpoint_sha256[:12]}) from {p.cells} cells in {p.source}")  # fmt: skip
        output.info(_values(p))
        if p.calibrated:
            c = p.calibrated
            output.info(f"Calibrated on {c['cells']} reviewed cells from {c['source']}: sets hold the reviewed type "
                        f"for {c['coverage']:.1%} of them (promised {1 - c['alpha']:.0%}).")  # fmt: skip

    output.result(p.to_dict(), human, as_json=as_json)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    name: NameArg,
    out: Annotated[Path, typer.Argument(help="The file to write (a colleague loads it with lab import).")],
    as_json: JsonFlag = False,
) -> None:
    """Write a profile to a file a colleague can import."""
    from cellmorphnet.errors import Conflict
    from cellmorphnet.labs import profile as profiles

    p = profiles.load(name, home_of(ctx))
    if out.exists():
        raise Conflict(f"{out} exists already.", hint="Choose another file name.")
    profiles.write(p, out)
    output.result({"profile": p.name, "file": str(out)}, lambda: output.info(f"Wrote {out}."), as_json=as_json)


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A file written by lab export.")],
    name: Annotated[str | None, typer.Option("--name", help="Store it under this name instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a profile of the same name.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Load a colleague's profile (checked before it is stored)."""
    from cellmorphnet.labs import profile as profiles

    p = profiles.import_profile(file, home_of(ctx), name=name, force=force)
    said = f"Imported lab profile '{p.name}' (made with run {p.run}; a run with another checkpoint refuses it)."
    output.result(p.to_dict(), lambda: output.info(said), as_json=as_json)


@app.command("calibrate")
def calibrate(
    ctx: typer.Context,
    name: NameArg,
    source: Annotated[Path, typer.Option("--from", help="The review database (serve's) or a folder of class "
                                         "sub-folders of the lab's labelled cells.", show_default=False)] = ...,
    alpha: Annotated[float, typer.Option("--alpha", help="The error rate the classified cells' sets may have.")] = 0.05,
    run: RunOption = "bloodmnist",
    device: DeviceOption = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Fit split-conformal prediction on reviewed cells: a cell is classified when its set holds one type."""
    from cellmorphnet.labs.build import calibrate_profile

    rm = _model(ctx, run, device)
    c = calibrate_profile(rm, name, source, alpha=alpha, home=home_of(ctx))

    def human() -> None:
        right = "" if c.classified_right is None else f", {c.classified_right:.1%} of them right"
        output.info(f"Calibrated '{name}' on {c.cells} cells: the sets hold the reviewed type for {c.coverage:.1%} "
                    f"(promised {1 - alpha:.0%}); {c.classified:.0%} would be classified{right}.")  # fmt: skip

    output.result(c.to_dict(), human, as_json=as_json)


def _said_switch(s) -> None:
    verb = "Now serving" if s.action == "promote" else "Rolled back to"
    output.info(f"{verb} {s.run} (checkpoint {s.checkpoint_sha256[:12]}…)" + (f", replacing {s.previous}" if
                s.previous else "") + ". A running serve in this home follows within seconds.")  # fmt: skip


@app.command("promote")
def promote(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="The run to serve (a name, a folder, or bloodmnist).")],
    note: Annotated[str | None, typer.Option("--note", help="Why, for the record.", show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a run the served model of this home (serve without a run serves it; a running serve switches to it)."""
    from cellmorphnet.labs.served import promote as promote_run

    s = promote_run(home_of(ctx), run, note=note)
    output.result(s.to_dict(), lambda: _said_switch(s), as_json=as_json)


@app.command("rollback")
def rollback(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Serve again the model served before the last switch."""
    from cellmorphnet.labs.served import rollback as rollback_run

    s = rollback_run(home_of(ctx))
    output.result(s.to_dict(), lambda: _said_switch(s), as_json=as_json)


@app.command("served")
def served(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The served model and every switch (who, when, from what)."""
    from cellmorphnet.labs.served import Served, served_path, served_run

    name, run_dir = served_run(home_of(ctx))
    history = []
    if served_path(home_of(ctx)).is_file():
        with Served(served_path(home_of(ctx)), read_only=True) as s:
            history = s.history()

    def human() -> None:
        output.info(f"Served: {name} ({run_dir})")
        if not history:
            output.info("No switches yet: the model that ships with cellmorphnet.")
            return
        from rich.table import Table

        table = Table(title="Switches, newest first", title_justify="left")
        for col in ("when", "action", "run", "replacing", "by", "note"):
            table.add_column(col, overflow="fold")
        for s in history:
            table.add_row(s.created[:19].replace("T", " "), s.action, s.run, s.previous or "", s.by or "",
                          s.note or "")  # fmt: skip
        output.out.print(table)

    output.result({"run": name, "folder": str(run_dir), "switches": [s.to_dict() for s in history]}, human,
                  as_json=as_json)  # fmt: skip
