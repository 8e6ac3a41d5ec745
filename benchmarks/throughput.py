"""Training throughput: cellmorphnet's step vs a naive MedMNIST-style pipeline vs the model-only ceiling.

    python -m benchmarks.throughput [--configs 28:28,64:64,28:224] [--steps 8] [--repeats 3] [--json]

All three use the same model (tf_efficientnet_lite0, ImageNet weights), batch size, optimizer (AdamW)
and loss, in one process:
  (a) cellmorphnet: prepared uint8 arrays in memory, batch augmentation on tensors (BatchLoader) and
      cellmorphnet's train_one_epoch;
  (b) naive: medmnist's BloodMNIST dataset class with per-sample PIL/torchvision transforms through a
      DataLoader with 2 workers (as MedMNIST's experiment code and most tutorials do);
  (c) ceiling: the same model stepping on tensors already in memory (real images, resized and
      normalised before timing, a different batch each step), no augmentation.
Each pipeline gets a warm-up window, then ``repeats`` timed windows of ``steps`` optimizer steps,
taken round-robin across the pipelines; the figure is the median images/s over its windows.
Data: ../shared/data/bloodmnist-pbc.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import SHARED, emit, header  # noqa: E402
from cellmorphnet.data.loader import BatchLoader, DeviceArrays  # noqa: E402
from cellmorphnet.data.taxonomy import Taxonomy  # noqa: E402
from cellmorphnet.model.network import create_model, data_config  # noqa: E402
from cellmorphnet.model.prediction import LabelSpace  # noqa: E402
from cellmorphnet.runs.config import TrainConfig  # noqa: E402
from cellmorphnet.runtime.devices import pick_device, pick_precision  # noqa: E402
from cellmorphnet.training.augment import Augment, AugmentConfig  # noqa: E402
from cellmorphnet.training.data import TrainData  # noqa: E402
from cellmorphnet.training.engine import train_one_epoch  # noqa: E402

FILES = {28: "bloodmnist_pbc.npz", 64: "bloodmnist_pbc_64.npz"}
CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def fresh_model(device, channels_last):
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=8, pretrained=True).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    return model, opt


def plain_step(model, opt, x, y) -> None:
    """One optimizer step as a hand-written loop does it: cross-entropy, backward, clipping, AdamW."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def time_interleaved(windows: dict, steps: int, repeats: int, batch: int) -> dict[str, list[float]]:
    """Warm every pipeline up, then time them round-robin, so that drift in the machine's load (it is
    shared) lands on all of them alike rather than on whichever ran last."""
    for window in windows.values():
        window(steps)
    rates: dict[str, list[float]] = {k: [] for k in windows}
    for _ in range(repeats):
        for key, window in windows.items():
            start = time.perf_counter()
            window(steps)
            rates[key].append(steps * batch / (time.perf_counter() - start))
    return rates


def bench_cellmorphnet(images, labels, image_size, batch, device, amp="off", channels_last=True):
    model, opt = fresh_model(device, channels_last)
    norm = data_config(model)
    tax = Taxonomy.build({"bloodmnist": CLASSES})
    data = TrainData({}, LabelSpace.build(tax, ["bloodmnist"], device),
                     {"bloodmnist": DeviceArrays(images, labels, device)}, {}, None)  # fmt: skip
    cfg = TrainConfig(batch_size=batch, accum_steps=1, amp=amp, channels_last=channels_last)
    precision = pick_precision(device, amp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = {"epoch": 0}

    def window(steps):
        loader = BatchLoader(data.train, data.space.target_offset, batch, image_size, norm["mean"], norm["std"],
                             train=True, limit_batches=steps, channels_last=channels_last,
                             augment=Augment(AugmentConfig()))  # fmt: skip
        loader.set_epoch(state["epoch"])
        state["epoch"] += 1
        train_one_epoch(model, loader, opt, sched, scaler=None, device=device, precision=precision, cfg=cfg, data=data)

    return window


def bench_naive(root: Path, data_size, image_size, batch, device, channels_last=False):
    import torchvision.transforms as T
    from medmnist import BloodMNIST

    model, opt = fresh_model(device, channels_last)
    norm = data_config(model)
    tf = [
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(45),
        T.ColorJitter(0.2, 0.2, 0.2), T.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
    ]  # fmt: skip
    if image_size != data_size:
        tf.append(T.Resize(image_size))
    tf += [T.ToTensor(), T.Normalize(norm["mean"], norm["std"])]
    ds = BloodMNIST(split="train", root=str(root), size=data_size, transform=T.Compose(tf), download=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                     persistent_workers=True)  # fmt: skip
    it = {"it": iter(dl)}

    def next_batch():
        try:
            return next(it["it"])
        except StopIteration:
            it["it"] = iter(dl)
            return next(it["it"])

    def window(steps):
        for _ in range(steps):
            x, y = next_batch()
            x = x.to(device).contiguous(memory_format=memory_format(channels_last))
            plain_step(model, opt, x, y.view(-1).long().to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    return window


def bench_ceiling(images, labels, image_size, steps, batch, device, channels_last=True):
    """Real images, normalised and resized once up front: one distinct in-memory batch per step."""
    from cellmorphnet.data.loader import eval_transform

    model, opt = fresh_model(device, channels_last)
    norm = data_config(model)
    xs, ys = [], []
    for i in range(steps):
        chunk = torch.from_numpy(images[i * batch : (i + 1) * batch].copy()).to(device)
        x = eval_transform(chunk, image_size, norm["mean"], norm["std"])
        xs.append(x.contiguous(memory_format=memory_format(channels_last)))
        ys.append(torch.from_numpy(labels[i * batch : (i + 1) * batch].astype("int64")).to(device))

    def window(steps):
        for x, y in zip(xs[:steps], ys[:steps], strict=True):
            plain_step(model, opt, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="28:28,64:64,28:224", help="data:image sizes")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--extra", action="store_true", help="also time (a) and (c) without channels-last, and (a) with bf16"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = pick_device(args.device)
    result = header("python -m benchmarks.throughput " + " ".join(sys.argv[1:]))
    result["device"] = str(device)
    result["rows"] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size, name in FILES.items():  # medmnist expects its own file names
            (root / ("bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz")).symlink_to(
                SHARED / "bloodmnist-pbc" / name
            )
        for pair in args.configs.split(","):
            data_size, image_size = (int(v) for v in pair.split(":"))
            with np.load(SHARED / "bloodmnist-pbc" / FILES[data_size]) as d:
                images, labels = d["train_images"], d["train_labels"].reshape(-1)
            steps = args.steps if image_size <= 64 else max(2, args.steps // 4)
            row = {"data_size": data_size, "image_size": image_size, "batch_size": args.batch_size, "steps": steps}
            common = (args.batch_size, device)
            runs = {
                # (a) as cellmorphnet trains by default (channels-last)
                "cellmorphnet": partial(bench_cellmorphnet, images, labels, image_size, *common),
                # (b) as tutorials do it (default memory layout), and the same with channels-last
                "naive": partial(bench_naive, root, data_size, image_size, *common),
                "naive_channels_last": partial(bench_naive, root, data_size, image_size, *common, channels_last=True),
                # (c) the same model as (a) on tensors already in memory
                "ceiling": partial(bench_ceiling, images, labels, image_size, steps, *common),
            }
            if args.extra:
                runs["ceiling_contiguous"] = partial(
                    bench_ceiling, images, labels, image_size, steps, *common, channels_last=False
                )
                runs["cellmorphnet_contiguous"] = partial(
                    bench_cellmorphnet, images, labels, image_size, *common, channels_last=False
                )
                runs["cellmorphnet_bf16"] = partial(bench_cellmorphnet, images, labels, image_size, *common, amp="bf16")
            windows = {key: make() for key, make in runs.items()}
            for key, rates in time_interleaved(windows, steps, args.repeats, args.batch_size).items():
                row[key] = {"median_images_per_s": statistics.median(rates), "windows": rates}
                print(f"{data_size}->{image_size} {key}: {statistics.median(rates):.1f} img/s", file=sys.stderr)
            del windows
            a = row["cellmorphnet"]["median_images_per_s"]
            row["a_over_b"] = a / row["naive"]["median_images_per_s"]
            row["a_over_b_channels_last"] = a / row["naive_channels_last"]["median_images_per_s"]
            row["a_over_c"] = a / row["ceiling"]["median_images_per_s"]
            print(f"{data_size}->{image_size}: (a)/(b) = {row['a_over_b']:.2f}, (a)/(b, channels-last) = "
                  f"{row['a_over_b_channels_last']:.2f}, (a)/(c) = {row['a_over_c']:.2f}", file=sys.stderr)  # fmt: skip
            result["rows"].append(row)
    emit(result, args.json)


if __name__ == "__main__":
    main()
