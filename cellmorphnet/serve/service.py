"""A trained run held in memory to answer many small requests: what ``cellmorphnet serve`` runs.

The images of one request are one set, prepared by ``inference.prepare_set`` as ``infer`` prepares the
same files given together (the same survey, crops, colours, views and temperature), so a file gets the
same prediction from ``infer``, the REST API and the web page. Only the forward pass is shared between
requests (``batching.MicroBatcher``): all model work (batches, Grad-CAM, the warm-up) runs on one model
thread, in order; request threads only decode and crop.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellmorphnet.inference import (
    CellItem,
    ImageInfo,
    Loaded,
    Prediction,
    Upload,
    class_probs,
    find_cells,
    in_file_order,
    inference_options,
    judged,
    prepare_set,
    read_image,
    single_view,
)
from cellmorphnet.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, MicroBatcher
from cellmorphnet.serve.settings import Limits


@dataclass
class _Prepared:
    """One request's set, ready for the model."""

    uploads: list[Upload]
    loaded: list[Loaded]
    taken: dict[Upload, ImageInfo]  # how each upload was taken: a crop, or a field with its cells
    refused: dict[Upload, str]  # fields too large to search, or with more cells than --max-cells
    deadline: float  # time.monotonic() past which the request is answered 503
    light: bool  # a small request: its model work goes before the next batch of a large one's


class ModelService:
    """A run loaded once, warmed up, and answering ``predict`` and ``gradcam`` from any thread."""

    def __init__(self, run_dir: Path, which: str = "best", device: str = "auto", *,
                 max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 limits: Limits | None = None, max_cells: int | None = None, lab: str | None = None,
                 home: Path | None = None, engine: str = "auto") -> None:  # fmt: skip
        from cellmorphnet.inference.engine import load_model
        from cellmorphnet.labs import profile as profiles

        self.run_dir, self._which = Path(run_dir), which
        self.rm = load_model(self.run_dir, which, device, engine=engine, home=home)
        self._torch_model = None  # Grad-CAM's (PyTorch), loaded on the first request where the engine is ONNX
        lab_values, home_only = profiles.resolve(lab, self.rm, home)
        self.options = inference_options(self.rm.record, max_cells=max_cells, lab=lab_values,
                                         home_preprocessing=home_only)
        self.limits = limits = limits or Limits()
        self.classes = self.rm.classes
        self.ready = False
        # Every request's images are decoded on these threads, never on the web server's many: at most this many
        # requests decode at once, and only these threads' memory pools ever hold a decoded canvas (a freed block
        # stays in its thread's pool, so decoding on 40 threads would keep 40 pools' worth).
        self._decoder = ThreadPoolExecutor(limits.max_concurrent_sets, thread_name_prefix="cellmorphnet-decode")
        self._light = ThreadPoolExecutor(1, thread_name_prefix="cellmorphnet-light")  # small requests' own lane
        self._in_flight = 0  # requests in the decoding lane, running or waiting for a thread
        self._count = threading.Lock()
        self.batcher = MicroBatcher(self._forward, max_batch, max_wait_ms)

    @property
    def saturated(self) -> bool:
        """Every decoding thread is busy (a further large request would wait): ``/readyz`` says not ready."""
        return self._in_flight >= self.limits.max_concurrent_sets

    # --- the model thread -------------------------------------------------------------------------
    def _forward(self, arrays: list[np.ndarray], tta: bool | None = None) -> np.ndarray:
        """Class probabilities; on the main path (``tta`` None) with each image's pooled features after them on the
        same row (the verdict's), so the micro-batcher slices one array."""
        o = self.options
        if tta is not None:
            return class_probs(self.rm.model, arrays, o.policy, device=self.rm.device,
                               channels_last=self.rm.channels_last, tta=tta, temperature=o.temperature)  # fmt: skip
        probs, feats = class_probs(self.rm.model, arrays, o.policy, device=self.rm.device,
                                   channels_last=self.rm.channels_last, tta=o.tta, temperature=o.temperature,
                                   features=True)  # fmt: skip
        return np.concatenate([probs, feats], axis=1)

    def warm_up(self) -> ModelService:
        """One real forward pass (and the checkpoint's digest), so the first request is not the slow one."""
        size = self.options.policy.resize_chain[-1]
        self.batcher.submit([np.full((size, size, 3), 200, np.uint8)]).result()
        self.checkpoint_sha256()
        self.ready = True
        return self

    def close(self) -> None:
        self.ready = False
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._light.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()

    # --- what clients call ------------------------------------------------------------------------
    def _uploads(self, files: list[tuple[str, bytes]]) -> tuple[list[Upload], int]:
        """The request's files as uploads, each carrying the request's deadline, and their pixels together; refused
        whole (``LimitExceeded``) when their images' headers add up to more than ``max_request_pixels``: checked
        before any is decoded."""
        from cellmorphnet.errors import LimitExceeded
        from cellmorphnet.vision.imaging import pixel_count

        counts = [pixel_count(io.BytesIO(data)) or 0 for _, data in files]
        counts = [c for c in counts if c <= self.limits.max_pixels]  # larger ones are refused one by one
        if sum(counts) > self.limits.max_request_pixels:
            raise LimitExceeded(f"The images of this request have {sum(counts) / 1e6:,.0f} million pixels together; "
                                f"the limit is {self.limits.max_request_pixels / 1e6:,.0f} million: send fewer "
                                "images per request.")  # fmt: skip
        deadline = time.monotonic() + self.limits.request_timeout_s
        uploads = [Upload(name or f"file-{i + 1}", data, self.limits.max_pixels, deadline=deadline)
                   for i, (name, data) in enumerate(files)]  # fmt: skip
        return uploads, sum(counts)

    def _prepare(self, uploads: list[Upload], pixels: int, cells: str | None = None) -> _Prepared:
        """infer's preprocessing of one set: fields become their cells (``inference.find_cells``), then
        ``inference.prepare_set``; the model questions the stain contrast asks go through the model thread like
        every other forward pass. Runs in the light lane for small requests, else in the decoding lane; a request
        still waiting for a thread at its deadline is dropped, one past it stops at its next image (``TimeLimit``)."""
        from cellmorphnet.errors import TimeLimit

        deadline = uploads[0].deadline if uploads else time.monotonic()

        light = pixels <= self.limits.light_request_pixels

        def one_view(arrays: list[np.ndarray]) -> np.ndarray:  # a batch at a time, as ``_predict`` sends them
            step = self.batcher.max_batch
            parts = [self.batcher.call(lambda part=arrays[i : i + step]: self._forward(part, tta=False),
                                       priority=0 if light else 1).result()
                     for i in range(0, len(arrays), step)]  # fmt: skip
            return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

        def prepare() -> _Prepared:
            try:
                items, taken, refused = find_cells(uploads, cells or self.options.cells, workers=1,
                                                   max_cells=self.options.max_cells)  # fmt: skip
                _, loaded = prepare_set(items, self.options, self.classes, one_view, workers=1)
                loaded = list(loaded)
            finally:
                for u in uploads:
                    u.image = None  # the full-size pixels go at once: what the model needs is in ``loaded``
            return _Prepared(uploads, loaded, taken, refused, deadline, light)

        if light:
            future = self._light.submit(prepare)
        else:
            with self._count:
                self._in_flight += 1
            future = self._decoder.submit(prepare)
            future.add_done_callback(lambda _: self._done())
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # not started yet: never will be; started: stops at its next image (TimeLimit)
            raise TimeLimit(f"The request took longer than {self.limits.request_timeout_s:g} s (--request-timeout); "
                            "the server is busy: try again, or send fewer or smaller images.") from None  # fmt: skip

    def _done(self) -> None:
        with self._count:
            self._in_flight -= 1

    def _predict(self, prepared: _Prepared, top_k: int) -> list[Prediction]:
        """The model's answers for a prepared set, sent to the model thread a batch at a time (so other requests'
        batches take turns with a large one's rather than wait for all of it)."""
        from cellmorphnet.errors import TimeLimit

        loaded = prepared.loaded
        ok = [x for x in loaded if x.error is None]
        step = self.batcher.max_batch
        parts = []
        for i in range(0, len(ok), step):
            if time.monotonic() > prepared.deadline:
                raise TimeLimit(f"The request took longer than {self.limits.request_timeout_s:g} s "
                                "(--request-timeout): send fewer images per request.")  # fmt: skip
            batch = [x.array for x in ok[i : i + step]]
            parts.append(self.batcher.submit(batch, priority=0 if prepared.light else 1).result())
        rows = np.concatenate(parts) if parts else np.zeros((0, len(self.classes)))
        c = len(self.classes)
        k = max(1, min(top_k, c))
        judged_ = judged(ok, rows[:, :c], rows[:, c:], self.classes, k, trust=self.rm.trust, options=self.options)
        by_item = {x.item: p for x, p in zip(ok, judged_, strict=True)}
        preds = [by_item.get(x.item) or Prediction(x.item, error=x.error) for x in loaded]
        return in_file_order(preds, prepared.uploads, taken=prepared.taken, refused=prepared.refused)

    def predict(self, files: list[tuple[str, bytes]], top_k: int = 3, min_confidence: float = 0.0
                ) -> list[Prediction]:  # fmt: skip
        """Predictions for ``(name, bytes)``, in upload order: one per crop, one per white cell found in a field
        (and one saying so for a field without any); unreadable files carry their ``error``."""
        preds = self._predict(self._prepare(*self._uploads(files)), top_k)
        for p in preds:
            p.min_confidence = min_confidence
        return preds

    def gradcam_png(self, name: str, data: bytes, cell: tuple[tuple[int, int, int, int], float] | None = None
                    ) -> tuple[Prediction, bytes]:  # fmt: skip
        """The prediction for one image and its Grad-CAM overlay (the crop beside the heat map) as PNG bytes;
        with ``cell`` (a box in the image and its red-cell diameter, as ``predict`` reported them), of that cell."""
        from cellmorphnet.inference.gradcam import overlay_image
        from cellmorphnet.vision.cellfinder import padded_crop

        uploads, pixels = self._uploads([(name, data)])
        if cell is not None:
            uploads = [self._cell_upload(uploads[0], *cell)]
        prepared = self._prepare(uploads, pixels, cells="one")
        pred = self._predict(prepared, 1)[0]
        if pred.error:
            return pred, b""
        arr, idx = single_view(prepared.loaded[0].array), self.classes.index(pred.predicted)
        cam = self.batcher.call(lambda: self._cam(arr, idx)).result()
        crop = np.asarray(padded_crop(read_image(pred.path), pred.box))
        buf = io.BytesIO()
        overlay_image(crop, cam, f"{pred.predicted} {pred.confidence:.2f}").save(buf, format="PNG")
        return pred, buf.getvalue()

    def _cell_upload(self, upload: Upload, box: tuple[int, int, int, int], diameter: float) -> Upload:
        """The crop of one cell of a field, as an upload of its own (PNG bytes; a few hundred kilobytes). The box
        must lie in the image and the diameter be one ``fields.rbc_diameter`` can give for it (``InvalidData``
        otherwise), checked before any pixel work: the crop's size follows from the diameter."""
        from cellmorphnet.errors import InvalidData
        from cellmorphnet.vision import fields
        from cellmorphnet.vision.imaging import image_size

        w, h = image_size(io.BytesIO(upload.data), upload.name)
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise InvalidData(f"The box ({x0}, {y0}, {x1}, {y1}) does not lie in the {w}x{h} image.")
        low, high = fields.MIN_DIAMETER, fields.max_diameter((w, h))
        if not low <= diameter <= high:
            raise InvalidData(f"rbc must be between {low:g} and {high:.0f} pixels for a {w}x{h} image, "
                              f"not {diameter:g}.")
        crop = CellItem(upload, 1, box, False, diameter).image
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        return Upload(f"{upload.name}#cell", buf.getvalue(), self.limits.max_pixels, deadline=upload.deadline)

    def _cam(self, arr: np.ndarray, idx: int) -> np.ndarray:
        import torch

        from cellmorphnet.data.loader import eval_transform
        from cellmorphnet.inference.engine import is_engine
        from cellmorphnet.inference.gradcam import gradcam

        rm = self.rm
        if is_engine(rm.model):  # Grad-CAM needs gradients: PyTorch's copy of the network, loaded once
            if self._torch_model is None:
                from cellmorphnet.runs.load import load_run_model

                self._torch_model = load_run_model(self.run_dir, self._which, "cpu", accept_mismatch=True)
            rm = self._torch_model
        p = self.options.policy
        x = eval_transform(torch.from_numpy(np.array(arr[None])), p.image_size, p.mean, p.std).to(rm.device)
        if rm.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cam, _ = gradcam(rm.model, x, [idx])
        return cam[0]

    def checkpoint_sha256(self) -> str:
        return self.rm.checkpoint_sha256()


MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "BMP": "image/bmp", "WEBP": "image/webp"}


def add_to_case(service: ModelService, store, case: str, files: list[tuple[str, bytes]]) -> tuple[list, list[dict]]:
    """Classify a request's files as ``predict`` does and keep every cell in ``store`` (``reviews.ReviewStore``)
    under ``case``: a single-cell image as its own bytes, a cell of a field as its crop (PNG), each with the
    model's probabilities over every class. Returns the stored cells and the files that could not be read."""
    from PIL import Image

    preds = service.predict(files, top_k=len(service.classes))
    stored, skipped = [], []
    for p in preds:
        if p.error or p.no_cells:
            skipped.append({"file": str(p.source), "reason": p.error or "no white cell found"})
            continue
        upload = p.source
        digest = hashlib.sha256(upload.data).hexdigest()
        if p.cell is not None:
            buf = io.BytesIO()
            p.cell.image.save(buf, format="PNG")
            crop, media = buf.getvalue(), "image/png"
            with Image.open(io.BytesIO(upload.data)) as img:
                store.add_field(digest, upload.data, MEDIA_TYPES.get(img.format or "", "image/png"))
        else:
            with Image.open(io.BytesIO(upload.data)) as img:
                media = MEDIA_TYPES.get(img.format or "", "image/png")
            crop = upload.data
        cell_id = store.add_cell(case, source=upload.name, image_sha256=digest,
                                 cell_index=p.cell.index if p.cell else None, box=p.cell.box if p.cell else None,
                                 edge=bool(p.cell and p.cell.edge), crop=crop, crop_type=media,
                                 run=service.run_dir.name, checkpoint_sha256=service.checkpoint_sha256(),
                                 predicted=p.predicted, confidence=p.confidence,
                                 probabilities={c: round(v, 6) for c, v in p.top_k}, verdict=p.verdict,
                                 review_reason=p.review_reason)  # fmt: skip
        stored.append(store.cell(cell_id))
    return stored, skipped
