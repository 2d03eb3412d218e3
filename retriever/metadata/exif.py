"""EXIF and XMP: the generation text they carry, as plain strings.

EXIF ``UserComment`` (AUTOMATIC1111's JPEG and WebP files) starts with an 8-byte character code: ``ASCII``,
``UNICODE`` (UTF-16, big- or little-endian: the byte order is read from the text itself), ``JIS`` or eight
zero bytes (undefined). ComfyUI's WebP files keep their graph in IFD0's ``Model`` tag as ``prompt:{...}``.
XMP is parsed only without a DOCTYPE (no entity can expand), and only the properties generators fill are read.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET

from PIL import Image

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
IFD0_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software"}
XMP_PROPERTIES = {"description": "description", "UserComment": "UserComment", "parameters": "parameters",
                  "CreatorTool": "CreatorTool", "Software": "CreatorTool"}


def exif_fields(tiff: bytes) -> dict[str, str]:
    """``UserComment`` and the IFD0 text tags of one EXIF blob; {} when it cannot be read."""
    exif = Image.Exif()
    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exif.load(tiff)
            ifd0 = {tag: exif.get(tag) for tag in IFD0_TAGS}
            comment = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
        except Exception:  # Pillow raises many kinds on a broken TIFF structure; none may cost the image
            return out
    for tag, name in IFD0_TAGS.items():
        if isinstance(ifd0[tag], str) and ifd0[tag].strip("\x00 "):
            out[name] = ifd0[tag].strip("\x00")
    text = user_comment(comment) if isinstance(comment, (bytes, str)) else ""
    if text:
        out["UserComment"] = text
    return out


def user_comment(raw: bytes | str) -> str:
    """The text of an EXIF UserComment, whatever its 8-byte character code says (or fails to say)."""
    if isinstance(raw, str):
        return raw.strip("\x00").strip()
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        text = _utf16(body)
    elif code.startswith(b"JIS"):
        text = _first_decoding(body, ("iso2022_jp", "shift_jis", "euc_jp"))
    elif code.startswith(b"ASCII") or code == b"\x00" * 8:
        text = _utf16(body) if _looks_utf16(body) else _first_decoding(body, ("utf-8",))
    else:  # no character code at all: the whole value is the text
        text = _utf16(raw) if _looks_utf16(raw) else _first_decoding(raw, ("utf-8",))
    return text.strip("\x00").strip()


def _looks_utf16(body: bytes) -> bool:
    head = body[:256]
    return len(head) >= 4 and head.count(0) * 3 >= len(head)


def _utf16(body: bytes) -> str:
    """UTF-16 with or without a byte-order mark; without one, the side the zero bytes of Latin text fall on
    tells the order (A1111 writes big-endian, other tools little-endian)."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    head = body[:512]
    big = head[0::2].count(0) >= head[1::2].count(0)
    return body[: len(body) // 2 * 2].decode("utf-16-be" if big else "utf-16-le", errors="replace")


def _first_decoding(raw: bytes, encodings: tuple[str, ...]) -> str:
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode("latin-1")


def xmp_fields(packet: str) -> dict[str, str]:
    """dc:description, exif:UserComment, any ``parameters`` property and the creator tool of one XMP packet
    (as elements or as attributes); {} for a packet with a DOCTYPE or one that is not well-formed XML."""
    start = packet.find("<x:xmpmeta")
    if start < 0:
        start = packet.find("<rdf:RDF")
    if start < 0 or "<!DOCTYPE" in packet or "<!ENTITY" in packet:
        return {}
    end_tag = "</x:xmpmeta>" if packet.startswith("<x:xmpmeta", start) else "</rdf:RDF>"
    end = packet.find(end_tag, start)
    try:
        root = ET.fromstring(packet[start : end + len(end_tag)] if end >= 0 else packet[start:])
    except (ET.ParseError, ValueError):
        return {}
    out: dict[str, str] = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            key = XMP_PROPERTIES.get(_local(name))
            if key and key not in out and value.strip():
                out[key] = value.strip()
        key = XMP_PROPERTIES.get(_local(element.tag))
        if key and key not in out:
            text = next((t.strip() for t in element.itertext() if t.strip()), "")  # rdf:Alt: the first language
            if text:
                out[key] = text
    return out


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]
