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

RUN_HELP = "A run: a name, a folder, 'latest', or a model that ships with cellmorphnet (bloodmnist)."
LatestRunArg = Annotated[str | None, typer.Argument(help=RUN_HELP + " \\[default: the latest run]", show_default=False)]
RunArg = Annotated[str, typer.Argument(help=RUN_HELP, show_default=False)]

DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA, then Apple MPS, then CPU), cuda, cuda:N, mps or cpu.")
]
EngineOption = Annotated[
    str, typer.Option("--engine", help="onnx (ONNX Runtime, on the CPU), torch (PyTorch), or auto: onnx where ONNX "
                      "Runtime is installed and no GPU is there, else torch. The same answers either way.")
]
AcceptDataChangeFlag = Annotated[
    bool,
    typer.Option(
        "--accept-data-change",
        help="Go on although the prepared data (seed, classes, source) or the run's config.json changed since "
        "training; the differences are reported.",
    ),
]

CropOption = Annotated[
    str | None,
    typer.Option("--crop", help="cell: centred on the white cell found in each image, at the training data's "
                 "scale; centre: the training data's exact centre crop. \\[default: cell where the run measured "
                 "its framing]", show_default=False),
]  # fmt: skip
ColourMatchFlag = Annotated[
    bool | None,
    typer.Option("--colour-match/--no-colour-match",
                 help="Match each image's colours (CIELAB mean and spread) to the training images'.",
                 show_default=False),
]  # fmt: skip
StainNormFlag = Annotated[
    bool | None,
    typer.Option("--stain-norm/--no-stain-norm",
                 help="Normalise the lamp and stain colours to the training images': the background to theirs, "
                 "the nuclei's colour to theirs. With --lab, the lab's stain; without, measured on the set sent "
                 "(16 or more images; answers then depend on the set). \\[default: on with a lab profile]",
                 show_default=False),
]  # fmt: skip
StainContrastFlag = Annotated[
    bool | None,
    typer.Option("--stain-contrast/--no-stain-contrast",
                 help="With the stain normalisation, also match how densely the stain colours the cytoplasm against "
                 "the nucleus to the training images', per the cell types the model takes the cells for (the lab "
                 "profile's, or measured on a set of 16 or more cells). \\[default: on with a lab profile]",
                 show_default=False),
]  # fmt: skip
AdaptBnFlag = Annotated[
    bool | None,
    typer.Option("--adapt-bn/--no-adapt-bn",
                 help="Re-estimate the network's batch-norm statistics on these images first (AdaBN); the saved "
                 "model is not changed.", show_default=False),
]  # fmt: skip
TtaFlag = Annotated[
    bool | None,
    typer.Option("--tta/--no-tta", help="Average over the 8 flips and quarter turns of each image (8x the work). "
                 "\\[default: on]", show_default=False),
]  # fmt: skip
ScaleViewsFlag = Annotated[
    bool | None,
    typer.Option("--scale-views/--no-scale-views", help="Also see each cell the cell finder framed at 0.87, 1 and "
                 "1.15 times the set's crop side, averaged (with --tta, 4 orientations each: 12 passes). Measured "
                 "on another lab: mixed, half the speed (docs/benchmarks.md). \\[default: off]", show_default=False),
]  # fmt: skip
ClassesOption = Annotated[
    str | None,
    typer.Option("--classes", help="Only these classes can be predicted (comma-separated, or 'wbc' for the white-cell "
                 "types), e.g. when every image is known to be a white cell.", show_default=False),
]  # fmt: skip


def home_of(ctx: typer.Context):
    return ctx.obj["home"]
MaxCellsOption = Annotated[
    int | None,
    typer.Option("--max-cells", help="White cells searched for per field at most; a field holding more (or more "
                 "than 4x as many stained objects) is refused with the reason, not searched on: cut a whole slide "
                 "into fields first. \\[default: 500]", show_default=False),
]  # fmt: skip
LabOption = Annotated[
    str | None,
    typer.Option("--lab", help="A lab profile (cellmorphnet lab create) whose stain, contrast and scale every image is "
                 "read with; 'none' for the run's home preprocessing. Default: each image on its own (an adapted "
                 "run: the lab it adapted to).", show_default=False),
]
