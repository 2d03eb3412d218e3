"""Image admission: untrusted bytes -> a bounded RGB image, or a clear refusal.

One function, :func:`admit_image`, is used by the command line and the service alike (both run it in
the worker processes of ``retriever.decode_pool``, where a wall-clock limit and a memory limit hold; the
Python API runs it in its own process). Every failure to decode becomes an :class:`ImageRejected` with a
``reason`` (never a bare Pillow error), and nothing is decoded before its format, size, side lengths,
aspect ratio and memory are checked:

* ``formats``: the allow-list (:data:`DEFAULT_FORMATS`: PNG, JPEG, WebP, GIF, BMP, TIFF, and AVIF/HEIF
  where Pillow has the plugin). Only these plugins are even tried, so ICO, IPTC, BLP, PBM/PPM, FITS,
  QOI, JPEG 2000 and the rest are refused before any of their (sometimes pure-Python, sometimes
  payload-hiding) decoders run;
* ``max_bytes``: the encoded file or upload;
* ``max_pixels`` and ``max_aspect``: checked from the header, before any pixel is decoded
  (a 105-byte 200000x1 PNG would otherwise cost about 40 GB once a model resizes it);
* ``max_decode_bytes``: what the decoded image will take in memory, from its header;
* after the decode, the size actually produced is checked again, before any conversion (a container
  whose header lies, like IPTC's 10x10 holding a 200000x1 PNG, is refused there);
* ``decode_seconds``: the wall-clock limit the decode pool enforces (a thread cannot be stopped);
* ``working_side``: decoded images are brought down to this longest side at once (JPEGs are
  decoded at reduced scale in the first place), so 16-bit and 32-bit images convert to 8 bits
  on a small image, without a float64 copy of the full one.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from retriever.errors import ImageError

MiB = 1 << 20


def _default_formats() -> tuple[str, ...]:
    """The formats users send; AVIF and HEIF only where a plugin can read them."""
    formats = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
    if features.check("avif"):
        formats.append("AVIF")
    if importlib.util.find_spec("pillow_heif") is not None:  # pragma: no cover - not installed here
        from pillow_heif import register_heif_opener

        register_heif_opener()
        formats.append("HEIF")
    return tuple(formats)


DEFAULT_FORMATS = _default_formats()
# what Pillow calls a format once open, for each allowed name (a multi-picture JPEG opens as MPO)
_ALSO = {"JPEG": ("MPO",)}
_SUFFIXES = {"PNG": (".png", ".apng"), "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "WEBP": (".webp",),
             "GIF": (".gif",), "BMP": (".bmp",), "TIFF": (".tif", ".tiff"), "AVIF": (".avif",),
             "HEIF": (".heic", ".heif")}
IMAGE_SUFFIXES = frozenset(s for f in DEFAULT_FORMATS for s in _SUFFIXES.get(f, ()))


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost. The service reads these from its settings; the CLI uses the defaults."""

    max_bytes: int = 20 * MiB
    max_pixels: int = 50_000_000  # about 7000 x 7000
    max_aspect: float = 20.0  # longest side over shortest side
    working_side: int = 1024  # longest side kept after decoding; the models look at 224-260 pixels
    formats: tuple[str, ...] = DEFAULT_FORMATS  # Pillow format names; everything else is not_image
    max_decode_bytes: int = 512 * MiB  # the decoded image's own memory, from its header (50 Mpx RGBA: 200 MB)
    decode_seconds: float = 10.0  # wall-clock limit of one decode in the decode pool


class ImageRejected(ImageError):
    """Why an image was refused. ``reason`` is one of: empty, missing, unreadable, not_image, corrupt,
    too_large (bytes, or memory to process), too_many_pixels, bad_shape (aspect ratio or a zero side),
    too_slow (the decode ran past its time limit)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # crosses process boundaries (the decode pool) with its reason
        return (self.__class__, (self.reason, str(self)))


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


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel in Pillow's memory (multi-band images take 4, whatever their band count)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _check_format(img: Image.Image, limits: ImageLimits, name: str) -> None:
    allowed = {f for f in limits.formats for f in (f, *_ALSO.get(f, ()))}
    if img.format not in allowed:
        raise ImageRejected("not_image", f"{name}: {img.format} images are not accepted; send one of "
                                         f"{', '.join(limits.formats)}")


def _check_memory(img: Image.Image, limits: ImageLimits, name: str) -> None:
    need = img.width * img.height * _pixel_bytes(img.mode)
    if need > limits.max_decode_bytes:
        raise ImageRejected("too_large", f"{name}: decoding {img.width}x{img.height} {img.mode} needs {need} bytes, "
                                         f"over the limit of {limits.max_decode_bytes}")


def _decode(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=list(limits.formats))
    _check_format(img, limits, name)
    _check_shape(*img.size, limits, name)
    img.draft("RGB", (limits.working_side, limits.working_side))  # JPEG: decode at reduced scale
    _check_memory(img, limits, name)
    img.seek(0)  # animated images: the first frame
    img.load()
    produced = img.im.size  # what the decoder made: a container's header may have said something else
    if produced != img.size:
        raise ImageRejected("corrupt", f"{name}: the header says {img.width}x{img.height} but the decoder made "
                                       f"{produced[0]}x{produced[1]}")
    _check_shape(*produced, limits, name)
    img = _shrink(img, limits.working_side)  # first: every later step copies, and copies of a small image are cheap
    try:  # in place: an image that needs no turning is not copied (6 ms for a 1024 x 1024 one)
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # broken EXIF should not cost the image
        pass
    return _to_rgb(img)


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG's IHDR or a GIF's screen descriptor declares (None for other files)."""
    from retriever.metadata.containers import PNG_SIGNATURE

    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    return None


def admit_image(data: bytes, limits: ImageLimits = ImageLimits(), name: str = "image") -> Image.Image:
    """Bytes -> RGB PIL image no larger than ``limits.working_side``, or :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("empty", f"{name}: the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"{name}: {len(data)} bytes is over the limit of {limits.max_bytes}")
    # Pillow's own bomb check (a warning, then an error, past Image.MAX_IMAGE_PIXELS) runs at open, before
    # ours; the pixel limit above is the one that decides, so no warnings filter is touched here (filters
    # are process-global, and decoding threads would race on them)
    try:
        return _decode(data, limits, name)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        declared = _declared_size(data)  # Pillow refuses a zero side as "cannot identify": say what it is
        if declared and min(declared) == 0 and any(f in limits.formats for f in ("PNG", "GIF")):
            _check_shape(*declared, limits, name)
        raise ImageRejected("not_image", f"{name}: not an image file in an accepted format "
                                         f"({', '.join(limits.formats)})") from None
    except Image.DecompressionBombError:
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


def is_listed_image(path: Path) -> bool:
    """Whether a folder listing names ``path`` as an image: an image suffix, and not a folder. Entries that are
    not readable regular files (a FIFO, a dangling symlink, a symlink loop or one to a device) are listed too,
    so that :func:`read_image_file` refuses each with its own error (without opening it) instead of the
    listing hiding them."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (by suffix: :func:`is_listed_image`), sorted by name; a clear error for a
    non-folder or none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageRejected("missing", f"{folder}: not a folder of images")
    images = sorted(p for p in folder.iterdir() if is_listed_image(p))
    if not images:
        raise ImageRejected("missing", f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images
