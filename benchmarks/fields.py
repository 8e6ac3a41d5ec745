"""White cells in smear fields: detection against BCCD's boxes, the red-cell ruler, speed, and crops unchanged.

    python -m benchmarks.fields --json      # results/fields-DATE.json

1. Detection (``fields.find_white_cells`` at the set's scale, as ``infer`` runs it) against BCCD's VOC WBC
   boxes, a found cell right when its box overlaps an unused WBC box with IoU >= 0.5: precision, recall and
   F1 on BCCD's test split (``ImageSets/Main/test.txt``; the detector's constants were chosen on train and
   val only) and on all 364 fields. BCCD leaves some white cells without a box (the six fields its README
   counts as holding none each show one; listed in ``benchmarks/fields_bccd_unboxed.json``, checked by eye):
   reported both as BCCD scores them and with those counted as found cells.
2. The ruler: ``fields.rbc_diameter`` of each field against the median of its own red-cell boxes (the
   boxes are loose, and overlapping cells are boxed apart: a rough truth): median ratio and spread, per
   field and with the set's median.
3. Speed: fields per second through ``infer``'s whole default path (find the cells, frame, stain-normalise,
   classify with the 8-view average), model loaded, BCCD's 72 test fields at 640x480; best of 3.
4. Crops unchanged: the 240 PBC test JPEGs and external/zheng2018-d1 with ``--cells auto`` (the default)
   against ``--cells one`` (the behaviour before fields): identical predictions, accuracy of each.
5. Bounds (``--bounds``: this part alone): ``cellmorphnet infer bloodmnist`` (the installed command, every
   default, a new process each) on a 640x480 photo of noise, on a 7000x7000 field (a mosaic of BCCD's fields,
   JPEG) and on the same area in 640x480 fields (160 BCCD fields in a folder): wall time and the process's peak
   resident memory (``wait4``'s ru_maxrss), and the ratios of the large field to its area in small ones.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED, emit, header

BCCD_ZIP = SHARED / "bccd" / "BCCD_Dataset-d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip"
UNBOXED = Path(__file__).with_name("fields_bccd_unboxed.json")


def _bccd() -> tuple[dict, dict, dict[str, list[str]]]:
    """Fields (PIL images), their boxes by class, and the splits, read from the archive as GitHub serves it."""
    import defusedxml.ElementTree as ET
    from PIL import Image

    images, boxes, splits = {}, {}, {}
    with zipfile.ZipFile(BCCD_ZIP) as z:
        for n in z.namelist():
            stem = Path(n).stem
            if "/JPEGImages/" in n and n.endswith(".jpg"):
                images[stem] = Image.open(io.BytesIO(z.read(n))).convert("RGB")
            elif "/Annotations/" in n and n.endswith(".xml"):
                found = {}
                for o in ET.fromstring(z.read(n)).iter("object"):
                    b = o.find("bndbox")
                    found.setdefault(o.findtext("name"), []).append(
                        tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
                boxes[stem] = found
            elif "/ImageSets/Main/" in n and n.endswith(".txt"):
                splits[stem] = z.read(n).decode().split()
    return images, boxes, splits


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _score(found: dict[str, list], truth: dict[str, list]) -> dict:
    tp = fp = fn = 0
    for name, cells in found.items():
        gt, used = truth.get(name, []), set()
        for c in cells:
            best = max(range(len(gt)), key=lambda j: _iou(c, gt[j]), default=None)
            if best is not None and best not in used and _iou(c, gt[best]) >= 0.5:
                tp += 1
                used.add(best)
            else:
                fp += 1
        fn += len(gt) - len(used)
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"fields": len(found), "true_positives": tp, "false_positives": fp, "missed": fn, "precision": round(p, 4),
            "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-9), 4)}  # fmt: skip


def detection(images, boxes, splits) -> dict:
    from cellmorphnet.vision import fields

    unboxed = json.loads(UNBOXED.read_text())["fields"]
    out = {}
    for split, names in (("test", splits["test"]), ("all", sorted(images))):
        diameter = fields.set_diameter(fields.rbc_diameter(images[n]) for n in names)
        found = {n: [c.box for c in fields.find_white_cells(images[n], diameter)] for n in names}
        truth = {n: boxes[n].get("WBC", []) for n in names}
        corrected = {n: truth[n] + [tuple(b) for b in unboxed.get(n, [])] for n in names}
        out[split] = {"set_rbc_diameter_px": round(diameter, 1), "as_bccd_boxes_them": _score(found, truth),
                      "with_unboxed_cells": _score(found, corrected)}  # fmt: skip
        print(split, out[split], file=sys.stderr, flush=True)
    return out


def ruler(images, boxes) -> dict:
    from cellmorphnet.vision import fields

    own, truth = [], []
    for n, img in images.items():
        rbc = [b for b in boxes[n].get("RBC", []) if b[2] > b[0] and b[3] > b[1]]
        if len(rbc) < 3:
            continue
        own.append(fields.rbc_diameter(img))
        truth.append(float(np.median([(b[2] - b[0] + b[3] - b[1]) / 2 for b in rbc])))
    ratio = np.array([o / t for o, t in zip(own, truth, strict=True) if o])
    return {"fields": len(ratio), "median_ratio": round(float(np.median(ratio)), 3),
            "per_field_p10_p90": [round(float(v), 3) for v in np.percentile(ratio / np.median(ratio), [10, 90])],
            "set_median_px": round(float(fields.set_diameter(own)), 1),
            "boxes_median_px": round(float(np.median(truth)), 1)}  # fmt: skip


def speed(images, splits, rm, repeats: int) -> dict:
    import tempfile

    from cellmorphnet.inference import inference_options, predict_files

    options = inference_options(rm.record)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for n in splits["test"]:
            images[n].save(Path(tmp) / f"{n}.jpg", quality=95)
            files.append(Path(tmp) / f"{n}.jpg")
        times, cells = [], 0
        for _ in range(repeats):
            t = time.perf_counter()
            preds, _ = predict_files(rm, files, options)
            times.append(time.perf_counter() - t)
            cells = sum(1 for p in preds if p.cell is not None)
    return {"fields": len(files), "cells": cells, "seconds": [round(t, 2) for t in times],
            "fields_per_s": round(len(files) / min(times), 2)}  # fmt: skip


def crops(rm) -> dict:
    from cellmorphnet.data.taxonomy import canonical
    from cellmorphnet.inference import collect_files, inference_options, predict_files

    out = {}
    for name, folder in (("pbc_test_jpegs", SHARED / "bloodmnist-pbc" / "test_images"),
                         ("external_zheng2018_d1", SHARED / "external" / "zheng2018-d1")):  # fmt: skip
        files, _ = collect_files([folder])
        runs = {}
        for mode in ("auto", "one"):
            preds, _ = predict_files(rm, files, inference_options(rm.record, cells=mode))
            runs[mode] = preds
        same = all(a.predicted == b.predicted and abs(a.confidence - b.confidence) < 1e-9
                   for a, b in zip(runs["auto"], runs["one"], strict=True))  # fmt: skip
        acc = {m: round(float(np.mean([canonical(Path(str(p.source)).parent.name) == p.predicted for p in ps])), 4)
               for m, ps in runs.items()}  # fmt: skip
        out[name] = {"images": len(files), "kinds": sorted({p.image.kind for p in runs["auto"]}),
                     "identical_predictions": same, "accuracy": acc}  # fmt: skip
        print(name, out[name], file=sys.stderr, flush=True)
    return out


def _run_infer(target: Path) -> dict:
    """``cellmorphnet infer bloodmnist TARGET`` in a new process: wall seconds, peak RSS (MB), exit code."""
    import os
    import subprocess
    import tempfile

    exe = Path(sys.executable).parent / "cellmorphnet"
    with tempfile.TemporaryDirectory() as home:
        out = Path(home) / "p.json"
        t = time.perf_counter()
        proc = subprocess.Popen([str(exe), "infer", "bloodmnist", str(target), "--out", str(out), "--device", "cpu"],
                                env={**os.environ, "CELLMORPHNET_HOME": home}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        summary = json.loads(out.read_text())["summary"] if out.exists() else {}
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "exit": os.waitstatus_to_exitcode(status), "cells": summary.get("cells"),
            "skipped": summary.get("skipped")}  # fmt: skip


def bounds(images, splits) -> dict:
    import tempfile

    from PIL import Image

    names = sorted(images)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        noise = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
        Image.fromarray(noise).save(tmp / "noise.png")
        out["noise_640x480"] = _run_infer(tmp / "noise.png")
        print("noise", out["noise_640x480"], file=sys.stderr, flush=True)
        big = Image.new("RGB", (7000, 7000))
        small = tmp / "small"
        small.mkdir()
        k = 0
        for row in range(15):
            for col in range(11):
                tile = images[names[k % len(names)]]
                big.paste(tile, (640 * col, 480 * row))
                k += 1
        for i in range(160):  # the same area, as 640x480 fields
            images[names[i % len(names)]].save(small / f"{i:03d}.jpg", quality=95)
        big.save(tmp / "field-7000.jpg", quality=95)
        del big
        out["field_7000x7000"] = _run_infer(tmp / "field-7000.jpg")
        print("7000", out["field_7000x7000"], file=sys.stderr, flush=True)
        out["same_area_in_160_fields"] = _run_infer(small)
        print("160", out["same_area_in_160_fields"], file=sys.stderr, flush=True)
        one = _run_infer(small / "000.jpg")
        out["one_640x480_field"] = one  # the start-up and model load every run above includes
    a, b = out["field_7000x7000"], out["same_area_in_160_fields"]
    out["ratio_time"] = round(a["seconds"] / b["seconds"], 2)
    out["ratio_memory"] = round(a["peak_rss_mb"] / b["peak_rss_mb"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-crops", action="store_true", help="leave out part 4 (the longest)")
    ap.add_argument("--bounds", action="store_true", help="part 5 alone: what the largest and strangest inputs cost")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet import api
    from cellmorphnet.runs import folders as runs

    result = header("python -m benchmarks.fields " + " ".join(sys.argv[1:]))
    images, boxes, splits = _bccd()
    if args.bounds:
        result["bounds"] = bounds(images, splits)
        emit(result, args.json)
        return
    result["detection"] = detection(images, boxes, splits)
    result["ruler"] = ruler(images, boxes)
    print("ruler", result["ruler"], file=sys.stderr, flush=True)
    rm = api.load_run(runs.PACKAGED, device="cpu")
    result["speed"] = speed(images, splits, rm, args.repeats)
    print("speed", result["speed"], file=sys.stderr, flush=True)
    if not args.skip_crops:
        result["crops"] = crops(rm)
    emit(result, args.json)


if __name__ == "__main__":
    main()
