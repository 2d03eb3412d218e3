"""Seeded hostile images: real PNG, JPEG, WebP and GIF files carrying metadata (PNG text chunks as Stable
Diffusion writes them, EXIF, ICC profiles), then cut inside those segments, cut anywhere, bit-flipped in
their headers, overwritten at random, or given impossible sizes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin

SD_PARAMETERS = ("a castle on a hill at sunset, highly detailed, oil painting, by greg rutkowski\n"
                 "Negative prompt: blurry, lowres\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 1234, "
                 "Size: 512x512, Model hash: 0123456789") * 3


def _picture(rng: np.random.Generator, w: int = 64, h: int = 48) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) % 256
    return Image.fromarray(((base + rng.integers(0, 30, (h, w, 3))) % 256).astype(np.uint8))


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x010E] = "a hostile test image " * 8  # ImageDescription
    exif[0x0131] = "unprompt tests"  # Software
    return exif


def seeds(seed: int = 0) -> dict[str, tuple[bytes, list[bytes]]]:
    """format -> (valid file, markers of the metadata segments to cut inside)."""
    rng = np.random.default_rng(seed)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = {}
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", SD_PARAMETERS)
    info.add_itxt("Comment", "ünïcode comment", lang="en")
    buf = io.BytesIO()
    _picture(rng).save(buf, "PNG", pnginfo=info, icc_profile=icc, exif=_exif())
    out["png"] = (buf.getvalue(), [b"tEXt", b"iTXt", b"iCCP", b"eXIf"])
    buf = io.BytesIO()
    _picture(rng).save(buf, "JPEG", quality=85, exif=_exif(), icc_profile=icc)
    out["jpeg"] = (buf.getvalue(), [b"Exif\x00\x00", b"ICC_PROFILE", b"\xff\xdb", b"\xff\xc0"])
    buf = io.BytesIO()
    _picture(rng).save(buf, "WEBP", quality=80, exif=_exif(), icc_profile=icc)
    out["webp"] = (buf.getvalue(), [b"EXIF", b"ICCP", b"VP8"])
    frames = [_picture(rng).convert("P"), _picture(rng).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0, comment=b"hostile gif")
    out["gif"] = (buf.getvalue(), [b"NETSCAPE2.0", b"\x21\xfe", b"\x2c"])
    return out


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG that declares width x height (a decompression bomb of the aspect kind)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = zlib.compress(b"\x00" * (width + 1) * min(height, 1), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def wide_png() -> bytes:
    """The 200000 x 1 PNG: a few hundred bytes, under the pixel limit, about 40 GB once a model resizes it."""
    buf = io.BytesIO()
    Image.new("L", (200_000, 1)).save(buf, "PNG")
    return buf.getvalue()


def mutations(n_per_format: int = 60, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, bytes): seeded, bounded, and the same list every run."""
    rng = np.random.default_rng(seed)
    cases = []
    for fmt, (data, markers) in seeds(seed).items():
        for i in range(n_per_format):
            kind = i % 5
            blob = bytearray(data)
            if kind == 0:  # cut inside a metadata segment
                at = [p for m in markers if (p := data.find(m)) >= 0] or [0]
                start = int(rng.choice(at))
                blob = blob[: min(len(data) - 1, start + int(rng.integers(1, 200)))]
                name = f"{fmt}-cut-in-segment-{i}"
            elif kind == 1:  # cut anywhere
                blob = blob[: int(rng.integers(1, len(data)))]
                name = f"{fmt}-cut-{i}"
            elif kind == 2:  # bit flips in the header
                for _ in range(int(rng.integers(1, 4))):
                    pos = int(rng.integers(0, min(64, len(data))))
                    blob[pos] ^= 1 << int(rng.integers(0, 8))
                name = f"{fmt}-header-flip-{i}"
            elif kind == 3:  # random bytes overwritten anywhere
                for _ in range(int(rng.integers(1, 9))):
                    blob[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
                name = f"{fmt}-overwrite-{i}"
            else:  # a metadata segment's bytes scrambled in place
                at = [p for m in markers if (p := data.find(m)) >= 0] or [0]
                start = int(rng.choice(at))
                for j in range(start, min(len(blob), start + 16)):
                    blob[j] = int(rng.integers(0, 256))
                name = f"{fmt}-segment-scramble-{i}"
            cases.append((name, bytes(blob)))
    cases += [("png-200000x1", wide_png()), ("png-declares-65535x65535", _png_with_size(65535, 65535)),
              ("png-declares-1x100000", _png_with_size(1, 100_000)), ("empty", b""), ("text", b"hello, not an image")]
    return cases
