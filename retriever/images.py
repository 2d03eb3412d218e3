"""Image admission: untrusted bytes -> a bounded RGB image, or a clear refusal.

One function, :func:`admit_image`, is used by the command line and the service alike. Every
failure to decode becomes an :class:`ImageRejected` with a ``reason`` (never a bare Pillow
error), and nothing is decoded before its size, side lengths and aspect ratio are checked:

* ``max_bytes``: the encoded file or upload;
* ``max_pixels`` and ``max_aspect``: checked from the header, before any pixel is decoded
  (a 105-byte 200000x1 PNG would otherwise cost about 40 GB once a model resizes it);
* ``working_side``: decoded images are brought down to this longest side at once (JPEGs are
  decoded at reduced scale in the first place), so 16-bit and 32-bit images convert to 8 bits
  on a small image, without a float64 copy of the full one.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retriever.errors import ImageError

MiB = 1 << 20
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost. The service reads these from its settings; the CLI uses the defaults."""

    max_bytes: int = 20 * MiB
    max_pixels: int = 50_000_000  # about 7000 x 7000
    max_aspect: float = 20.0  # longest side over shortest side
    working_side: int = 1024  # longest side kept after decoding; the models look at 224-260 pixels


class ImageRejected(ImageError):
    """Why an image was refused. ``reason`` is one of: empty, missing, unreadable, not_image, corrupt,
    too_large (bytes, or memory to process), too_many_pixels, bad_shape (aspect ratio or a zero side)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _shrink(img: Image.Image, side: int) -> Image.Image:
    if max(img.size) <= side:
        return img
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if img.mode == "P":  # palette images resample as RGB(A)
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    try:
        return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    except ValueError:  # modes without reduce() (16-bit grey): plain resampling
        return img.resize(size, Image.Resampling.BILINEAR)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits (scaled, not clipped)
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):  # 32-bit grey: stretch its own range (the image is small by now)
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _check_shape(width: int, height: int, limits: ImageLimits, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageRejected("bad_shape", f"{name}: image has a zero side ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"{name}: {width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels}",
        )
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise ImageRejected(
            "bad_shape", f"{name}: {width}x{height} has an aspect ratio of {aspect:.0f}:1, over the limit of "
                         f"{limits.max_aspect:g}:1")


def _decode(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    _check_shape(*img.size, limits, name)
    img.draft("RGB", (limits.working_side, limits.working_side))  # JPEG: decode at reduced scale
    img.seek(0)  # animated images: the first frame
    img.load()
    img = _shrink(img, limits.working_side)  # first: every later step copies, and copies of a small image are cheap
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF should not cost the image
        pass
    return _to_rgb(img)


def admit_image(data: bytes, limits: ImageLimits = ImageLimits(), name: str = "image") -> Image.Image:
    """Bytes -> RGB PIL image no larger than ``limits.working_side``, or :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("empty", f"{name}: the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"{name}: {len(data)} bytes is over the limit of {limits.max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(data, limits, name)
        except ImageRejected:
            raise
        except UnidentifiedImageError:
            raise ImageRejected("not_image", f"{name}: not an image file PIL can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected("too_many_pixels", f"{name}: image has too many pixels") from None
        except MemoryError:
            raise ImageRejected("too_large", f"{name}: image needs too much memory to decode") from None
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad bytes
            detail = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
            raise ImageRejected("corrupt", f"{name}: truncated or corrupt image ({detail})") from None


def read_image_file(path: str | Path, limits: ImageLimits = ImageLimits()) -> bytes:
    """The bytes of a regular file no larger than ``limits.max_bytes`` (never /dev/zero or a folder)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageRejected("missing", f"{p}: no such file") from None
    except OSError as exc:
        raise ImageRejected("unreadable", f"{p}: cannot read ({exc.strerror})") from None
    if p.is_dir():
        raise ImageRejected("not_image", f"{p}: is a directory")
    if not p.is_file():
        raise ImageRejected("not_image", f"{p}: not a regular file")
    if st.st_size > limits.max_bytes:
        raise ImageRejected("too_large", f"{p}: {st.st_size} bytes is over the limit of {limits.max_bytes}")
    try:
        with open(p, "rb") as f:
            return f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageRejected("unreadable", f"{p}: cannot read ({exc.strerror})") from None


def load_image(path: str | Path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    return admit_image(read_image_file(path, limits), limits, name=str(path))


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (by suffix), sorted by name; a clear error for a non-folder or none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageRejected("missing", f"{folder}: not a folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ImageRejected("missing", f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images
