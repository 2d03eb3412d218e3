"""Generation metadata: the prompt an image file records about itself, read from its bytes.

``read_metadata(data)`` finds the positive and negative prompt, the settings and the generator in the
formats of AUTOMATIC1111 / Forge / stable-diffusion.cpp, ComfyUI, InvokeAI, NovelAI, DiffusionDB, Fooocus,
SwarmUI and Draw Things, in PNG text chunks, EXIF UserComment (JPEG, WebP) and XMP; ``None`` when the file
records nothing usable. It never raises on hostile bytes and never costs more than ``MetadataLimits``
allows: the caller falls back to interrogation.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from PIL import Image

from retriever.metadata.containers import Found, MetadataLimits, find_text
from retriever.metadata.exif import exif_fields, xmp_fields
from retriever.metadata.formats import PARSERS, Fields
from retriever.metadata.record import GenerationMetadata, cleaned

__all__ = ["GenerationMetadata", "MetadataLimits", "image_metadata", "read_metadata"]
log = logging.getLogger(__name__)


def read_metadata(data: bytes, limits: MetadataLimits = MetadataLimits()) -> GenerationMetadata | None:
    """The generation record of an image file's bytes (PNG, JPEG, WebP), or None."""
    try:
        return _first(_fields(find_text(data, limits)), limits)
    except Exception:  # metadata is optional: whatever a file holds, it is interrogated instead, never refused
        log.warning("unreadable generation metadata; interrogating instead", exc_info=True)
        return None


def image_metadata(image: Image.Image, limits: MetadataLimits = MetadataLimits()) -> GenerationMetadata | None:
    """The same record from a PIL image a caller opened (its text chunks, EXIF and XMP as Pillow read them)."""
    found = Found(text={k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)
                        and len(v) <= limits.max_field_bytes})
    exif = image.info.get("exif")  # JPEG, WebP and PNG keep the raw EXIF blob here
    if isinstance(exif, bytes) and len(exif) <= limits.max_field_bytes:
        found.exif = [exif]
    comment = image.info.get("comment")  # a JPEG's COM segment
    if isinstance(comment, bytes) and len(comment) <= limits.max_field_bytes:
        found.comment = comment.decode("utf-8", errors="replace")
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, bytes | str) and len(xmp) <= limits.max_field_bytes:
        found.xmp = [xmp.decode("utf-8", errors="replace") if isinstance(xmp, bytes) else xmp]
    try:
        return _first(_fields(found), limits)
    except Exception:
        log.warning("unreadable generation metadata; interrogating instead", exc_info=True)
        return None


def _fields(found: Found) -> Fields:
    fields: Fields = dict(found.text)
    if "XML:com.adobe.xmp" in fields:  # PNG keeps XMP in an iTXt chunk
        found.xmp.insert(0, fields.pop("XML:com.adobe.xmp"))
    for blob in found.exif:
        for key, value in exif_fields(blob).items():
            fields.setdefault(f"exif:{key}", value)
    for packet in found.xmp:
        for key, value in xmp_fields(packet).items():
            fields.setdefault(f"xmp:{key}", value)
    if found.comment:
        fields["jpeg:comment"] = found.comment
    return fields


def _first(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    if not fields:
        return None
    for parse in PARSERS:
        recorded = parse(fields, limits)
        recorded = cleaned(recorded) if recorded is not None else None  # the one place file text is made safe
        if recorded is not None and recorded.prompt:
            return replace(recorded, prompt=recorded.prompt[: limits.max_prompt_chars].rstrip(),
                           negative_prompt=recorded.negative_prompt[: limits.max_prompt_chars].rstrip())
    return None
