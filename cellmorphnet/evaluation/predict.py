"""Rebuild a run's model and preprocessing from its folder, and predict on prepared splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet import runs
from cellmorphnet._io import read_json
from cellmorphnet.errors import CheckpointError, RunError


@dataclass
class RunModel:
    model: Any  # torch.nn.Module in eval mode
    config: dict[str, Any]  # the run's config.json
    resolved: dict[str, Any]  # config.json's "resolved" part: classes, taxonomy, sizes, mean/std
    epoch: int  # epochs completed when the checkpoint was written
    checkpoint: Path


def load_run_model(run_dir: Path, which: str = "best", device: str = "cpu") -> RunModel:
    """Load ``checkpoints/<which>.pt`` of a run (safely) into a freshly built model."""
    from cellmorphnet.model import create_model
    from cellmorphnet.training import checkpoint

    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.exists():
        raise RunError(f"{run_dir.name} has no {which}.pt yet.", hint="Wait for the first epoch to finish.")
    state = checkpoint.load(path)
    config = read_json(run_dir / runs.CONFIG) if (run_dir / runs.CONFIG).exists() else {
        "config": state["config"], "resolved": state["resolved"]
    }  # fmt: skip
    resolved = state.get("resolved") or config["resolved"]
    cfg = state["config"]
    model = create_model(cfg["model"], num_classes=len(resolved["classes"]), pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own model ({e}).") from None
    model = model.to(device).eval()
    if cfg.get("channels_last"):
        import torch

        model = model.to(memory_format=torch.channels_last)
    return RunModel(model, config, resolved, int(state["epoch"]), path)


def predict_split(rm: RunModel, split: str, home: Path | None = None, datasets: list[str] | None = None,
                  device: str = "cpu", batch_size: int = 256) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """Per dataset: ``labels`` (local), ``probs`` (local label space) for one prepared split."""
    import torch

    from cellmorphnet.data import store
    from cellmorphnet.data.loader import BatchLoader, DeviceArrays
    from cellmorphnet.data.taxonomy import Taxonomy
    from cellmorphnet.training import loop

    taxonomy = Taxonomy.from_dict(rm.resolved["taxonomy"])
    names = datasets or list(rm.resolved["data_sizes"])
    unknown = [n for n in names if n not in rm.resolved["data_sizes"]]
    if unknown:
        raise RunError(f"The run was not trained on {', '.join(unknown)}.",
                       hint=f"It knows: {', '.join(rm.resolved['data_sizes'])}.")  # fmt: skip
    dev = torch.device(device)
    parts, offsets, rows = {}, {}, []
    for name in names:
        size = rm.resolved["data_sizes"][name]
        sp = store.load_split(name, size, split, home)
        parts[name] = DeviceArrays(sp.images, sp.labels, dev)
        offsets[name] = sum(r.shape[0] for r in rows)
        rows.append(taxonomy.target_matrix(name))
    table = torch.cat(rows).to(dev)
    data = loop.TrainData(taxonomy, {n: rm.resolved["data_sizes"][n] for n in names}, {}, table, offsets, {}, parts,
                          None)  # fmt: skip
    loader = BatchLoader(parts, offsets, batch_size, rm.resolved["image_size"], rm.resolved["mean"],
                         rm.resolved["std"], train=False,
                         channels_last=bool(rm.config.get("config", {}).get("channels_last")))  # fmt: skip
    return loop.predict_local(rm.model, loader, data, dev, loop.Precision(None, False))
