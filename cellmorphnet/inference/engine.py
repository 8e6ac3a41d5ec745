"""The inference engine: ONNX Runtime on a CPU, PyTorch on a GPU (or where ONNX Runtime is missing).

``--engine auto`` (the default) picks ONNX Runtime when it is installed and no GPU is there to use; ``onnx`` and
``torch`` ask for one. The ONNX model is built from the run's best (or last) checkpoint the first time it is
needed, with PyTorch, and cached: in the run folder (``RUN/engine/``), or under ``HOME/engines/<run>/`` for a run
that ships inside the package (the shipped model carries its own, built when it was packaged). Its name holds the
checkpoint's SHA-256 and ``ENGINE_FORMAT`` (this exporter's version), so a changed checkpoint builds a new one; a
JSON file beside it keeps the run record the checkpoint carried and the ONNX file's own SHA-256, so a file changed
after it was written is refused. The graph computes
what PyTorch computes from the same float input: normalisation, the network, its logits and the pooled features
the verdicts need. Resizing, the flips and turns, the temperature and the softmax are done here in numpy, so
classifying files on this engine imports neither torch nor timm.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from cellmorphnet._io import atomic_path, file_digest
from cellmorphnet.errors import CheckpointError, ConfigError, RunError

ENGINES = ("auto", "onnx", "torch")
ENGINE_FORMAT = 1  # the exporter's version: a graph built by another is rebuilt
ORIENTATIONS = tuple((flip, k) for flip in (False, True) for k in range(4))  # as model.prediction's: all 8
PER_SCALE = ((False, 0), (False, 1), (True, 0), (True, 1))  # as inference.predict's ORIENTATIONS_PER_SCALE
_META_KEYS = {"format": int, "checkpoint_sha256": str, "onnx_sha256": str, "record": dict, "epoch": int,
              "feature_dim": int, "torch": str}  # fmt: skip


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_present() -> bool:
    """Whether this machine has a GPU PyTorch would use (an NVIDIA driver, or Apple silicon), found without
    importing torch."""
    return os.path.exists("/dev/nvidiactl") or (sys.platform == "darwin" and platform.machine() == "arm64")


def choose(engine: str, device: str) -> str:
    """``onnx`` or ``torch`` for ``--engine`` and ``--device``; a one-line error where ONNX Runtime is asked for and
    missing, or asked for on a GPU."""
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine '{engine}'; choose one of {', '.join(ENGINES)}.")
    if engine == "torch":
        return "torch"
    on_gpu = device not in ("auto", "cpu") or (device == "auto" and gpu_present())
    if engine == "auto":
        return "onnx" if not on_gpu and onnxruntime_available() else "torch"
    if device not in ("auto", "cpu"):
        raise ConfigError(f"--engine onnx runs on the CPU; --device {device} needs --engine torch.")
    if not onnxruntime_available():
        raise ConfigError("--engine onnx needs ONNX Runtime, which is not installed.",
                          hint='pip install "cellmorphnet[onnx]" (or pip install onnxruntime), or use --engine torch.')
    return "onnx"


# --- numpy preprocessing, as PyTorch's --------------------------------------------------------------------


@lru_cache(maxsize=16)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis, with
    ``antialias`` when shrinking (PIL's triangle filter, as torch computes it)."""
    if n_in == n_out:
        return np.eye(n_in, dtype=np.float32)
    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    if scale < 1.0:  # enlarging: two taps, half-pixel centres, clamped at the edges
        for i in range(n_out):
            src = max((i + 0.5) * scale - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            frac = src - i0
            w[i, i0] += 1.0 - frac
            w[i, i1] += frac
        return w.astype(np.float32)
    support = scale  # shrinking: the triangle filter widened by the scale
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        taps = np.array([max(0.0, 1.0 - abs((j - centre + 0.5) / scale)) for j in range(lo, hi)])
        w[i, lo:hi] = taps / taps.sum() if taps.sum() > 0 else 0.0
    return w.astype(np.float32)


def to_input(stack: np.ndarray, size: int) -> np.ndarray:
    """Prepared uint8 images (N, S, S, 3) as the network takes them: float32 NCHW in [0, 1] at ``size``."""
    x = stack.astype(np.float32) / np.float32(255.0)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        ry, rx = resize_matrix(h, size), resize_matrix(w, size)
        x = np.einsum("oh,nchw,pw->ncop", ry, x, rx, optimize=True).astype(np.float32)
    return x


def _views(x: np.ndarray, views) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.rot90(x[..., ::-1] if flip else x, k, axes=(2, 3))) for flip, k in views]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _threads() -> int:
    """Threads for one session: ``OMP_NUM_THREADS`` where set (torchrun sets 1 a process), else every core."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        n = 0
    return n if n > 0 else os.cpu_count() or 1


class OnnxEngine:
    """An ONNX Runtime session of a run's network: ``run(x)`` gives (logits, pooled features) of float NCHW input."""

    def __init__(self, path: Path, image_size: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path, self.image_size = Path(path), image_size
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return logits, feats


def engine_class_probs(engine: OnnxEngine, arrays: list[np.ndarray], *, tta: bool = False, temperature: float = 1.0,
                       keep=None, features: bool = False):  # fmt: skip
    """``inference.predict.class_probs`` on the ONNX engine, in numpy: the same views, averages and restriction."""
    out: list[np.ndarray | None] = [None] * len(arrays)
    feats: list[np.ndarray | None] = [None] * len(arrays)
    for ndim, views in ((3, ORIENTATIONS), (4, PER_SCALE)):
        idx = [i for i, a in enumerate(arrays) if a.ndim == ndim]
        if not idx:
            continue
        stack = np.stack([arrays[i] for i in idx])
        n_sides = stack.shape[1] if ndim == 4 else 1
        x = to_input(stack.reshape(-1, *stack.shape[-3:]), engine.image_size)
        ran = [engine.run(v) for v in _views(x, views if tta else views[:1])]
        logits = np.stack([lg for lg, _ in ran]).astype(np.float32) / np.float32(temperature)
        if keep is not None:
            masked = np.full_like(logits, -np.inf)
            masked[..., np.asarray(keep)] = logits[..., np.asarray(keep)]
            logits = masked
        probs = _softmax(logits).mean(0).reshape(len(idx), n_sides, -1).mean(1)
        pooled = np.stack([f for _, f in ran]).mean(0).reshape(len(idx), n_sides, -1).mean(1) if features else None
        for j, i in enumerate(idx):
            out[i] = probs[j]
            if pooled is not None:
                feats[i] = pooled[j]
    return (np.stack(out), np.stack(feats)) if features else np.stack(out)


# --- the cached ONNX model of a run ---------------------------------------------------------------------------


def cache_dir(run_dir: Path, home: Path | None) -> Path:
    """Where a run's ONNX model is kept: its own folder, or the home's for a run shipped inside the package or in a
    folder this user cannot write (a colleague's, on a shared drive)."""
    from cellmorphnet import paths
    from cellmorphnet.runs import folders as runs

    if runs.is_packaged(run_dir) or not os.access(run_dir, os.W_OK):
        return Path(home or paths.home_dir()) / "engines" / Path(run_dir).name
    return Path(run_dir) / "engine"


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}).", hint="Delete it: the next run rebuilds it.") from None
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in _META_KEYS.items()):
        raise CheckpointError(f"{path} is not an engine record cellmorphnet wrote.",
                              hint="Delete it and its .onnx: the next run rebuilds them.")  # fmt: skip
    return meta


def build(run_dir: Path, which: str, out: Path) -> None:
    """Build the ONNX model of ``run_dir``'s checkpoint ``which`` into ``out`` (and its record beside it): PyTorch."""
    import torch

    from cellmorphnet import __version__
    from cellmorphnet.export.onnx import export_engine
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(run_dir, which, "cpu", accept_mismatch=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        export_engine(rm, Path(tmp))
    meta = {"format": ENGINE_FORMAT, "checkpoint_sha256": rm.checkpoint_sha256(), "onnx_sha256": file_digest(out),
            "record": rm.record.to_dict(), "epoch": rm.epoch, "feature_dim": int(rm.model.num_features),
            "torch": torch.__version__, "cellmorphnet": __version__}  # fmt: skip
    with atomic_path(out.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    for old in out.parent.glob("*.onnx"):  # an earlier checkpoint's (the run trained on, or was replaced)
        if old != out and old.name.endswith(f"-{which}-f{ENGINE_FORMAT}.onnx"):
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)


def load_onnx_run(run_dir: Path, which: str = "best", *, home: Path | None = None, accept_mismatch: bool = False,
                  build_if_missing: bool = True):  # fmt: skip
    """A loaded run (``runs.load.RunModel``) whose ``model`` is an ``OnnxEngine``: the cached ONNX model of its
    checkpoint ``which``, built first where there is none."""
    from cellmorphnet.runs import trust
    from cellmorphnet.runs.load import RunModel, checkpoint_path, record_mismatch
    from cellmorphnet.runs.record import RunRecord

    ckpt = checkpoint_path(run_dir, which)
    digest = file_digest(ckpt)
    name = f"{digest[:16]}-{which}-f{ENGINE_FORMAT}.onnx"
    onnx = Path(run_dir) / "engine" / name  # a shipped run carries its own, built with it
    if not onnx.is_file():
        onnx = cache_dir(run_dir, home) / name
    meta_path = onnx.with_suffix(".json")
    if not (onnx.is_file() and meta_path.is_file()):
        if not build_if_missing:
            raise RunError(f"No ONNX model of {Path(run_dir).name} is cached.")
        build(run_dir, which, onnx)
    meta = _read_meta(meta_path)
    if meta["checkpoint_sha256"] != digest or meta["format"] != ENGINE_FORMAT:
        raise CheckpointError(f"{meta_path} describes another checkpoint.", hint="Delete it: the next run rebuilds it.")
    if file_digest(onnx) != meta["onnx_sha256"]:
        raise CheckpointError(f"{onnx} was changed after cellmorphnet wrote it (its SHA-256 is not the recorded one).",
                              hint="Delete it and its .json: the next run rebuilds them from the checkpoint.")
    try:
        record = RunRecord.from_dict(meta["record"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path} holds no valid run record ({e}).") from None
    mismatch = record_mismatch(run_dir, record, which, accept=accept_mismatch)
    engine = OnnxEngine(onnx, record.image_size)
    reference = trust.load(Path(run_dir), len(record.classes), meta["feature_dim"])
    return RunModel(engine, record, meta["epoch"], ckpt, "cpu", False, mismatch, reference, sha256=digest)


def load_model(run_dir: Path, which: str = "best", device: str = "auto", *, engine: str = "auto",
               home: Path | None = None, accept_mismatch: bool = False):  # fmt: skip
    """The run loaded on the engine ``engine`` and ``device`` choose (``choose``)."""
    if choose(engine, device) == "onnx":
        return load_onnx_run(run_dir, which, home=home, accept_mismatch=accept_mismatch)
    from cellmorphnet.runs.load import load_run_model

    return load_run_model(run_dir, which, device, accept_mismatch=accept_mismatch)


def is_engine(model) -> bool:
    return isinstance(model, OnnxEngine)
