"""Inference throughput on each engine: the default path against its limits, stage by stage.

    python -m benchmarks.infer_throughput [--engines onnx,torch] [--fields 100] [--repeats 3] [--json]

In one process, with the shipped model and every default of ``infer`` (so 8 views a cell: flips and turns), for
each engine (``--engine onnx``: ONNX Runtime; ``torch``: PyTorch, channels-last as the run says):

- model limit: the network alone over prepared arrays at the batch size, with the default's views;
- decode limit: Pillow decoding the JPEGs in ``--workers`` threads, nothing else;
- ``infer`` on the 240 PBC test JPEGs and on ``--fields`` BCCD fields (``inference.predict_files``, every
  default), with the time in each stage (decoding, finding the nucleus and framing, finding white cells in a
  field, stain steps, the model), summed over threads and given as shares;
- the ratio of ``infer``'s rate to the decode+model limit (1 / (1/decode + 1/model)).

Runs alternate between engines, ``--repeats`` times after a warm-up; figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED, emit, header

PBC = SHARED / "bloodmnist-pbc" / "test_images"
BCCD_ZIP = next((SHARED / "bccd").glob("BCCD_Dataset-*.zip"), SHARED / "bccd" / "missing.zip")

_spent: dict[str, float] = defaultdict(float)
_lock = threading.Lock()


def _instrument(module_names: list[str], name: str, label: str) -> None:
    """Time every call of the function ``name`` (first found in ``module_names``) wherever the package bound it."""
    import importlib

    original = None
    for m in module_names:
        original = getattr(importlib.import_module(m), name, None)
        if original is not None:
            break

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            with _lock:
                _spent[label] += time.perf_counter() - t

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("cellmorphnet") and getattr(mod, name, None) is original:
            setattr(mod, name, timed)


def _bccd_fields(folder: Path, n: int) -> list[Path]:
    with zipfile.ZipFile(BCCD_ZIP) as z:
        names = sorted(m for m in z.namelist() if "/JPEGImages/" in m and m.endswith(".jpg"))[:n]
        out = []
        for m in names:
            p = folder / Path(m).name
            p.write_bytes(z.read(m))
            out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="onnx,torch")
    ap.add_argument("--fields", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from concurrent.futures import ThreadPoolExecutor

    from cellmorphnet.inference.engine import load_model
    from cellmorphnet.inference.options import inference_options
    from cellmorphnet.inference.predict import class_probs, predict_files
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.vision.imaging import load_rgb

    result = header("python -m benchmarks.infer_throughput " + " ".join(sys.argv[1:]))
    shipped = runs.packaged_runs()[runs.PACKAGED]
    engines = args.engines.split(",")
    models = {e: load_model(shipped, "best", "cpu", engine=e) for e in engines}
    crops = sorted(PBC.rglob("*.jpg"))
    tmp = Path(tempfile.mkdtemp())
    fields = _bccd_fields(tmp, args.fields)
    for mod, fn, label in ((["cellmorphnet.vision.imaging"], "load_rgb", "decode"),
                           (["cellmorphnet.vision.cellfinder"], "find_nucleus", "nucleus and framing"),
                           (["cellmorphnet.vision.fields"], "find_white_cells", "white cells in fields"),
                           (["cellmorphnet.vision.fields"], "rbc_diameter", "red-cell scale"),
                           (["cellmorphnet.vision.colour"], "normalise_stain", "stain steps"),
                           (["cellmorphnet.vision.colour"], "apply_contrast", "stain steps"),
                           (["cellmorphnet.inference.predict"], "class_probs", "model")):  # fmt: skip
        _instrument(mod, fn, label)

    some = models[engines[0]]
    options = inference_options(some.record)
    views = 8 if options.tta else 1
    arrays = [np.random.default_rng(0).integers(0, 256, (some.record.inference.resize_chain[-1],) * 2 + (3,),
                                                dtype=np.uint8) for _ in range(args.batch_size)]  # fmt: skip

    def model_limit(rm) -> float:
        t = time.perf_counter()
        class_probs(rm.model, arrays, options.policy, device=rm.device, channels_last=rm.channels_last,
                    tta=options.tta, temperature=options.temperature)  # fmt: skip
        return len(arrays) / (time.perf_counter() - t)

    def decode_limit() -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda p: load_rgb(p), crops))
        return len(crops) / (time.perf_counter() - t)

    def infer(rm, files) -> tuple[float, dict[str, float], int]:
        _spent.clear()
        t = time.perf_counter()
        preds, _ = predict_files(rm, files, inference_options(rm.record), batch_size=args.batch_size,
                                 workers=args.workers)  # fmt: skip
        wall = time.perf_counter() - t
        return len(files) / wall, dict(_spent), sum(p.cell is not None for p in preds)

    rows: dict[str, dict[str, list]] = {e: defaultdict(list) for e in engines}
    decode = []
    for e in engines:  # warm-up
        model_limit(models[e])
        infer(models[e], crops[:32])
    for _ in range(args.repeats):
        decode.append(decode_limit())
        for e in engines:
            rm = models[e]
            rows[e]["model"].append(model_limit(rm))
            rate, spent, _ = infer(rm, crops)
            rows[e]["crops"].append(rate)
            rows[e]["crop_stages"].append(spent)
            rate, spent, cells = infer(rm, fields)
            rows[e]["fields"].append(rate)
            rows[e]["field_stages"].append(spent)
            rows[e]["cells"].append(cells)
    dec = statistics.median(decode)
    result.update(views_per_cell=views, batch_size=args.batch_size, workers=args.workers, crops=len(crops),
                  fields=len(fields), decode_images_per_s=round(dec, 1), engines={})  # fmt: skip
    for e in engines:
        r = rows[e]
        model = statistics.median(r["model"])
        limit = 1 / (1 / dec + 1 / model)

        def shares(stage_runs) -> dict[str, float]:
            total = defaultdict(float)
            for s in stage_runs:
                for k, v in s.items():
                    total[k] += v
            whole = sum(total.values()) or 1.0
            return {k: round(v / whole, 3) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}

        crops_rate, fields_rate = statistics.median(r["crops"]), statistics.median(r["fields"])
        result["engines"][e] = {
            "model_images_per_s": round(model, 1), "decode_plus_model_limit": round(limit, 1),
            "infer_crops_images_per_s": round(crops_rate, 1), "ratio_to_limit": round(crops_rate / limit, 3),
            "infer_fields_per_s": round(fields_rate, 2), "cells_in_fields": r["cells"][0],
            "crop_stage_shares": shares(r["crop_stages"]), "field_stage_shares": shares(r["field_stages"]),
            "windows": {k: [round(x, 2) for x in v] for k, v in r.items() if k in ("model", "crops", "fields")},
        }  # fmt: skip
        print(f"{e}: model {model:.0f} cells/s ({views} views each); decode {dec:.0f} img/s; limit {limit:.0f}; "
              f"infer {crops_rate:.1f} img/s ({crops_rate / limit:.2f} of the limit); fields {fields_rate:.2f}/s",
              file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
