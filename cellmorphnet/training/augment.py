"""Training augmentation: applied to whole batches of tensors on the training device.

One ``affine_grid``/``grid_sample`` call applies flips, rotation, translation, scale *and* the resize to the
network's input size; colour, stain, blur and JPEG jitter follow as tensor arithmetic. The random parameters
are drawn on a CPU generator, so epoch ``e`` is augmented the same way on any device and after a resume.
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

    from PIL import Image

    x = x.clone()
    for i in which.nonzero().flatten().tolist():
        arr = (x[i].permute(1, 2, 0).detach().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality[i]))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
        x[i] = torch.from_numpy(dec).permute(2, 0, 1).to(x)
    return x



class Augment:
    """The augmentation a ``data.loader.BatchLoader`` applies to its training batches: ``cfg``'s random draws
    from the loader's generator, then ``augment_batch``."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, size: int, generator: torch.Generator,
                 rows: tuple[int, int, int] | None = None) -> torch.Tensor:  # fmt: skip
        """``x`` augmented. With ``rows = (start, stop, n)``, ``x`` is rows ``start:stop`` of a batch of ``n``: the
        parameters of all ``n`` are drawn and those rows' kept, so each sample is augmented as it would be in the
        whole batch (a rank of a distributed job holds only its block of each batch)."""
        if rows is None:
            return augment_batch(x, size, augment_params(x.shape[0], self.cfg, generator))
        start, stop, n = rows
        params = {k: v[start:stop] for k, v in augment_params(n, self.cfg, generator).items()}
        return augment_batch(x, size, params)
