"""Predict over files and folders with a trained run, rebuilding its exact preprocessing.

The inference policy (how a full-size image becomes what the network saw in training) is derived
from the preprocessing of the run's first dataset and stored in the run record at training time
(``record.InferencePolicy``):

1. centre square crop: ``centre_crop_px`` pixels where the data was made that way (PBC/BloodMNIST:
   200 px, as MedMNIST made its arrays), else ``centre_crop_fraction`` of the shorter side (cell
   crops and folders: 1.0, the whole square);
2. bicubic resizes through ``resize_chain`` (e.g. [28, 64] for the sample: stored at 28 px,
   prepared at 64), exactly as prepare made the training arrays;
3. the evaluation transform of training: resize to the network's input size and normalise.

Decoding runs in a thread pool ahead of the model (PIL releases the GIL while decoding), so images
are read while the network works on the previous batch. Unreadable files are reported, never fatal.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import InvalidData
from cellmorphnet.imaging import IMAGE_SUFFIXES, centre_square, load_rgb
from cellmorphnet.record import InferencePolicy


def preprocess(img, policy: InferencePolicy) -> np.ndarray:
    """A PIL RGB image to the uint8 array prepare would have stored (HxWx3 at the last chain size)."""
    from PIL import Image

    box = centre_square(*img.size, policy.centre_crop_fraction, policy.centre_crop_px)
    out = img.crop(box)
    for s in policy.resize_chain:
        out = out.resize((s, s), Image.BICUBIC)
    return np.asarray(out, dtype=np.uint8)


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict: given files as they are, folders searched recursively for image suffixes.

    Returns the files and the paths that do not exist (with a reason).
    """
    files, missing = [], []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            missing.append((p, "does not exist"))
    return files, missing


@dataclass
class Prediction:
    path: Path
    predicted: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None  # why the file was skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status": "skipped" if self.error else "ok",
            "predicted": self.predicted,
            "confidence": self.confidence,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
            "error": self.error,
        }


def _load(path: Path, policy: InferencePolicy) -> tuple[np.ndarray | None, str | None]:
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        return preprocess(load_rgb(path), policy), None
    except InvalidData as e:
        return None, e.message.split(": ", 1)[-1]
    except PermissionError:
        return None, "permission denied"
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"


def _prefetched(files: list[Path], policy: InferencePolicy, workers: int, window: int) -> Iterator:
    """Decode ``files`` in a thread pool, at most ``window`` ahead of the consumer, in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        it = iter(files)
        for f in it:
            pending.append((f, pool.submit(_load, f, policy)))
            if len(pending) >= window:
                break
        while pending:
            f, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_load, nxt, policy)))
            yield f, *fut.result()


def predict_files(
    model,
    classes: list[str],
    policy: InferencePolicy,
    files: list[Path],
    *,
    batch_size: int = 64,
    top_k: int = 3,
    workers: int = 2,
    device: str = "cpu",
    channels_last: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    keep_inputs: bool = False,
) -> tuple[list[Prediction], dict[Path, np.ndarray]]:
    """Predict every file; unreadable ones come back with ``error`` set. Optionally keep the preprocessed arrays."""
    import torch

    from cellmorphnet.data.loader import eval_transform

    preds: list[Prediction] = []
    kept: dict[Path, np.ndarray] = {}
    batch_paths: list[Path] = []
    batch_arrays: list[np.ndarray] = []
    k = max(1, min(top_k, len(classes)))
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def flush() -> None:
        if not batch_arrays:
            return
        x = torch.from_numpy(np.stack(batch_arrays)).to(dev)
        x = eval_transform(x, policy.image_size, policy.mean, policy.std).contiguous(memory_format=fmt)
        with torch.no_grad():
            probs = model(x).float().softmax(1).cpu()
        values, indices = probs.topk(k, dim=1)
        for path, v, i in zip(batch_paths, values.tolist(), indices.tolist(), strict=True):
            preds.append(Prediction(path, classes[i[0]], v[0], [(classes[j], p) for j, p in zip(i, v, strict=True)]))
        batch_paths.clear()
        batch_arrays.clear()

    done = 0
    for path, arr, error in _prefetched(files, policy, workers, window=max(2 * batch_size, 8)):
        done += 1
        if error is not None:
            preds.append(Prediction(path, error=error))
        else:
            batch_paths.append(path)
            batch_arrays.append(arr)
            if keep_inputs:
                kept[path] = arr
            if len(batch_arrays) >= batch_size:
                flush()
        if on_batch is not None and (done % batch_size == 0 or done == len(files)):
            on_batch(done, len(files))
    flush()
    order = {p: i for i, p in enumerate(files)}
    preds.sort(key=lambda p: order.get(p.path, -1))
    return preds, kept


def sort_into(preds: list[Prediction], target: Path) -> int:
    """Copy (never move) each predicted image into ``target/<class>/``; returns how many were copied."""
    n = 0
    for p in preds:
        if p.error:
            continue
        folder = target / p.predicted
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / p.path.name
        i = 1
        while dest.exists():
            dest = folder / f"{p.path.stem}-{i}{p.path.suffix}"
            i += 1
        shutil.copy2(p.path, dest)
        n += 1
    return n


def write_results(preds: list[Prediction], out: Path, summary: dict[str, Any]) -> None:
    """CSV (one row per file, skipped ones with their reason) or JSON (rows plus summary), atomically."""
    import csv
    import io

    from cellmorphnet._io import atomic_path, write_json

    if out.suffix.lower() == ".json":
        write_json(out, {"summary": summary, "predictions": [p.to_dict() for p in preds]})
        return
    if out.suffix.lower() != ".csv":
        raise InvalidData(f"--out must end in .csv or .json, not '{out.suffix}'.")
    k = max((len(p.top_k) for p in preds), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["path", "status", "predicted", "confidence"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_probability"]
    w.writerow([*header, "error"])
    for p in preds:
        row = [str(p.path), "skipped" if p.error else "ok", p.predicted or "",
               "" if p.confidence is None else f"{p.confidence:.6f}"]  # fmt: skip
        for i in range(k):
            row += [p.top_k[i][0], f"{p.top_k[i][1]:.6f}"] if i < len(p.top_k) else ["", ""]
        w.writerow([*row, p.error or ""])
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
