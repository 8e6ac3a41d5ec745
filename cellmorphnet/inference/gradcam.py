"""Grad-CAM (Selvaraju et al., 2017) on the last convolutional block, and overlays for people to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def target_layer(model):
    """The last convolutional block: ``blocks[-1]`` for EfficientNet-style timm models, else the last Conv2d."""
    import torch

    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks):
        return blocks[-1]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no convolution to explain")
    return convs[-1]


def gradcam(model, x, class_idx=None):
    """Grad-CAM maps for a batch ``x``: (B, H, W) in [0, 1] at the input's resolution, and the classes explained."""
    import torch
    import torch.nn.functional as F

    layer = target_layer(model)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["act"] = output
        output.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(hook)
    try:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # makes the graph reach the hooked layer with frozen weights too
            logits = model(x)
            idx = logits.argmax(1) if class_idx is None else torch.as_tensor(class_idx, device=logits.device)
            logits.gather(1, idx.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1)[0].view(-1, 1, 1), flat.max(1)[0].view(-1, 1, 1)
    cam = (cam - lo) / (hi - lo).clamp(min=1e-8)
    return cam.float().cpu().numpy(), idx.cpu().numpy()


def overlay(image: np.ndarray, cam: np.ndarray, size: int = 256, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map (jet) over an RGB uint8 image, both resized to ``size`` x ``size``."""
    from matplotlib import colormaps
    from PIL import Image

    base = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    heat = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)) / 255.0
    colour = colormaps["jet"](heat)[..., :3]
    return ((1 - alpha) * base + alpha * colour).clip(0, 1).__mul__(255).astype(np.uint8)


def overlay_image(image: np.ndarray, cam: np.ndarray, label: str | None = None):
    """The image and its overlay side by side (a PIL image), with ``label`` written on the left."""
    from PIL import Image, ImageDraw

    left = np.asarray(Image.fromarray(image).resize((256, 256), Image.BICUBIC))
    both = np.concatenate([left, np.full((256, 4, 3), 255, np.uint8), overlay(image, cam)], axis=1)
    out = Image.fromarray(both)
    if label:
        ImageDraw.Draw(out).text((6, 4), label, fill=(255, 255, 255))
    return out


def save_overlay(path: Path, image: np.ndarray, cam: np.ndarray, label: str | None = None) -> Path:
    """Write ``overlay_image`` as a PNG (atomically)."""
    from cellmorphnet._io import atomic_path

    out = overlay_image(image, cam, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")
    return path


def write_gradcams(model, policy, preds, arrays, folder: Path, *, channels_last: bool = False, progress=None):
    """One overlay PNG per prediction: the square the model saw (the framed cell, or the centre crop where no cell
    was found) cut from the original image, beside its Grad-CAM.

    ``arrays`` maps each path to the preprocessed array the model saw (``predict_files(keep_inputs=True)``); a
    prediction without one is another process's in a distributed job: it is named in turn (names are those of one
    process) and skipped. Returns the files written.
    """
    import torch

    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.vision.cellfinder import padded_crop
    from cellmorphnet.vision.imaging import centre_square, load_rgb

    written, seen, done = [], {}, 0
    mine = sum(p.path in arrays for p in preds)
    for p in preds:
        cell = getattr(p, "cell", None)  # a cell found in a field: framed within its crop
        stem = f"{p.source.stem}-cell{cell.index}" if cell is not None else p.path.stem
        seen[stem] = seen.get(stem, 0) + 1
        if p.path not in arrays:  # another process's (torchrun): named in turn all the same, written there
            continue
        x = eval_transform(torch.from_numpy(np.array(arrays[p.path][None])), policy.image_size, policy.mean, policy.std)
        x = x.to(next(model.parameters()).device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cam, _ = gradcam(model, x)
        img = cell.image if cell is not None else load_rgb(p.path)
        box = p.box or centre_square(*img.size, policy.centre_crop_fraction, policy.centre_crop_px)
        crop = np.asarray(padded_crop(img, box))
        suffix = "" if seen[stem] == 1 else f"-{seen[stem]}"
        written.append(save_overlay(folder / f"{stem}{suffix}_gradcam.png", crop, cam[0],
                                    f"{p.predicted} {p.confidence:.2f}"))  # fmt: skip
        done += 1
        if progress:
            progress(done, mine)
    return written
