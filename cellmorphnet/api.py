"""The public Python API: what notebooks and scripts use instead of the private modules.

    import cellmorphnet as cmn

    summary = cmn.train(["sample"], name="demo")          # the same engine as `cellmorphnet train`
    run = cmn.load_run("demo")                             # model + run record, on the best device
    preds = cmn.predict(run, ["slides/"])                  # the run's exact preprocessing, like `infer`
    report = cmn.evaluate("demo", split="test")            # the metrics `cellmorphnet eval` reports

Everything raises ``cellmorphnet.errors.CellMorphNetError`` subclasses for expected failures.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cellmorphnet.errors import ConfigError
from cellmorphnet.inference import Prediction
from cellmorphnet.runs.load import RunModel


def train(datasets: list[str] | None = None, *, name: str | None = None, home: Path | None = None,
          resume: str | Path | None = None, **settings: Any) -> dict:  # fmt: skip
    """Train a run on ``datasets`` (registry names or ``folder:PATH``); ``settings`` are ``TrainConfig`` fields.
    ``resume`` (a run's name or folder, or 'latest') goes on with that run instead, as ``train --resume`` does: its
    own settings, except ``epochs``, ``patience`` and ``limit_batches``.

    Returns the summary ``cellmorphnet train --json`` prints (``run_dir``, ``state``, ``best_val_f1``...). Under
    torchrun every process calls it and they train one run together (docs/distributed.md).
    """
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.config import resolve, resume_config
    from cellmorphnet.runs.record import RunRecord
    from cellmorphnet.runtime import distributed
    from cellmorphnet.training.fit import fit

    if resume is not None:
        target = runs.resolve_run(resume, home)
        cfg, ignored = resume_config(RunRecord.load(target).config.to_dict(), settings)
        if ignored or datasets:
            raise ConfigError(f"A resumed run keeps its own settings: leave out {', '.join(ignored) or 'datasets'}.")
        group = distributed.start(cfg.device)
        return fit(cfg, target, home=home, resume=True, group=group)
    if not datasets:
        raise ConfigError("Give the datasets to train on (or resume=RUN).")
    cfg, _ = resolve({}, {"datasets": list(datasets), **settings})
    group = distributed.start(cfg.device)
    target = group.on_main(lambda: runs.new_run_dir(home, name, cfg.datasets))
    return fit(cfg, target, home=home, group=group)


def load_run(
    run: str | Path | None = None, *, checkpoint: str = "best", device: str = "auto", home: Path | None = None,
    engine: str = "torch",
) -> RunModel:
    """A trained run (a name under the home's ``runs/``, a folder, or the latest when ``None``), ready to predict:
    its ``model`` a PyTorch module (``engine="torch"``), or with ``engine="onnx"``/``"auto"`` possibly an ONNX
    Runtime session (``inference.engine``), which ``predict`` takes as well."""
    from cellmorphnet.inference.engine import load_model
    from cellmorphnet.runs import folders as runs

    return load_model(runs.resolve_run(run, home), checkpoint, device, engine=engine, home=home)


def predict(
    run: RunModel | str | Path,
    paths: Iterable[str | Path],
    *,
    top_k: int = 3,
    batch_size: int = 64,
    crop: str | None = None,
    crop_fraction: float | None = None,
    colour_match: bool | None = None,
    adapt_bn: bool | None = None,
    tta: bool | None = None,
    classes: str | None = None,
    stain_norm: bool | None = None,
    scale_views: bool | None = None,
    stain_contrast: bool | None = None,
    cells: str | None = None,
    max_cells: int | None = None,
    lab: str | None = None,
    home: Path | None = None,
    engine: str = "auto",
) -> list[Prediction]:
    """Classify image files and folders (searched recursively) as ``cellmorphnet infer`` does; the options are
    its flags (``None``: the same defaults). One prediction per cell: a crop's, each white cell found in a
    field (``p.cell``: its index, box and edge flag; ``p.image``: how the image was taken), or one with
    ``no_cells`` for a field without any. Unreadable files come back with ``error`` set and missing paths with
    ``error='does not exist'``. Each cell's answer depends on its own file alone unless ``lab`` names a lab
    profile (or ``'none'``, the run's home preprocessing), and carries its ``verdict`` and ``review_reason``.
    Under torchrun each process classifies its block of the files and every process gets
    every prediction, as one process gives them. ``engine``: as ``infer --engine`` (for a run given by name)."""
    from cellmorphnet.inference import collect_files, inference_options
    from cellmorphnet.inference.pipeline import infer_files
    from cellmorphnet.runtime import distributed

    group = distributed.start(str(run.device).split(":")[0] if isinstance(run, RunModel) else "auto")
    rm = run if isinstance(run, RunModel) else load_run(run, home=home, device=distributed.local_device(group, "auto"),
                                                        engine=engine)  # fmt: skip
    files, missing = group.on_main(lambda: collect_files([Path(p) for p in paths]))
    from cellmorphnet.labs import profile as profiles

    lab_values, home_only = profiles.resolve(lab, rm, home)
    options = inference_options(rm.record, crop=crop, crop_fraction=crop_fraction, colour_match=colour_match,
                                adapt_bn=adapt_bn, classes=classes, tta=tta, stain_norm=stain_norm,
                                scale_views=scale_views, stain_contrast=stain_contrast, cells=cells,
                                max_cells=max_cells, lab=lab_values,
                                home_preprocessing=home_only)  # fmt: skip
    return infer_files(rm, files, options, missing=missing, batch_size=batch_size, top_k=top_k,
                       group=group).predictions  # (infer's own path: the summary too, on InferResult)


def evaluate(
    run: str | Path | None = None,
    *,
    split: str = "test",
    datasets: list[str] | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    home: Path | None = None,
    accept_data_change: bool = False,
    tta: bool | None = None,
) -> dict[str, Any]:
    """The report ``cellmorphnet eval --json`` prints: per-dataset metrics, the gap to validation, the criteria
    (``tta``: the 8-view average, on by default as in ``cellmorphnet eval``)."""
    from cellmorphnet.evaluation.report import evaluate_run
    from cellmorphnet.runs import folders as runs

    return evaluate_run(runs.resolve_run(run, home), home=home, split=split, datasets=datasets, which=checkpoint,
                        device=device, accept_data_change=accept_data_change, tta=tta)  # fmt: skip
