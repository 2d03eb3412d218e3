"""Seeded hostile files of the formats whose headers lie or whose decoders are slow: IPTC/NAA and BLP
holding a far bigger embedded image than they declare, ICO holding a huge PNG, plain PBM full of comments,
gzip FITS, QOI runs, and run-length BMP (RLE8 and RLE4) made of one-pixel runs.

Each family has a seed file that Pillow itself recognises as that format (``family_seeds`` is checked
against ``Image.open`` in the tests) and seeded mutations of it: the declared size changed, cut short, bit
flips in the header, bytes overwritten. All are small on disk and big or slow once decoded.
"""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
from PIL import Image

FAMILIES = ("iptc", "blp", "ico", "pbm", "fits", "qoi", "bmp_rle")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=10)
    return buf.getvalue()


def _iptc_field(record: int, dataset: int, data: bytes) -> bytes:
    if len(data) < 0x8000:
        return bytes([0x1C, record, dataset]) + struct.pack(">H", len(data)) + data
    return bytes([0x1C, record, dataset, 0x84]) + struct.pack(">I", len(data)) + data  # extended length


def iptc(declared: tuple[int, int] = (10, 10), embedded: tuple[int, int] = (200_000, 1)) -> bytes:
    """An IPTC/NAA image that declares ``declared`` and carries a PNG of ``embedded`` (Pillow adopts the
    embedded pixels without updating the size)."""
    w, h = declared
    return (_iptc_field(3, 60, bytes([1, 0])) + _iptc_field(3, 20, struct.pack(">I", w))
            + _iptc_field(3, 30, struct.pack(">I", h)) + _iptc_field(3, 120, bytes([5]))
            + _iptc_field(8, 10, _png(Image.new("L", embedded))))


def blp(declared: tuple[int, int] = (1, 1), embedded: int = 3000) -> bytes:
    """BLP1 with JPEG content: declares ``declared``, its one mipmap is an ``embedded``-square JPEG."""
    jpeg = _jpeg(Image.new("RGB", (embedded, embedded)))
    header_size = 4  # the JPEG header length field; the JPEG's own header is all of it here
    body_offset = 28 + 16 * 4 * 2 + 4
    header = b"BLP1" + struct.pack("<IIIIII", 0, 0, declared[0], declared[1], 0, 0)
    offsets = struct.pack("<16I", body_offset, *([0] * 15))
    sizes = struct.pack("<16I", len(jpeg), *([0] * 15))
    return header + offsets + sizes + struct.pack("<I", 0)[:header_size] + jpeg


def ico(side: int = 9000) -> bytes:
    """An ICO whose one entry is a ``side``-square PNG (decoded while the file is opened)."""
    png = _png(Image.new("1", (side, side)))
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def pbm(comment_lines: int = 20_000, side: int = 64) -> bytes:
    """Plain (P1) PBM whose header is mostly comments (Pillow's plain-PBM reader is slow on these)."""
    return b"P1\n" + b"#\n" * comment_lines + b"%d %d\n" % (side, side) + b"0 " * (side * side)


def fits(side: int = 4000) -> bytes:
    """gzip-compressed FITS (Pillow's pure-Python gzip path): a tiny file for ``side``-square float pixels."""
    cards = [f"{'SIMPLE':<8}= {'T':>20}", f"{'BITPIX':<8}= {-32:>20}", f"{'NAXIS':<8}= {2:>20}",
             f"{'NAXIS1':<8}= {side:>20}", f"{'NAXIS2':<8}= {side:>20}", f"{'XTENSION':<8}= 'BINTABLE'",
             f"{'ZCMPTYPE':<8}= 'GZIP_1  '", f"{'ZBITPIX':<8}= {-32:>20}", f"{'ZNAXIS':<8}= {2:>20}",
             f"{'ZNAXIS1':<8}= {side:>20}", f"{'ZNAXIS2':<8}= {side:>20}", "END"]
    header = "".join(c.ljust(80) for c in cards).encode("ascii")
    header += b" " * (-len(header) % 2880)
    return header + gzip.compress(b"\x00" * (side * side * 4), 9)


def qoi(side: int = 4000) -> bytes:
    """QOI of ``side`` x ``side`` made of maximal runs: a few KB for a 64 MB decode in Python."""
    pixels = side * side
    runs, last = divmod(pixels, 62)
    body = bytes([0xFD]) * runs + (bytes([0xC0 + last - 1]) if last else b"")
    return b"qoif" + struct.pack(">IIBB", side, side, 3, 0) + body + b"\x00" * 7 + b"\x01"


def bmp_rle(side: int = 5000, rle4: bool = True, run: int = 255) -> bytes:
    """A BMP compressed with RLE4 (or RLE8) made of ``run``-pixel runs: Pillow's RLE decoder is pure Python
    and loops once per pixel in RLE4 (5000 x 5000 in 210 KB; 4000 x 4000 took 1.5 s here, in process)."""
    per_row, rest = divmod(side, run)
    row = bytes([run, 0x35]) * per_row + (bytes([rest, 0x35]) if rest else b"") + b"\x00\x00"  # ..., end of line
    data = row * side + b"\x00\x01"  # end of bitmap
    bits, colours = (4, 16) if rle4 else (8, 256)
    palette = b"".join(bytes([i * 16 % 256, i, i, 0]) for i in range(colours))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, bits, 2 if rle4 else 1, len(data), 2835, 2835, colours, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def family_seeds() -> dict[str, tuple[bytes, str]]:
    """family -> (seed file, the format name Pillow gives it)."""
    return {"iptc": (iptc(), "IPTC"), "blp": (blp(), "BLP"), "ico": (ico(), "ICO"), "pbm": (pbm(), "PPM"),
            "fits": (fits(), "FITS"), "qoi": (qoi(2000), "QOI"), "bmp_rle": (bmp_rle(), "BMP")}


def _set_size(family: str, data: bytes, w: int, h: int) -> bytes:
    """The seed with another declared size, where the family has one at a known place."""
    blob = bytearray(data)
    if family == "blp":
        blob[12:20] = struct.pack("<II", w, h)
    elif family == "qoi":
        blob[4:12] = struct.pack(">II", w, h)
    elif family == "bmp_rle":
        blob[18:26] = struct.pack("<ii", w, h)
    elif family == "iptc":
        return iptc((w, h))
    else:
        return data
    return bytes(blob)


def family_mutations(n_per_family: int = 8, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(family, name, bytes): per family, the seed and seeded mutations; the same list every run."""
    rng = np.random.default_rng(seed)
    cases = []
    extra = {"iptc": [("iptc-15000x1", iptc((10, 10), (15_000, 1)))],
             "bmp_rle": [("bmp_rle8-one-pixel-runs", bmp_rle(512, rle4=False, run=1))],
             "ico": [("ico-2000", ico(2000))]}
    for family, (data, _) in family_seeds().items():
        cases.append((family, f"{family}-seed", data))
        cases += [(family, name, blob) for name, blob in extra.get(family, [])]
        for i in range(n_per_family):
            kind = i % 4
            blob = bytearray(data)
            if kind == 0:
                side = int(rng.integers(1, 60_000))
                blob = bytearray(_set_size(family, data, side, max(1, int(rng.integers(1, 60_000)) // side)))
                name = f"{family}-declares-{i}"
            elif kind == 1:
                blob = blob[: int(rng.integers(8, len(data)))]
                name = f"{family}-cut-{i}"
            elif kind == 2:
                for _ in range(int(rng.integers(1, 4))):
                    pos = int(rng.integers(0, min(64, len(data))))
                    blob[pos] ^= 1 << int(rng.integers(0, 8))
                name = f"{family}-header-flip-{i}"
            else:
                for _ in range(int(rng.integers(1, 9))):
                    blob[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
                name = f"{family}-overwrite-{i}"
            cases.append((family, name, bytes(blob)))
    return cases
