"""What a file records about its own generation: the prompts, the settings and the tool that wrote them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from retriever.files import CONTROL_CHARS

Setting = str | int | float | bool
MAX_SETTINGS = 48
MAX_SETTING_CHARS = 300


@dataclass(frozen=True)
class GenerationMetadata:
    prompt: str
    negative_prompt: str = ""
    generator: str = ""  # AUTOMATIC1111, Forge, stable-diffusion.cpp, ComfyUI, InvokeAI, NovelAI, DiffusionDB ...
    settings: dict[str, Setting] = field(default_factory=dict)  # steps, sampler, seed, model ... as recorded
    found_in: str = ""  # where in the file: "png:parameters", "exif:UserComment", "xmp:description" ...

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "generator": self.generator,
                "settings": dict(self.settings), "found_in": self.found_in}


_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")  # overrides and isolates


def clean_text(text: str) -> str:
    """Recorded text made safe to print, answer and write one to a line: C0 and C1 control characters (tab,
    CR and LF included: terminal escapes, NULs) become a space, bidi overrides and isolates go, whitespace runs
    collapse to one space."""
    return " ".join(CONTROL_CHARS.sub(" ", _BIDI.sub("", text)).split())


def cleaned(record: "GenerationMetadata") -> "GenerationMetadata":
    """The record with every text it carries from the file cleaned (``clean_text``): prompts, generator, settings."""
    settings = {clean_text(k): clean_text(v) if isinstance(v, str) else v for k, v in record.settings.items()}
    return GenerationMetadata(clean_text(record.prompt), clean_text(record.negative_prompt),
                              clean_text(record.generator), {k: v for k, v in settings.items() if k}, record.found_in)


def settings_of(pairs: dict[str, Any]) -> dict[str, Setting]:
    """Scalar settings only (no nested structures), each short, a bounded number of them."""
    out: dict[str, Setting] = {}
    for key, value in pairs.items():
        if len(out) >= MAX_SETTINGS:
            break
        if isinstance(value, bool | int | float):
            out[str(key)[:64]] = value
        elif isinstance(value, str) and value.strip():
            out[str(key)[:64]] = value.strip()[:MAX_SETTING_CHARS]
    return out


def json_object(text: str | None) -> dict | None:
    """A JSON object, or None for anything else: broken, too deeply nested, a list, a number."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def text_of(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""
