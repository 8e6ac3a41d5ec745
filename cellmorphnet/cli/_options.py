"""Options shared by several commands, so their help is written once."""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ForceFlag = Annotated[bool, typer.Option("--force", help="Redo the work even if the result is already there.")]
DatasetsArg = Annotated[
    list[str],
    typer.Argument(help="bloodmnist, bccd, lisc, sample, or folder:PATH (your own class folders).", show_default=False),
]

DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA, then Apple MPS, then CPU), cuda, cuda:N, mps or cpu.")
]
AcceptDataChangeFlag = Annotated[
    bool,
    typer.Option(
        "--accept-data-change",
        help="Go on although the prepared data (seed, classes, source) or the run's config.json changed since "
        "training; the differences are reported.",
    ),
]


def home_of(ctx: typer.Context):
    return ctx.obj["home"]
