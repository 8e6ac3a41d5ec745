"""The GPU check: every precision, channels-last on and off, then eval, infer and ONNX export on the device.

    python -m benchmarks.gpu_check --json > gpu.json                       # on a lent GPU (about 5 minutes)
    python -m benchmarks.gpu_check --device cpu --epochs 1 --image-size 32  # a dry run of the script itself

Needs only the repository (the embedded sample, upscaled to the input size on the device): each
configuration trains ``--epochs`` epochs of 16 steps (batch 32) from ImageNet weights with every
block unfrozen, then reports the precision the tool chose, images/s (median over the epochs after
the first), skipped fp16 steps, validation F1, and the wall time. The last configuration's run is
evaluated and used for infer (PNG files written from the test arrays) and ONNX export with
``--benchmark`` on the device. On a node with several GPUs, torchrun's scaling over them follows
(``benchmarks.distributed --device cuda``: training and inference images/s with 1, 2, 4... processes).
A configuration that the tool refuses (``--amp bf16`` on a GPU
without native bf16) is reported as refused, which is the expected behaviour there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=12, help="16 steps each (batch 32)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--amps", default="bf16,fp16,off")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    import cellmorphnet as cmn
    from cellmorphnet.data import store
    from cellmorphnet.errors import CellMorphNetError
    from cellmorphnet.runs.config import TrainConfig
    from cellmorphnet.runtime.devices import facts_for, pick_device
    from cellmorphnet.training.fit import fit

    device = pick_device(args.device)
    result = header("python -m benchmarks.gpu_check " + " ".join(sys.argv[1:]))
    result["device"] = str(device)
    result["facts"] = facts_for(device).__dict__
    result["rows"] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        last_run = None
        for amp in args.amps.split(","):
            for cl in (True, False):
                name = f"{amp}-{'cl' if cl else 'nchw'}"
                cfg = TrainConfig(datasets=["sample"], data_size=64, image_size=args.image_size, epochs=args.epochs,
                                  batch_size=32, accum_steps=1, lr=1e-3, unfreeze_epochs=[0, 0],
                                  patience=args.epochs, amp=amp, channels_last=cl, device=str(device))  # fmt: skip
                row = {"config": name, "amp": amp, "channels_last": cl}
                start = time.perf_counter()
                try:
                    summary = fit(cfg, home / "runs" / name, home=home)
                except CellMorphNetError as e:
                    row.update(refused=e.message)
                    result["rows"].append(row)
                    print(f"{name}: refused ({e.message})", file=sys.stderr, flush=True)
                    continue
                wall = time.perf_counter() - start
                hist = json.loads((home / "runs" / name / "history.json").read_text())
                log = (home / "runs" / name / "train.log").read_text()
                ips = hist["images_per_s"][1:] or hist["images_per_s"]
                row.update(precision=summary["precision"], state=summary["state"], wall_s=round(wall, 1),
                           images_per_s=round(statistics.median(ips), 1), val_f1=hist["val_f1"][-1],
                           skipped_step_epochs=log.count("steps skipped"))  # fmt: skip
                result["rows"].append(row)
                print(f"{name}: {row['precision']}, {row['images_per_s']} img/s, val F1 {row['val_f1']:.3f}, "
                      f"{wall:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
                last_run = home / "runs" / name
        if last_run is not None:
            report = cmn.evaluate(last_run, home=home, device=str(device))
            result["eval"] = {k: report["datasets"]["sample"]["metrics"][k] for k in ("accuracy", "macro_f1", "n")}
            test = store.load_split("sample", 64, "test", home)
            folder = home / "test_png"
            folder.mkdir()
            for i, (im, label) in enumerate(zip(test.images, test.labels, strict=True)):
                Image.fromarray(np.asarray(im)).save(folder / f"{i:03d}_{int(label)}.png")
            run = cmn.load_run(last_run, device=str(device))
            start = time.perf_counter()
            preds = cmn.predict(run, [folder])
            result["infer"] = {"images": len(preds), "seconds": round(time.perf_counter() - start, 2),
                               "device": str(run.device)}  # fmt: skip
            from cellmorphnet import export
            from cellmorphnet.runs.load import load_run_model, reference_images

            rm = load_run_model(last_run, "best", "cpu")
            images = reference_images(last_run, rm.record, home)
            path = export.export_onnx(rm, home / "m.onnx", images)
            result["onnx"] = {"verification": export.verify_onnx(rm, path, images),
                              "benchmark": export.benchmark_onnx(rm, path, str(device))}  # fmt: skip
        result["torch_cuda"] = torch.version.cuda
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus > 1:  # torchrun's scaling over this node's GPUs (docs/distributed.md)
        import subprocess

        counts = ",".join(str(n) for n in (1, 2, 4, 8, 16) if n <= gpus)
        cmd = [sys.executable, "-m", "benchmarks.distributed", "--device", "cuda", "--nprocs", counts,
               "--image-size", str(args.image_size), "--json"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        result["torchrun_scaling"] = json.loads(r.stdout)["rows"] if r.returncode == 0 else {"error": r.stderr[-2000:]}
    else:
        result["torchrun_scaling"] = f"not measured: {gpus} GPU(s) here; torchrun scaling needs two or more"
    emit(result, args.json)


if __name__ == "__main__":
    main()
