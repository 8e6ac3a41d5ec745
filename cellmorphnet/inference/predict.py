"""Prediction: the model's calibrated class probabilities over views of prepared images, and ``Prediction``.

With ``tta`` (on by default) the probabilities are averaged over the 8 flips and quarter turns of each image,
or, with the scale views (off by default), over 3 crop sides around the set's in 4 orientations each; logits
are divided by the run's temperature before the softmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import ConfigError
from cellmorphnet.inference.cells import ImageInfo, find_cells, source_of
from cellmorphnet.inference.images import CellItem, Item, Upload, single_view
from cellmorphnet.inference.options import InferenceOptions
from cellmorphnet.inference.prepare import NO_CELL, Loaded, prepare_set
from cellmorphnet.inference.verdict import verdict
from cellmorphnet.runs.record import InferencePolicy
from cellmorphnet.runtime.distributed import SINGLE, Group

COLOUR_DISTANCE_WARN = 4.0  # |z| of an image's mean colour beyond which it is marked unlike the training data
ORIENTATIONS_PER_SCALE = ((False, 0), (False, 1), (True, 0), (True, 1))  # (flipped, quarter turns)


@dataclass
class Prediction:
    path: Item
    predicted: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None  # why the file was skipped
    framing: str | None = None  # "cell", "centre", or prepare.NO_CELL
    box: tuple[int, int, int, int] | None = None  # the square cropped from the image (may reach past it)
    min_confidence: float = 0.0  # below this confidence the prediction is flagged (--min-confidence)
    colour_distance: float | None = None  # see colour.distance; above COLOUR_DISTANCE_WARN: unlike training
    colour_step: str | None = None  # "stain-norm" or "colour-match" where the set's colours were adapted, else None
    stain_contrast: float | None = None  # the set's stain-contrast power where it was applied (colour.apply_contrast)
    image: ImageInfo | None = None  # how its image was taken: a crop, or a field with its scale (inference.cells)
    no_cells: bool = False  # a field in which no white cell was found (no class)
    verdict: str | None = None  # "classified" or "review" (inference.verdict); None where nothing was classified
    review_reason: str | None = None  # why a person should look
    typicality: float | None = None  # similarity to the run's training cells (runs.trust)

    @property
    def source(self) -> Path | Upload:
        """The file or upload this row is about (a found cell's field)."""
        return source_of(self.path)

    @property
    def cell(self) -> CellItem | None:
        return self.path if isinstance(self.path, CellItem) else None

    @property
    def status(self) -> str:
        return "skipped" if self.error else ("no cells" if self.no_cells else "ok")

    @property
    def cell_found(self) -> bool:
        """False for an image in which no cell was found (blank, too small, no nucleus): it gets the model's answer,
        but is never counted as a cell (``differential``)."""
        return self.framing != NO_CELL

    @property
    def low_confidence(self) -> bool:
        return self.confidence is not None and self.confidence < self.min_confidence

    @property
    def unusual(self) -> bool:
        return self.colour_distance is not None and self.colour_distance > COLOUR_DISTANCE_WARN

    def to_dict(self) -> dict[str, Any]:
        c, info = self.cell, self.image
        return {
            "path": str(self.source),
            "kind": info.kind if info else None,
            "cell": c.index if c else None,
            "box": list(c.box) if c else None,
            "edge": c.edge if c else None,
            "rbc_diameter_px": None if info is None or info.diameter is None else round(info.diameter, 1),
            "status": self.status,
            "cell_found": None if self.error or self.no_cells else self.cell_found,
            "predicted": self.predicted,
            "confidence": self.confidence,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
            "framing": self.framing,
            "colour_distance": self.colour_distance,
            "colour_step": self.colour_step,
            "stain_contrast": self.stain_contrast,
            "unlike_training": self.unusual,
            "low_confidence": self.low_confidence,
            "verdict": self.verdict,
            "review_reason": self.review_reason,
            "typicality": None if self.typicality is None else round(self.typicality, 4),
            "error": self.error,
        }


def class_probs(model, arrays: list[np.ndarray], policy: InferencePolicy, *, device, channels_last: bool = False,
                tta: bool = False, temperature: float = 1.0, keep=None, features: bool = False):  # fmt: skip
    """The model's calibrated class probabilities (N, C) for prepared arrays (HxWx3, or SxHxWx3 for one image at
    S crop sides, see ``prepare.load``, whose probabilities are averaged).

    ``tta`` averages the 8 flips and quarter turns (4 orientations at each of several crop sides); ``keep``
    (class indices) restricts the softmax to them. With ``features``, ``(probs, feats)``: also each image's pooled
    features (the classifier's input), averaged over its views (``runs.trust``).
    """
    from cellmorphnet.inference.engine import engine_class_probs, is_engine

    if is_engine(model):  # ONNX Runtime: the same steps in numpy, without torch
        return engine_class_probs(model, arrays, tta=tta, temperature=temperature, keep=keep, features=features)
    import torch

    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.model.prediction import ORIENTATIONS, oriented

    device = torch.device(device)
    keep = None if keep is None else torch.as_tensor(np.asarray(keep), dtype=torch.long)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out: list[np.ndarray | None] = [None] * len(arrays)
    feats: list[np.ndarray | None] = [None] * len(arrays)

    def run(v):
        if not features:
            return model(v).float().cpu(), None
        f = model.forward_head(model.forward_features(v), pre_logits=True)
        return model.get_classifier()(f).float().cpu(), f.float().cpu()

    for ndim, views in ((3, ORIENTATIONS), (4, ORIENTATIONS_PER_SCALE)):
        idx = [i for i, a in enumerate(arrays) if a.ndim == ndim]
        if not idx:
            continue
        stack = np.stack([arrays[i] for i in idx])
        n_sides = stack.shape[1] if ndim == 4 else 1
        x = torch.from_numpy(stack.reshape(-1, *stack.shape[-3:])).to(device)
        x = eval_transform(x, policy.image_size, policy.mean, policy.std).contiguous(memory_format=fmt)
        with torch.no_grad():
            turned = oriented(x, views if tta else views[:1])  # in x's memory format
            ran = [run(v) for v in turned]
            logits = torch.stack([lg for lg, _ in ran]) / temperature
        if keep is not None:
            logits = torch.full_like(logits, float("-inf")).index_copy(2, keep, logits.index_select(2, keep))
        probs = logits.softmax(2).mean(0).reshape(len(idx), n_sides, -1).mean(1).numpy()
        pooled = (torch.stack([f for _, f in ran]).mean(0).reshape(len(idx), n_sides, -1).mean(1).numpy()
                  if features else None)  # fmt: skip
        for j, i in enumerate(idx):
            out[i] = probs[j]
            if pooled is not None:
                feats[i] = pooled[j]
    return (np.stack(out), np.stack(feats)) if features else np.stack(out)


def to_prediction(loaded: Loaded, probs: np.ndarray, classes: list[str], k: int) -> Prediction:
    """A ``Prediction`` from one row of ``class_probs``: the top ``k`` classes, the framing, colour step and colour
    distance of the loaded image."""
    order = np.argsort(-probs, kind="stable")[:k]
    top = [(classes[int(j)], float(probs[j])) for j in order]
    f = loaded.framing
    return Prediction(loaded.item, top[0][0], top[0][1], top, framing=f.label if f else None, box=f.box if f else None,
                      colour_distance=loaded.colour_distance, colour_step=f.colour_step if f else None,
                      stain_contrast=f.stain_contrast if f else None)  # fmt: skip


def one_view_probs(rm, policy: InferencePolicy, *, temperature: float, keep=None,
                   batch_size: int = 64) -> Callable[[list[np.ndarray]], np.ndarray]:  # fmt: skip
    """The model's probabilities of prepared arrays, one view each, ``batch_size`` at a time: what
    ``prepare_set``'s stain contrast asks the model (``infer``, ``lab create`` and ``train --init`` alike)."""
    def probs(arrays: list[np.ndarray]) -> np.ndarray:
        parts = [class_probs(rm.model, arrays[i : i + batch_size], policy, device=rm.device,
                             channels_last=rm.channels_last, temperature=temperature, keep=keep)
                 for i in range(0, len(arrays), batch_size)]  # fmt: skip
        return np.concatenate(parts) if parts else np.zeros((0, len(rm.classes)), np.float32)

    return probs


def judged(loaded: list[Loaded], rows: np.ndarray, feats: np.ndarray, classes: list[str], k: int, *, trust,
           options: InferenceOptions) -> list[Prediction]:  # fmt: skip
    """Predictions of loaded cells from their probabilities and pooled features, each with its verdict
    (``inference.verdict``): the run's trust reference (``runs.trust``, None for a run without one) and the lab
    profile's conformal calibration, where there is one, decide it."""
    marks = (trust.typical, trust.home) if trust is not None else None
    conformal = options.lab.conformal if options.lab is not None else None
    typical = trust.typicality(feats) if trust is not None and len(loaded) else [None] * len(loaded)
    out = []
    for x, row, t in zip(loaded, rows, typical, strict=True):
        p = to_prediction(x, row, classes, k)
        p.typicality = None if t is None else float(t)
        p.verdict, p.review_reason = verdict(predicted=p.predicted, confidence=p.confidence, cell_found=p.cell_found,
                                             typicality=p.typicality, marks=marks, probs=row, classes=classes,
                                             conformal=conformal)  # fmt: skip
        out.append(p)
    return out


def predict_files(
    rm,
    files: list[Item],
    options: InferenceOptions,
    *,
    batch_size: int = 64,
    top_k: int = 3,
    workers: int = 2,
    on_batch: Callable[[int, int], None] | None = None,
    keep_inputs: bool = False,
    group: Group = SINGLE,
) -> tuple[list[Prediction], dict[Item, np.ndarray]]:
    """Predict every file with a loaded run (``run_model.RunModel``) as ``options`` say; unreadable ones come back
    with ``error`` set. With ``keep_inputs``, also each file's prepared array (at the set's crop side).

    ``on_batch(done, total)`` is called as files are classified. In a distributed job (``group``) every rank
    classifies its block of the cells with the whole set's survey and every rank gets every prediction, in the
    order one process gives them (the inputs kept are this rank's block's).
    """
    from cellmorphnet.inference.adaptation import adapt_batch_norm
    from cellmorphnet.inference.engine import is_engine

    model, classes, device, channels_last = rm.model, rm.classes, rm.device, rm.channels_last
    policy = options.policy
    keep = np.array([classes.index(c) for c in options.restrict_to]) if options.restrict_to else None
    if options.adapt_bn and is_engine(model):
        raise ConfigError("--adapt-bn changes the network's batch-norm statistics: it needs --engine torch.")

    if options.adapt_bn and group.active:
        raise ConfigError("--adapt-bn needs every image in one process: run it without torchrun.")
    items, taken, refused = find_cells(files, options.cells, workers, group, max_cells=options.max_cells,
                                       diameter=options.lab.rbc_diameter if options.lab else None)  # fmt: skip
    one_view = one_view_probs(rm, policy, temperature=options.temperature, keep=keep, batch_size=batch_size)
    _, loaded = prepare_set(items, options, classes, one_view, workers=workers, window=max(2 * batch_size, 8),
                            group=group)  # fmt: skip
    start, stop = group.shard(len(items))
    if options.adapt_bn:  # every image is needed before the first prediction: load once, keep, then predict
        loaded = list(loaded)
        arrays = [x.array for x in loaded if x.error is None]
        if arrays:
            model = adapt_batch_norm(model, arrays, policy, device, channels_last)

    preds: list[Prediction] = []
    kept: dict[Item, np.ndarray] = {}
    batch: list[Loaded] = []
    k = max(1, min(top_k, len(classes) if keep is None else len(keep)))

    def flush() -> None:
        if batch:
            rows, feats = class_probs(model, [x.array for x in batch], policy, device=device,
                                      channels_last=channels_last, tta=options.tta, temperature=options.temperature,
                                      keep=keep, features=True)  # fmt: skip
            preds.extend(judged(batch, rows, feats, classes, k, trust=rm.trust, options=options))
            batch.clear()

    done = 0
    for x in loaded:
        done += 1
        if x.error is not None:
            preds.append(Prediction(x.item, error=x.error))
        else:
            batch.append(x)
            if keep_inputs:
                kept[x.item] = single_view(x.array)
            if len(batch) >= batch_size:
                flush()
        if on_batch is not None and (done % batch_size == 0 or done == stop - start):
            on_batch(done, stop - start)
    flush()
    if group.active:  # every rank's block, in rank order: the items' order (this rank's own objects kept)
        parts = group.all_gather(preds)
        parts[group.rank] = preds
        preds = [p for part in parts for p in part]
    return in_file_order(preds, files, taken=taken, refused=refused), kept


def in_file_order(preds: list[Prediction], files: list[Item], *, taken: dict, refused: dict) -> list[Prediction]:
    """The cells' predictions with the files refused (``refused``: why) and the fields without a cell added, each
    told how its image was taken (``taken``), in the files' order and each field's cells in theirs: what
    ``predict_files`` and serve's requests return."""
    preds = [*preds, *(Prediction(item, error=why) for item, why in refused.items()),
             *(Prediction(i, no_cells=True) for i, info in taken.items() if info.kind == "field" and not info.cells)]
    for p in preds:
        p.image = taken.get(p.source)
    order = {f: i for i, f in enumerate(files)}
    preds.sort(key=lambda p: (order.get(p.source, -1), p.cell.index if p.cell else 0))
    return preds
