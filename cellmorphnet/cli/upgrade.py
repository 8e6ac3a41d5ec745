"""Add what this version's prediction needs to a run trained by an earlier one, measured on its own data.

The stain normalisation and the stain contrast of infer, eval --on and serve need the training images'
stain, which runs trained before them lack: upgrade measures it on the run's prepared training split,
exactly as training does, and writes it into the run (config.json and its checkpoints). The weights stay
as they are. The data must be prepared as the run trained on it.
"""

from __future__ import annotations

import typer

from cellmorphnet.cli._options import JsonFlag, RunArg, home_of
from cellmorphnet.cli.output import output

NAME = "upgrade"


def command(ctx: typer.Context, run: RunArg, as_json: JsonFlag = False) -> None:
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.training.upgrade import upgrade_run

    home = home_of(ctx)
    run_dir = runs.resolve_run(run, home)
    output.info(f"Measuring the training images' stain for {run_dir.name} …")
    result = upgrade_run(run_dir, home)
    said = (f"Updated {result['run']}: its stain reference and trust reference are in place."
            if result["changed"] else f"{result['run']} is already up to date.")  # fmt: skip
    output.result(result, lambda: output.info(said), as_json=as_json)
