"""Batches from prepared arrays, with augmentation applied to whole batches of tensors.

The prepared uint8 arrays are held in memory (on the training device where there is one). Each
batch is gathered by index, then one ``affine_grid``/``grid_sample`` call applies flips, rotation,
translation, scale *and* the resize to the network's input size; colour jitter and normalisation
follow as tensor arithmetic. No PIL image is touched per sample, so the data path stays cheap next
to the model.

A batch holds samples of one dataset (datasets may be stored at different sizes); batches of all
datasets are shuffled together. The order and the augmentation of epoch ``e`` depend only on
``(seed, e)``, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rotation: float = 45.0  # maximum rotation, degrees either way
    translate: float = 0.1  # maximum shift, as a fraction of the image size
    scale: tuple[float, float] = (0.9, 1.1)  # zoom range
    brightness: float = 0.2  # colour jitter strengths (factor range 1 ± value)
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0  # hue rotation, fraction of a turn either way
    white_balance: float = 0.0  # per-channel gain 1 ± this: the colour of the lamp and the camera's white balance
    hed_scale: float = 0.0  # stain jitter (Tellez et al. 2019): each stain's optical density times 1 ± this...
    hed_shift: float = 0.0  # ...plus ± this
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.3 to ``blur_max`` px at the input size)
    blur_max: float = 1.2  # the largest blur sigma, px at the input size: defocus and cameras coarser than PBC's
    jpeg: float = 0.0  # probability of JPEG re-compression (quality 40 to 90)
    grayscale: float = 0.0  # probability of dropping the colour (the network must read shape and texture too)
    density: float = 0.0  # each channel's optical density times a factor in [1/(1+this), 1+this]: stain and camera
    randconv: float = 0.0  # probability of a random convolution (Xu et al. 2021), mixed in: local texture and colour
    # Stain contrast: each pixel's optical density raised to a power gamma in [1/(1+this), 1+this] relative to the
    # nucleus's (the nucleus and the background stay, the cytoplasm and granules lighten or darken; the colour of each
    # pixel's dye stays). Stain protocols differ in how densely they stain the cytoplasm next to the nucleus.
    stain_contrast: float = 0.0


# Named augmentation recipes (``train --augment``). "basic": geometry and mild colour jitter, as trained
# before 0.2. "stain": built for other labs' slides: stain (HED), white-balance and hue jitter, stronger
# saturation jitter, blur, JPEG artefacts and a wider zoom range, since a white cell from another lab
# differs from the training data in stain, lamp and camera, focus, compression and magnification.
AUGMENTATIONS = {
    "basic": AugmentConfig(),
    "stain": AugmentConfig(scale=(0.8, 1.25), saturation=0.35, hue=0.06, white_balance=0.15, hed_scale=0.2,
                           hed_shift=0.05, blur=0.25, jpeg=0.25),  # fmt: skip
}

# Ruifrok & Johnston's haematoxylin-eosin-DAB stain vectors (as scikit-image uses them), rows = stains.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


@dataclass
class Batch:
    dataset: str  # which dataset its samples come from
    images: torch.Tensor  # (B, 3, H, W) float, normalised
    labels: torch.Tensor  # (B,) local labels of that dataset
    target_ids: torch.Tensor  # (B,) row of the run's target table (see Taxonomy / losses)


class DeviceArrays:
    """One split of one dataset as uint8 NHWC tensors on ``device``, plus labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        # np.array copies: the prepared arrays are read-only memory maps, which torch will not wrap.
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, order="C")).to(device)
        self.labels_cpu = torch.from_numpy(np.array(labels, dtype=np.int64))
        self.labels = self.labels_cpu.to(device)

    def __len__(self) -> int:
        return len(self.labels)


def _to_float_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an NCHW float batch to ``size`` (bilinear; antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def augment_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw the random parameters of ``n`` samples on the CPU generator (cheap, device independent)."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    return {
        "hflip": torch.rand(n, generator=generator) < cfg.hflip,
        "vflip": torch.rand(n, generator=generator) < cfg.vflip,
        "angle": uniform(-cfg.rotation, cfg.rotation) * math.pi / 180.0,
        "scale": uniform(*cfg.scale),
        "tx": uniform(-cfg.translate, cfg.translate) * 2.0,  # affine_grid coordinates span [-1, 1]
        "ty": uniform(-cfg.translate, cfg.translate) * 2.0,
        "brightness": uniform(1 - cfg.brightness, 1 + cfg.brightness),
        "contrast": uniform(1 - cfg.contrast, 1 + cfg.contrast),
        "saturation": uniform(1 - cfg.saturation, 1 + cfg.saturation),
        "hue": uniform(-cfg.hue, cfg.hue) * 2 * math.pi,
        "white_balance": torch.rand(n, 3, generator=generator) * 2 * cfg.white_balance + 1 - cfg.white_balance,
        "hed_scale": torch.rand(n, 3, generator=generator) * 2 * cfg.hed_scale + 1 - cfg.hed_scale,
        "hed_shift": (torch.rand(n, 3, generator=generator) * 2 - 1) * cfg.hed_shift,
        "blur": torch.rand(n, generator=generator) < cfg.blur,
        "blur_sigma": uniform(0.3, cfg.blur_max),
        "jpeg": torch.rand(n, generator=generator) < cfg.jpeg,
        "jpeg_quality": torch.randint(40, 91, (n,), generator=generator),
        # drawn last, and only when used, so the draws above (and runs made before it) stay the same
        **({"grayscale": torch.rand(n, generator=generator) < cfg.grayscale} if cfg.grayscale > 0 else {}),
        **({"density": torch.exp((torch.rand(n, 3, generator=generator) * 2 - 1) * math.log1p(cfg.density))}
           if cfg.density > 0 else {}),
        **(_randconv_params(n, cfg.randconv, generator) if cfg.randconv > 0 else {}),
        **({"stain_contrast": torch.exp((torch.rand(n, generator=generator) * 2 - 1) * math.log1p(cfg.stain_contrast))}
           if cfg.stain_contrast > 0 else {}),
    }


RANDCONV_SIZES = (1, 3, 5, 7)


def _randconv_params(n: int, prob: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each image's random convolution: whether, a 3->3 kernel of size 1, 3, 5 or 7 (centred in 7x7) with
    Kaiming-normal weights (std 1 / sqrt(3 k^2)), and the share of the original kept (uniform 0 to 1)."""
    size = torch.tensor(RANDCONV_SIZES)[torch.randint(len(RANDCONV_SIZES), (n,), generator=generator)]
    weights = torch.randn(n, 3, 3, 7, 7, generator=generator)
    r = torch.arange(7) - 3
    inside = (r.abs().view(1, 7, 1) <= size.view(-1, 1, 1) // 2) & (r.abs().view(1, 1, 7) <= size.view(-1, 1, 1) // 2)
    weights = weights * inside.view(n, 1, 1, 7, 7) / (3 * size.float() ** 2).sqrt().view(n, 1, 1, 1, 1)
    return {"randconv": torch.rand(n, generator=generator) < prob, "randconv_weights": weights,
            "randconv_keep": torch.rand(n, generator=generator)}  # fmt: skip


def augment_batch(x: torch.Tensor, size: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Geometric and colour augmentation of an NCHW float batch in [0, 1], output at ``size``."""
    p = {k: v.to(x.device) for k, v in params.items()}
    n = x.shape[0]
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    # The grid maps output to input coordinates: dividing by the scale zooms in for scale > 1.
    fx = torch.where(p["hflip"], -1.0, 1.0) / p["scale"]
    fy = torch.where(p["vflip"], -1.0, 1.0) / p["scale"]
    theta = torch.stack(
        [
            torch.stack([cos * fx, -sin * fy, p["tx"]], dim=1),
            torch.stack([sin * fx, cos * fy, p["ty"]], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gray_w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = x * p["brightness"].view(n, 1, 1, 1)
    mean = (x * gray_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * p["contrast"].view(n, 1, 1, 1) + mean
    gray = (x * gray_w).sum(1, keepdim=True)
    x = (x - gray) * p["saturation"].view(n, 1, 1, 1) + gray
    x = x.clamp(0.0, 1.0)
    if "white_balance" in p and bool((p["white_balance"] != 1).any()):
        x = (x * p["white_balance"].to(x).view(n, 3, 1, 1)).clamp(0.0, 1.0)
    if "hue" in p and bool((p["hue"] != 0).any()):
        x = _rotate_hue(x, p["hue"])
    if "hed_scale" in p and bool(((p["hed_scale"] != 1) | (p["hed_shift"] != 0)).any()):
        x = _jitter_stains(x, p["hed_scale"], p["hed_shift"])
    if "density" in p:  # x = exp(-OD), so scaling the optical density is a per-channel power
        x = x.clamp(min=1e-3).pow(p["density"].to(x).view(n, 3, 1, 1))
    if "stain_contrast" in p:
        x = _stain_contrast(x, p["stain_contrast"])
    if "blur" in p and bool(p["blur"].any()):
        x = _blur(x, p["blur"], p["blur_sigma"])
    if "jpeg" in p and bool(p["jpeg"].any()):
        x = _recompress(x, p["jpeg"], params["jpeg_quality"])
    if "randconv" in p and bool(p["randconv"].any()):
        x = _random_convolution(x, p["randconv"], p["randconv_weights"], p["randconv_keep"])
    if "grayscale" in p and bool(p["grayscale"].any()):
        gray = (x * gray_w).sum(1, keepdim=True).expand_as(x)
        x = torch.where(p["grayscale"].view(n, 1, 1, 1), gray, x)
    return x.clamp_(0.0, 1.0)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``angle`` (radians) in YIQ space: luminance stays, chroma turns."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)  # fmt: skip
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x).clamp(0.0, 1.0)


def _jitter_stains(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """HED jitter: to optical density, split into the stains, scale and shift each, and back (Tellez et al. 2019)."""
    od = -torch.log(x.clamp(min=1e-3))
    hed = torch.einsum("ij,nihw->njhw", _HED_FROM_RGB.to(x), od)
    hed = hed * scale.to(x).view(-1, 3, 1, 1) + shift.to(x).view(-1, 3, 1, 1)
    od = torch.einsum("ij,nihw->njhw", _RGB_FROM_HED.to(x), hed)
    return torch.exp(-od).clamp(0.0, 1.0)


# The background is each channel's 98th percentile; the nucleus's density a high quantile of the density (the
# nucleus is the densest part of a blood-cell image and covers more than 5 % of it).
_BACKGROUND_QUANTILE = 0.98
_NUCLEUS_QUANTILE = 0.95


def _stain_contrast(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Each image's optical density (against its background) times (density / nucleus density) ** (gamma - 1):
    the nucleus keeps its density, lighter structures lighten (gamma > 1) or darken, each pixel's colour stays."""
    n = len(x)
    small = F.avg_pool2d(x, 2) if min(x.shape[-2:]) >= 32 else x  # the quantiles on a quarter of the pixels: cheaper
    lamp = small.flatten(2).quantile(_BACKGROUND_QUANTILE, dim=2).clamp(min=0.05).view(n, 3, 1, 1)
    od = -torch.log((x / lamp).clamp(min=1e-3))  # not clamped at 0 above: gamma 1 gives back x exactly
    mag = od.clamp(min=0.0).square().sum(dim=1, keepdim=True).sqrt()  # (n, 1, h, w); .norm(dim=1) is slower here
    small_mag = torch.log((small / lamp).clamp(1e-3, 1.0)).square().sum(dim=1).sqrt()
    anchor = small_mag.flatten(1).quantile(_NUCLEUS_QUANTILE, dim=1).clamp(min=0.05).view(n, 1, 1, 1)
    factor = ((mag / anchor).clamp(min=1e-3)).pow(gamma.to(x).view(n, 1, 1, 1) - 1)
    return (lamp * torch.exp(-od * factor)).clamp(0.0, 1.0)


def _blur(x: torch.Tensor, which: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of the chosen images, each with its own sigma (one grouped convolution)."""
    idx = which.nonzero().flatten()
    radius = max(2, round(1.7 * float(sigma[idx].max())))  # 2 (5x5) up to sigma 1.2, as before
    r = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma[idx].to(x).view(-1, 1) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1.unsqueeze(2) * k1.unsqueeze(1)).repeat_interleave(3, dim=0).unsqueeze(1)  # (m*3, 1, k, k)
    sel = x.index_select(0, idx)
    m, _, h, w = sel.shape
    out = F.conv2d(F.pad(sel.reshape(1, m * 3, h, w), (radius,) * 4, mode="reflect"), k2, groups=m * 3)
    x = x.clone()
    x[idx] = out.reshape(m, 3, h, w)
    return x


def _random_convolution(x: torch.Tensor, which: torch.Tensor, weights: torch.Tensor,
                        keep: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The chosen images convolved with their own random kernel around their mean colour, mixed with the original."""
    idx = which.nonzero().flatten()
    sel = x.index_select(0, idx)
    m, _, h, w = sel.shape
    mean = sel.mean(dim=(2, 3), keepdim=True)
    k = weights.index_select(0, idx).to(x).reshape(m * 3, 3, 7, 7)
    out = F.conv2d(F.pad((sel - mean).reshape(1, m * 3, h, w), (3,) * 4, mode="reflect"), k, groups=m)
    a = keep.index_select(0, idx).to(x).view(m, 1, 1, 1)
    x = x.clone()
    x[idx] = (a * sel + (1 - a) * (out.reshape(m, 3, h, w) + mean)).clamp(0.0, 1.0)
    return x


def _recompress(x: torch.Tensor, which: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG-compress and decode the chosen images (PIL, on the CPU), each at its own quality."""
    import io

    import numpy as np
    from PIL import Image

    x = x.clone()
    for i in which.nonzero().flatten().tolist():
        arr = (x[i].permute(1, 2, 0).detach().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality[i]))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
        x[i] = torch.from_numpy(dec).permute(2, 0, 1).to(x)
    return x


class BatchLoader:
    """Yield ``Batch`` objects over one split of several datasets.

    Args:
        parts: ``{dataset: DeviceArrays}``.
        target_offset: ``{dataset: first row in the run's target table}``.
        batch_size: samples per batch (the last batch of each dataset may be smaller).
        image_size: the network's input size.
        mean, std: normalisation, from the model's config.
        train: shuffle and augment when True; fixed order, plain resize when False.
        augment: augmentation settings (train only).
        seed: base seed; epoch ``e`` uses ``seed * 1000 + e``.
        limit_batches: stop after this many batches (quick checks and tests).
        channels_last: hand out batches in channels-last memory layout (for a channels-last model).
    """

    def __init__(
        self,
        parts: dict[str, DeviceArrays],
        target_offset: dict[str, int],
        batch_size: int,
        image_size: int,
        mean: list[float],
        std: list[float],
        *,
        train: bool,
        augment: AugmentConfig | None = None,
        seed: int = 42,
        limit_batches: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.parts = parts
        self.target_offset = target_offset
        self.batch_size = batch_size
        self.image_size = image_size
        device = next(iter(parts.values())).images.device
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.train = train
        self.augment = augment or AugmentConfig()
        self.seed = seed
        self.limit_batches = limit_batches
        # The batch's layout must match the model's: a mismatch makes every convolution reorder its
        # input (the cost is measured in docs/benchmarks.md).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[tuple[str, torch.Tensor]]:
        """The epoch's batches as ``(dataset, indices)``: shuffled with the epoch's seed when training."""
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        batches = []
        for name, arr in self.parts.items():
            order = torch.randperm(len(arr), generator=g) if self.train else torch.arange(len(arr))
            batches += [(name, idx) for idx in order.split(self.batch_size)]
        if self.train:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.limit_batches is not None:
            batches = batches[: self.limit_batches]
        return batches

    def __len__(self) -> int:
        n = sum(math.ceil(len(a) / self.batch_size) for a in self.parts.values())
        return min(n, self.limit_batches) if self.limit_batches is not None else n

    def __iter__(self):
        return self.batches(self.plan())

    def batches(self, plan: list[tuple[str, torch.Tensor]]):
        """Materialise the planned batches in order (augmenting when training)."""
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch + 500_000)
        for name, idx in plan:
            arr = self.parts[name]
            idx_dev = idx.to(arr.images.device)
            x = _to_float_nchw(arr.images.index_select(0, idx_dev))
            if self.train:
                x = augment_batch(x, self.image_size, augment_params(len(idx), self.augment, g))
            else:
                x = resize_batch(x, self.image_size)
            labels = arr.labels.index_select(0, idx_dev)
            x = normalise(x, self.mean, self.std).contiguous(memory_format=self.memory_format)
            yield Batch(name, x, labels, labels + self.target_offset[name])


def eval_transform(images_uint8_nhwc: torch.Tensor, image_size: int, mean, std) -> torch.Tensor:
    """The evaluation transform (what ``BatchLoader`` does with ``train=False``), for one batch."""
    x = resize_batch(_to_float_nchw(images_uint8_nhwc), image_size)
    return normalise(x, torch.as_tensor(mean, device=x.device), torch.as_tensor(std, device=x.device))
