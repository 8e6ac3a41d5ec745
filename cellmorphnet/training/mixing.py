"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a training batch already on the device."""

from __future__ import annotations

import math

import torch

MIX_PROB = 0.5  # share of batches mixed; the rest are seen as they are


def mix_batch(images: torch.Tensor, mixup: float, cutmix: float) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mix each image with another of the batch. Returns the images, the partner of each (``None`` when the
    batch is left alone) and the share ``lam`` of each image's own label.

    One of the two is drawn per batch (either when both alphas are set); ``lam`` comes from
    Beta(alpha, alpha). CutMix pastes a box of the partner and sets ``lam`` to the share of the image
    left. Draws come from torch's global generator, which training seeds per epoch.
    """
    if (mixup <= 0 and cutmix <= 0) or float(torch.rand(())) >= MIX_PROB:
        return images, None, 1.0
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand(())) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(images.shape[0]).to(images.device)
    if not use_cutmix:
        return images * lam + images[partner] * (1.0 - lam), partner, lam
    h, w = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = round(h * cut), round(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images[partner][..., y0:y1, x0:x1]
    return mixed, partner, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
