"""Where image files keep their text, read from the raw bytes under hard limits; no pixel is decoded.

* PNG: ``tEXt``, ``zTXt`` and ``iTXt`` chunks (before or after the image data) and ``eXIf``;
* JPEG: the APP1 ``Exif`` and XMP segments and the ``COM`` comment, up to the start of the scan;
* WebP: the RIFF ``EXIF`` and ``XMP `` chunks.

Only the keywords the formats read (:data:`WANTED`) are decoded; compressed text is inflated with a
``max_length`` so a zTXt bomb costs at most ``max_field_bytes`` of output, and the text of one file is capped
at ``max_total_bytes`` in all. Broken or truncated containers end the walk; what was read before stays.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_HEADER = b"Exif\x00\x00"
# PNG keywords some generator writes (the others, such as ComfyUI's large `workflow`, are never inflated)
WANTED = frozenset({"parameters", "prompt", "seed", "invokeai_metadata", "sd-metadata", "Dream", "Comment",
                    "Description", "Software", "Source", "Title", "XML:com.adobe.xmp"})


@dataclass(frozen=True)
class MetadataLimits:
    """What reading one file's metadata may cost (the image itself is bounded by ``ImageLimits``)."""

    max_field_bytes: int = 1 << 20  # one text field, after inflating
    max_total_bytes: int = 4 << 20  # every field of one file together
    max_segments: int = 100_000  # PNG chunks / JPEG segments / RIFF chunks walked
    max_graph_nodes: int = 5_000  # a ComfyUI graph with more nodes is not read
    max_graph_depth: int = 64  # links followed from a sampler to its text
    max_prompt_chars: int = 20_000  # a longer recorded prompt is cut here


@dataclass
class Found:
    """The raw places a file keeps text: PNG keywords, EXIF blobs (TIFF), XMP packets, a JPEG comment."""

    text: dict[str, str] = field(default_factory=dict)
    exif: list[bytes] = field(default_factory=list)
    xmp: list[str] = field(default_factory=list)
    comment: str | None = None


class _Budget:
    def __init__(self, limits: MetadataLimits) -> None:
        self.limits = limits
        self.left = limits.max_total_bytes

    def take(self, size: int) -> bool:
        """Whether a field of ``size`` bytes may be kept (it counts against the file's total)."""
        if size > self.limits.max_field_bytes or size > self.left:
            return False
        self.left -= size
        return True


def find_text(data: bytes, limits: MetadataLimits = MetadataLimits()) -> Found:
    """The text places of a PNG, JPEG or WebP file (an empty :class:`Found` for any other bytes)."""
    found, budget = Found(), _Budget(limits)
    view = memoryview(data)
    if data.startswith(PNG_SIGNATURE):
        _png(view, found, budget)
    elif data.startswith(b"\xff\xd8"):
        _jpeg(view, found, budget)
    elif len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _webp(view, found, budget)
    return found


def _png(data: memoryview, found: Found, budget: _Budget) -> None:
    pos, end = len(PNG_SIGNATURE), len(data)
    for _ in range(budget.limits.max_segments):
        if pos + 12 > end:
            return
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end or kind == b"IEND":
            return
        body = data[pos + 8 : body_end]
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            item = _png_text(kind, body, budget, found.text)
            if item:
                found.text[item[0]] = item[1]
        elif kind == b"eXIf" and budget.take(length):
            found.exif.append(bytes(body))
        pos = body_end + 4


def _png_text(kind: bytes, body: memoryview, budget: _Budget, seen: dict[str, str]) -> tuple[str, str] | None:
    """(keyword, text) of a wanted keyword's first chunk; None for any other chunk, or one over the limits."""
    raw = bytes(body[:80])
    cut = raw.find(b"\x00")
    if cut < 1:
        return None
    key = raw[:cut].decode("latin-1")
    if key not in WANTED or key in seen:
        return None
    rest = body[cut + 1 :]
    if kind == b"tEXt":
        return (key, _text(bytes(rest))) if budget.take(len(rest)) else None
    if kind == b"zTXt":
        blob = _inflate(rest[1:], budget) if len(rest) > 1 and rest[0] == 0 else None
        return (key, _text(blob)) if blob is not None else None
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text
    if len(rest) < 2 or len(rest) > budget.limits.max_field_bytes:
        return None
    tail = bytes(rest[2:])
    lang_end = tail.find(b"\x00")
    word_end = tail.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
    if word_end < 0:
        return None
    payload = memoryview(tail)[word_end + 1 :]
    blob = _inflate(payload, budget) if rest[0] else (bytes(payload) if budget.take(len(payload)) else None)
    return (key, blob.decode("utf-8", errors="replace")) if blob is not None else None


def _inflate(blob: memoryview, budget: _Budget) -> bytes | None:
    """Inflate at most ``max_field_bytes`` (one more byte tells a field that is too long): bounded time and
    memory whatever the compressed stream claims."""
    cap = min(budget.limits.max_field_bytes, budget.left)
    try:
        out = zlib.decompressobj().decompress(blob, cap + 1)
    except zlib.error:
        return None
    return out if budget.take(len(out)) else None


def _text(raw: bytes) -> str:
    """tEXt is Latin-1 by the standard, but tools write UTF-8 there too: valid UTF-8 is taken as UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _jpeg(data: memoryview, found: Found, budget: _Budget) -> None:
    pos, end = 2, len(data)
    for _ in range(budget.limits.max_segments):
        if pos + 4 > end or data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the metadata came before
            return
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > end:
            return
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and bytes(body[:6]) == EXIF_HEADER and budget.take(len(body)):
            found.exif.append(bytes(body[6:]))
        elif marker == 0xE1 and bytes(body[: len(XMP_JPEG_HEADER)]) == XMP_JPEG_HEADER and budget.take(len(body)):
            found.xmp.append(bytes(body[len(XMP_JPEG_HEADER) :]).decode("utf-8", errors="replace"))
        elif marker == 0xFE and found.comment is None and budget.take(len(body)):
            found.comment = _text(bytes(body))
        pos += 2 + length


def _webp(data: memoryview, found: Found, budget: _Budget) -> None:
    pos, end = 12, len(data)
    for _ in range(budget.limits.max_segments):
        if pos + 8 > end:
            return
        kind, length = struct.unpack_from("<4sI", data, pos)
        body_end = pos + 8 + length
        if body_end > end:
            return
        if kind in (b"EXIF", b"XMP ") and budget.take(length):
            body = bytes(data[pos + 8 : body_end])
            if kind == b"EXIF":
                found.exif.append(body[6:] if body.startswith(EXIF_HEADER) else body)
            else:
                found.xmp.append(body.decode("utf-8", errors="replace"))
        pos = body_end + (length & 1)  # chunks are padded to an even size
