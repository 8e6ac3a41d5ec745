"""A trained run held in memory to answer many small requests: what ``cellmorphnet serve`` runs.

The images of one request are classified exactly as ``infer`` classifies the same files given
together (``inference``: the same survey, crops, colours, views and temperature), so
a file gets the same prediction from ``infer``, the REST API and the web page. Only the forward pass
is shared between requests: one model thread takes the preprocessed images of whatever requests
arrived within a few milliseconds of each other and runs them as one batch (micro-batching), so many
clients sending one image each get close to the throughput of one client sending many. All model
work (batches, Grad-CAM, the warm-up) runs on that one thread, in order; request threads only
decode and crop.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import ConfigError
from cellmorphnet.inference import (
    Prediction,
    Upload,
    _load,
    class_probs,
    contrast_sample,
    crop_sides,
    settle_contrast,
    single_view,
    survey_files,
    to_prediction,
)

DEFAULT_MAX_BATCH = 32  # images per forward pass (times 8 views with the 8-view average)
DEFAULT_MAX_WAIT_MS = 5.0  # how long the model thread waits for more requests to join a batch


@dataclass
class _Job:
    arrays: list[np.ndarray]
    future: Future = field(default_factory=Future)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """One thread that owns the model: gathers queued jobs into batches of at most ``max_batch`` images.

    ``submit(arrays)`` returns a future of the (N, C) probabilities of those arrays; ``call(fn)`` runs
    ``fn`` on the model thread between batches (Grad-CAM needs the model to itself). With
    ``max_batch=1`` every image runs alone: no micro-batching.
    """

    def __init__(self, forward: Callable[[list[np.ndarray]], np.ndarray], max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:  # fmt: skip
        if max_batch < 1 or max_wait_ms < 0:
            raise ConfigError("--max-batch must be at least 1 and --batch-wait-ms not negative.")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cellmorphnet-model", daemon=True)
        self._thread.start()

    def submit(self, arrays: list[np.ndarray]) -> Future:
        job = _Job(list(arrays))
        if not job.arrays:
            job.future.set_result(np.zeros((0, 0), np.float32))
        else:
            self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        c = _Call(fn)
        self._queue.put(c)
        return c.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first: _Job) -> tuple[list[_Job], Any]:
        """``first`` and the jobs that arrive within the wait, up to ``max_batch`` images; and what stopped it."""
        jobs, n = [first], len(first.arrays)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return jobs, None
            if not isinstance(nxt, _Job) or n + len(nxt.arrays) > self.max_batch:
                return jobs, nxt  # a call, the end, or a job that would not fit: handled next
            jobs.append(nxt)
            n += len(nxt.arrays)
        return jobs, None

    def _run(self, jobs: list[_Job]) -> None:
        arrays = [a for j in jobs for a in j.arrays]
        try:
            parts = []
            for i in range(0, len(arrays), self.max_batch):
                parts.append(self.forward(arrays[i : i + self.max_batch]))
            probs = np.concatenate(parts)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request, never lost in this thread
            for j in jobs:
                j.future.set_exception(e)
            return
        start = 0
        for j in jobs:
            j.future.set_result(probs[start : start + len(j.arrays)])
            start += len(j.arrays)

    def _loop(self) -> None:
        pending = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is None:
                return
            if isinstance(item, _Call):
                try:
                    item.future.set_result(item.fn())
                except Exception as e:  # noqa: BLE001
                    item.future.set_exception(e)
                continue
            jobs, pending = self._gather(item)
            self._run(jobs)


@dataclass(frozen=True)
class Limits:
    """What one request may send. Sizes in bytes; ``max_pixels`` per decoded image."""

    max_file_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 100 * 1024 * 1024
    max_files: int = 256
    max_pixels: int = 50_000_000


class ModelService:
    """A run loaded once, warmed up, and answering ``predict`` and ``gradcam`` from any thread."""

    def __init__(self, run_dir: Path, which: str = "best", device: str = "auto", *,
                 max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 limits: Limits = Limits()) -> None:  # fmt: skip
        from cellmorphnet.run_model import inference_options, load_run_model

        self.run_dir = Path(run_dir)
        self.rm = load_run_model(self.run_dir, which, device)
        self.options = inference_options(self.rm)
        self.limits = limits
        self.classes = self.rm.classes
        self.ready = False
        self._checkpoint_sha256: str | None = None
        self.batcher = MicroBatcher(self._forward, max_batch, max_wait_ms)

    # --- the model thread -------------------------------------------------------------------------
    def _forward(self, arrays: list[np.ndarray], tta: bool | None = None) -> np.ndarray:
        o = self.options
        return class_probs(self.rm.model, arrays, o.policy, device=self.rm.device, channels_last=self.rm.channels_last,
                           tta=o.tta if tta is None else tta, temperature=o.temperature)  # fmt: skip

    def warm_up(self) -> ModelService:
        """One real forward pass (and the checkpoint's digest), so the first request is not the slow one."""
        size = self.options.policy.resize_chain[-1]
        self.batcher.submit([np.full((size, size, 3), 200, np.uint8)]).result()
        self.checkpoint_sha256()
        self.ready = True
        return self

    def close(self) -> None:
        self.ready = False
        self.batcher.close()

    # --- what clients call ------------------------------------------------------------------------
    def _uploads(self, files: list[tuple[str, bytes]]) -> list[Upload]:
        return [Upload(name or f"file-{i + 1}", data, self.limits.max_pixels) for i, (name, data) in enumerate(files)]

    def _prepare(self, uploads: list[Upload]):
        """infer's preprocessing of one set: the survey over all of them, the set's stain contrast (where on and
        the request has cells enough), then each one's crop and colours."""
        o = self.options
        survey = survey_files(uploads, o.policy, workers=1, colour_match=o.colour_match, stain_norm=o.stain_norm)
        if o.stain_contrast and survey.stain is not None:
            first = [_load(u, o.policy, survey)[0] for u in contrast_sample(uploads)]

            def one_view(arrays: list[np.ndarray]) -> np.ndarray:  # as infer estimates it
                return self.batcher.call(lambda: self._forward(arrays, tta=False)).result()

            survey = settle_contrast(survey, o.policy, [a for a in first if a is not None], self.classes, one_view)
        return [(u, *_load(u, o.policy, survey, crop_sides(o.policy, o.scale_views))) for u in uploads]

    def _predict(self, loaded, top_k: int) -> list[Prediction]:
        ok = [(u, arr, how, dist) for u, arr, err, how, dist in loaded if err is None]
        probs = self.batcher.submit([arr for _, arr, _, _ in ok]).result() if ok else []
        k = max(1, min(top_k, len(self.classes)))
        by_item = {u: to_prediction(u, row, self.classes, k, how, dist)
                   for (u, _, how, dist), row in zip(ok, probs, strict=True)}  # fmt: skip
        return [by_item.get(u) or Prediction(u, error=err) for u, _, err, *_ in loaded]

    def predict(self, files: list[tuple[str, bytes]], top_k: int = 3, min_confidence: float = 0.0
                ) -> list[Prediction]:  # fmt: skip
        """One prediction per ``(name, bytes)``, in order; unreadable ones carry their ``error``."""
        preds = self._predict(self._prepare(self._uploads(files)), top_k)
        for p in preds:
            p.min_confidence = min_confidence
        return preds

    def gradcam_png(self, name: str, data: bytes) -> tuple[Prediction, bytes]:
        """The prediction for one image and its Grad-CAM overlay (the crop beside the heat map) as PNG bytes."""
        import io

        from cellmorphnet.cellfinder import padded_crop
        from cellmorphnet.gradcam import overlay_image
        from cellmorphnet.inference import _read

        loaded = self._prepare(self._uploads([(name, data)]))
        pred = self._predict(loaded, 1)[0]
        if pred.error:
            return pred, b""
        arr, idx = single_view(loaded[0][1]), self.classes.index(pred.predicted)
        cam = self.batcher.call(lambda: self._cam(arr, idx)).result()
        crop = np.asarray(padded_crop(_read(pred.path), pred.box))
        buf = io.BytesIO()
        overlay_image(crop, cam, f"{pred.predicted} {pred.confidence:.2f}").save(buf, format="PNG")
        return pred, buf.getvalue()

    def _cam(self, arr: np.ndarray, idx: int) -> np.ndarray:
        import torch

        from cellmorphnet.data.loader import eval_transform
        from cellmorphnet.gradcam import gradcam

        p = self.options.policy
        x = eval_transform(torch.from_numpy(np.array(arr[None])), p.image_size, p.mean, p.std).to(self.rm.device)
        if self.rm.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cam, _ = gradcam(self.rm.model, x, [idx])
        return cam[0]

    def checkpoint_sha256(self) -> str:
        if self._checkpoint_sha256 is None:
            h = hashlib.sha256()
            with open(self.rm.checkpoint, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._checkpoint_sha256 = h.hexdigest()
        return self._checkpoint_sha256

    def card(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: what the model is, how it preprocesses, and how well it did."""
        from cellmorphnet._io import read_json
        from cellmorphnet.data import registry

        rec = self.rm.record
        metrics = None
        report = self.run_dir / "eval" / "test" / "metrics.json"
        if report.exists():
            try:
                data = read_json(report)
                metrics = {name: {k: d.get("metrics", {}).get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
                           for name, d in data.get("datasets", {}).items()}  # fmt: skip
            except (OSError, ValueError):
                metrics = None
        datasets = []
        for name, d in rec.datasets.items():
            info = registry.get_info(name) if name in registry.sources() else None
            datasets.append({"name": name, "size": d.size, "title": info.title if info else None,
                             "licence": info.licence if info else None})  # fmt: skip
        o = self.options
        return {
            "run": self.run_dir.name,
            "classes": self.classes,
            "input_size": rec.image_size,
            "architecture": rec.config.model,
            "epoch": self.rm.epoch,
            "checkpoint": self.rm.checkpoint.name,
            "checkpoint_sha256": self.checkpoint_sha256(),
            "datasets": datasets,
            "preprocessing": {**o.policy.to_dict(), "stain_norm": o.stain_norm, "colour_match": o.colour_match,
                              "stain_contrast": o.stain_contrast,
                              "tta": o.tta, "temperature": o.temperature,
                              "set": "the files of one request"},  # fmt: skip
            "test_metrics": metrics,
            "device": str(self.rm.device),
            "micro_batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000},
            "limits": {"max_file_bytes": self.limits.max_file_bytes,
                       "max_request_bytes": self.limits.max_request_bytes,
                       "max_files": self.limits.max_files, "max_pixels": self.limits.max_pixels},  # fmt: skip
            "notice": "Research tool: not a medical device; its predictions are not a diagnosis.",
        }
