"""Decode untrusted image bytes into RGB, refusing what is not an image and converting odd modes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retriever.errors import ImageError

DEFAULT_MAX_PIXELS = 50_000_000  # about 7000 x 7000


class ImageRejected(ImageError):
    """Why an image was refused. ``reason`` is one of: empty, not_image, corrupt, too_many_pixels."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or 32-bit grey: scale, don't clip
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if img.mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> Image.Image:
    """Bytes -> RGB PIL image. Animated images give their first frame; EXIF rotation is applied."""
    if not data:
        raise ImageRejected("empty", f"{name}: the file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageRejected("not_image", f"{name}: not an image file PIL can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected("too_many_pixels", f"{name}: image has too many pixels") from None
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"{name}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels}",
            )
        try:
            img.seek(0)
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageRejected("corrupt", f"{name}: truncated or corrupt image ({exc})") from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # broken EXIF should not cost the image
            pass
        return _to_rgb(img)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise ImageRejected("missing", f"{p}: no such file")
    if p.is_dir():
        raise ImageRejected("not_image", f"{p}: is a directory")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageRejected("unreadable", f"{p}: cannot read ({exc.strerror})") from None
    return decode_image(data, max_pixels=max_pixels, name=str(p))
