"""Reading any microscope image as 8-bit RGB, and the crop policies shared by prepare and infer."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from cellmorphnet.errors import InvalidData

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The formats a microscope camera or a lab's software writes. Only these are decoded, whatever a file is named:
# Pillow has decoders for many more (EPS runs Ghostscript where it is installed; ICO, PCX, TGA...), and an
# upload must not reach them. (The multi-frame JPEG some cameras write, MPO, opens through the JPEG plugin.)
IMAGE_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
FORMAT_NAMES = "JPEG, PNG, TIFF, BMP or WebP"
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, I;16, I, F, CMYK...) to 8-bit RGB.

    16-bit and float images are scaled by their own range, since PIL's plain conversion would clip
    them to white. A float image with NaN or infinite values raises ``ValueError`` (no range to scale by).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("a float image with NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _formats() -> list[str]:
    """``IMAGE_FORMATS`` that this Pillow build can open (a build without WebP simply does not list it)."""
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def pixel_count(source) -> int | None:
    """Width x height from an image's header, without decoding it (None where it is not a supported image)."""
    try:
        w, h = image_size(source, "")
    except InvalidData:
        return None
    return w * h


def image_size(source, name: str) -> tuple[int, int]:
    """Width and height from an image's header, without decoding it; ``InvalidData`` where it is not a supported
    image."""
    try:
        with Image.open(source, formats=_formats()) as img:
            return img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        raise InvalidData(f"{name}: not an image in a supported format ({FORMAT_NAMES})") from None


def load_rgb(source, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open an image (a path, or a binary file object named ``name``) fully as RGB.

    Raises ``InvalidData`` with the reason if it cannot be read or is not in one of ``IMAGE_FORMATS``, and
    before decoding anything when it has more than ``max_pixels`` pixels (a decompression bomb: a small file
    that decodes to gigabytes); without ``max_pixels``, PIL's own limit applies.
    """
    label = name if name is not None else source
    try:
        with Image.open(source, formats=_formats()) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise InvalidData(f"{label}: image too large ({w}x{h} pixels; the limit is {max_pixels:,})")
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError:
        raise InvalidData(f"{label}: image too large (more pixels than PIL decodes safely)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = (f"not an image in a supported format ({FORMAT_NAMES})" if isinstance(e, UnidentifiedImageError)
                  else str(e) or type(e).__name__)  # fmt: skip
        raise InvalidData(f"{label}: {reason}") from None


def square_box(
    box: tuple[float, float, float, float], width: int, height: int, margin: float = 0.0
) -> tuple[int, int, int, int]:
    """Grow ``(x0, y0, x1, y1)`` by ``margin`` (a fraction of its longer side) to a square, kept inside the image.

    The square is shifted, not shrunk, to stay inside the image; only when the image itself is
    smaller than the square is it clipped.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = min(side, float(max(width, height)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = min(max(cx - side / 2.0, 0.0), max(width - side, 0.0))
    top = min(max(cy - side / 2.0, 0.0), max(height - side, 0.0))
    right, bottom = min(left + side, width), min(top + side, height)
    return round(left), round(top), round(right), round(bottom)


def centre_square(
    width: int, height: int, fraction: float = 1.0, pixels: int | None = None
) -> tuple[int, int, int, int]:
    """The centred square of side ``pixels`` (at most the shorter side), else ``round(fraction * shorter side)``.

    Offsets are rounded down. That is how MedMNIST cut BloodMNIST from the PBC images (a 200 px
    square starting at (80, 81) of a 360x363 image): it reproduces the stored arrays exactly.
    """
    shorter = min(width, height)
    side = min(pixels, shorter) if pixels else max(1, round(shorter * fraction))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_resize(img: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` and resize to ``size`` x ``size`` (bicubic, as MedMNIST); return HxWx3 uint8."""
    return np.asarray(img.crop(box).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def boxed_png(data: bytes, box: tuple[int, int, int, int], *, max_side: int = 1200, max_pixels: int = 50_000_000,
              name: str = "field") -> bytes:  # fmt: skip
    """A field's image (``data``, checked before decoding) with ``box`` drawn on it, shrunk to at most ``max_side``
    pixels a side, as PNG: where a cell lies in its field."""
    import io

    from PIL import ImageDraw

    img = load_rgb(io.BytesIO(data), name, max_pixels=max_pixels)
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    width = max(2, round(max(img.size) / 300))
    draw = ImageDraw.Draw(img)
    draw.rectangle((x0 - width, y0 - width, x1 + width, y1 + width), outline=(255, 255, 255), width=width)
    draw.rectangle((x0, y0, x1, y1), outline=(220, 0, 90), width=width)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
