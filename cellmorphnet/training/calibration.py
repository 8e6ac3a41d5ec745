"""Temperature scaling (Guo et al. 2017): one number that makes the network's confidences mean what they say.

Label smoothing and augmentation leave a classifier under- or over-confident: it says 0.7 where it
is right 95 % of the time. Dividing the logits by a temperature fitted on the validation split (by
minimising the negative log-likelihood) fixes that without changing any prediction's class. The
temperature is stored in the run record and applied by eval, infer, eval --on and the exports.
"""

from __future__ import annotations

from typing import Any

import torch

from cellmorphnet.evaluation.metrics import expected_calibration_error
from cellmorphnet.model.losses import coarse_cross_entropy


def fit_temperature(logits: torch.Tensor, target_ids: torch.Tensor, table: torch.Tensor) -> float:
    """The temperature that minimises the validation NLL (coarse labels count as their covered classes)."""
    logits, target_ids, table = logits.float().cpu(), target_ids.cpu(), table.float().cpu()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = coarse_cross_entropy(logits / log_t.exp(), target_ids, table).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibrate(per_dataset: dict[str, dict[str, torch.Tensor]], space) -> dict[str, Any]:
    """Fit the temperature on validation logits (``prediction.collect_logits``) and report NLL and ECE before and
    after it; ECE is measured in each dataset's own labels and averaged over all samples."""
    logits = torch.cat([d["logits"] for d in per_dataset.values()])
    target_ids = torch.cat([d["target_ids"] for d in per_dataset.values()])
    table = space.target_table.float().cpu()
    t = fit_temperature(logits, target_ids, table)

    def nll(temp: float) -> float:
        return float(coarse_cross_entropy(logits.float() / temp, target_ids, table).mean())

    def ece(temp: float) -> float:
        total, n = 0.0, 0
        for name, d in per_dataset.items():
            local = (d["logits"].float() / temp).softmax(1) @ space.rows(name).float().cpu().T
            total += expected_calibration_error(local.numpy(), d["labels"].numpy())[0] * len(local)
            n += len(local)
        return total / max(n, 1)

    return {"temperature": round(t, 4), "val_nll_before": nll(1.0), "val_nll_after": nll(t),
            "val_ece_before": ece(1.0), "val_ece_after": ece(t)}  # fmt: skip


def calibrate_run(run_dir, record, model, *, val_loader, data, device, precision) -> dict:
    """Fit the temperature of the best model on validation; store it in config.json and in both checkpoints."""
    from cellmorphnet.model.prediction import collect_logits
    from cellmorphnet.runs import checkpoint
    from cellmorphnet.runs.parts import Calibration

    best_path, last_path = run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt"
    model.load_state_dict(checkpoint.load(best_path)["model"])
    calibration = calibrate(collect_logits(model, val_loader, device, precision), data.space)
    record.calibration = Calibration.from_dict(calibration)
    with checkpoint.defer_interrupt():
        for path in (best_path, last_path):
            state = checkpoint.load(path)
            state["record"] = record.to_dict()
            checkpoint.save(state, path)
        record.save(run_dir)
    return calibration


def write_trust(run_dir, record, model, *, data, device) -> dict:
    """Measure and write the run's trust reference (``runs.trust``) from its first dataset's training and
    validation splits (``data``, a ``TrainData``; see ``trust_reference``). Returns the marks."""
    first = next(iter(record.datasets))
    train, val = data.train[first], data.val[first]
    ref = trust_reference(record, model, train.images.cpu().numpy(), train.labels_cpu.numpy(),
                          val.images.cpu().numpy(), device=device)  # fmt: skip
    ref.save(run_dir)
    return {"typical": ref.typical, "home": ref.home, "reference_cells": len(ref.labels)}


def trust_reference(record, model, train_images, train_labels, val_images, *, device="cpu"):
    """The pooled features of a stratified sample of training cells and the typicality marks from the validation
    cells, 8 views each, as ``infer`` reads a cell (``runs.trust.build``)."""
    import numpy as np

    from cellmorphnet.model.prediction import pooled_features
    from cellmorphnet.runs import trust

    labels = np.asarray(train_labels).ravel()
    keep = trust.sample(labels)
    model.eval()
    pol = record.inference

    def feats(images) -> np.ndarray:
        return pooled_features(model, images, image_size=pol.image_size, mean=pol.mean, std=pol.std,
                               device=torch.device(device))  # fmt: skip

    return trust.build(feats(np.asarray(train_images)[keep]), labels[keep], feats(np.asarray(val_images)))
