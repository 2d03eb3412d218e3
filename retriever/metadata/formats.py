"""The formats generators record their prompts in, each a function: text fields -> GenerationMetadata or None.

* AUTOMATIC1111, Forge, stable-diffusion.cpp (and tools that copy them): the "infotext", a ``parameters``
  PNG chunk or an EXIF UserComment: prompt lines, ``Negative prompt: ...`` lines, then one line of
  ``Key: value`` settings (values with commas in double quotes); ``Version`` names the tool.
* Fooocus and SwarmUI: the same ``parameters`` chunk holding a JSON object (Fooocus also a JSON ``Comment``).
* InvokeAI: ``invokeai_metadata`` (JSON, 3.x and later), ``sd-metadata`` (JSON, 2.x), ``Dream`` (1.x: a
  quoted prompt with ``[negative]`` parts, then ``-s 50 -S 42 ...`` switches).
* NovelAI: ``Software`` = NovelAI, the prompt in ``Description``, the settings and ``uc`` (the negative
  prompt) in ``Comment`` (JSON).
* DiffusionDB: a plain-text ``prompt`` chunk (and ``seed``).
* Draw Things: XMP whose exif:UserComment is JSON (``c``: prompt, ``uc``: negative).
"""

from __future__ import annotations

import re
from typing import Callable

from retriever.metadata.comfyui import parse_graph
from retriever.metadata.containers import MetadataLimits
from retriever.metadata.record import GenerationMetadata, json_object, settings_of, text_of

Fields = dict[str, str]  # "parameters", "prompt" ... (PNG keywords), "exif:UserComment", "xmp:description" ...
Parser = Callable[[Fields, MetadataLimits], "GenerationMetadata | None"]

NEGATIVE_LABEL = "Negative prompt:"
MAX_SETTINGS_LINE = 1 << 16
_KEY = re.compile(r"[A-Za-z][\w /\-]{0,63}")
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_DREAM_SWITCH = re.compile(r"-(\w+)\s+(\S+)")
DREAM_NAMES = {"s": "steps", "S": "seed", "W": "width", "H": "height", "C": "cfg_scale", "A": "sampler"}
# words in an XMP creator tool that name an image generator (a camera's or an editor's description is no prompt)
GENERATOR_WORDS = ("diffusion", "comfy", "invoke", "novelai", "draw things", "fooocus", "forge", "automatic1111",
                   "swarm", "midjourney", "dall", "firefly", "flux")


def _split_settings(line: str) -> dict[str, str]:
    """``Key: value, Key: "a, quoted" ...`` -> pairs, in one pass (a long hostile line costs linear time)."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in line:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    pairs = {}
    for part in parts:
        key, sep, value = part.partition(":")
        key, value = key.strip(), value.strip()
        if sep and _KEY.fullmatch(key):
            pairs[key] = _unquote(value)
    return pairs


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        obj = json_object('{"v": ' + value + "}")
        return obj["v"] if obj and isinstance(obj.get("v"), str) else value[1:-1]
    return value


def parse_infotext(text: str, need_settings: bool = False) -> tuple[str, str, dict[str, str]] | None:
    """(prompt, negative prompt, settings) of an AUTOMATIC1111 infotext; with ``need_settings``, None unless it
    ends in a settings line (how a comment that merely holds text is told from a generator's record)."""
    lines = text.replace("\r\n", "\n").strip().split("\n")
    settings = _split_settings(lines[-1]) if len(lines[-1]) <= MAX_SETTINGS_LINE else {}
    if len(settings) >= 3:
        lines = lines[:-1]
    else:
        settings = {}
        if need_settings:
            return None
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE_LABEL):
            in_negative, line = True, line[len(NEGATIVE_LABEL) :]
        (negative if in_negative else prompt).append(line.strip())
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), settings


def infotext_generator(settings: dict[str, str], default: str = "AUTOMATIC1111") -> str:
    version = settings.get("Version", "")
    if version == "stable-diffusion.cpp":
        return "stable-diffusion.cpp"
    if re.match(r"f\d", version):  # Forge: f2.0.1v1.10.1-...
        return "Forge"
    return default


def _from_infotext(text: str, found_in: str, default: str, need_settings: bool = False) -> GenerationMetadata | None:
    parsed = parse_infotext(text, need_settings)
    if parsed is None or not parsed[0]:
        return None
    prompt, negative, settings = parsed
    return GenerationMetadata(prompt, negative, infotext_generator(settings, default), settings_of(settings), found_in)


def _from_json_parameters(obj: dict, found_in: str) -> GenerationMetadata | None:
    """Fooocus (``prompt``, ``negative_prompt``) and SwarmUI (``sui_image_params``) keep JSON in ``parameters``."""
    swarm = obj.get("sui_image_params")
    if isinstance(swarm, dict):
        prompt, negative, rest, generator = swarm.get("prompt"), swarm.get("negativeprompt"), swarm, "SwarmUI"
    else:
        prompt, negative, rest, generator = obj.get("prompt"), obj.get("negative_prompt"), obj, "Fooocus"
    if not text_of(prompt):
        return None
    settings = settings_of({k: v for k, v in rest.items() if k not in ("prompt", "negative_prompt", "negativeprompt")})
    return GenerationMetadata(text_of(prompt), text_of(negative), generator, settings, found_in)


def a1111(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    text = fields.get("parameters")
    if not text or not text.strip():
        return None
    obj = json_object(text)
    if obj is not None:
        return _from_json_parameters(obj, "png:parameters")
    # a ComfyUI file can carry an A1111-style chunk for other tools to read (image-saver nodes)
    default = "ComfyUI" if fields.get("prompt", "").lstrip().startswith("{") else "AUTOMATIC1111"
    return _from_infotext(text, "png:parameters", default)


def _split_brackets(text: str) -> tuple[str, str]:
    """InvokeAI 1.x/2.x write the negative prompt inside the prompt, in square brackets."""
    parts = _BRACKETED.findall(text)
    if not parts:
        return text.strip(), ""
    negative = ", ".join(p.strip() for p in parts if p.strip())
    positive = ", ".join(p.strip() for p in _BRACKETED.sub(" ", text).split(",") if p.strip())
    return positive, negative


def invokeai(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    meta = json_object(fields.get("invokeai_metadata"))
    if meta is not None:
        model = meta.get("model")
        settings = settings_of({k: v for k, v in meta.items() if k not in ("positive_prompt", "negative_prompt")})
        if isinstance(model, dict) and (name := text_of(model.get("model_name")) or text_of(model.get("name"))):
            settings["model"] = name[:300]
        prompt = text_of(meta.get("positive_prompt"))
        return GenerationMetadata(prompt, text_of(meta.get("negative_prompt")), "InvokeAI", settings,
                                  "png:invokeai_metadata") if prompt else None
    meta = json_object(fields.get("sd-metadata"))
    image = meta.get("image") if meta else None
    if isinstance(image, dict):
        prompts = image.get("prompt")
        first = prompts[0] if isinstance(prompts, list) and prompts and isinstance(prompts[0], dict) else {}
        combined = text_of(prompts) or text_of(first.get("prompt"))
        positive, negative = _split_brackets(combined)
        settings = settings_of({**{k: v for k, v in image.items() if k != "prompt"},
                                **{k: meta[k] for k in ("model_weights", "app_version") if k in meta}})
        return GenerationMetadata(positive, negative, "InvokeAI", settings, "png:sd-metadata") if positive else None
    dream = fields.get("Dream", "")
    match = re.match(r'\s*"(.*)"(.*)$', dream, re.S)
    if match:
        positive, negative = _split_brackets(match.group(1))
        switches = {DREAM_NAMES.get(k, k): v for k, v in _DREAM_SWITCH.findall(match.group(2)[:MAX_SETTINGS_LINE])}
        return GenerationMetadata(positive, negative, "InvokeAI", settings_of(switches), "png:Dream") if positive else None
    return None


def novelai(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    comment = json_object(fields.get("Comment"))
    if fields.get("Software", "").strip() != "NovelAI" and not (comment and "uc" in comment):
        return None
    comment = comment or {}
    caption = comment.get("v4_prompt", {}).get("caption", {}) if isinstance(comment.get("v4_prompt"), dict) else {}
    prompt = (text_of(fields.get("Description")) or text_of(comment.get("prompt"))
              or text_of(caption.get("base_caption") if isinstance(caption, dict) else None))
    if not prompt:
        return None
    settings = settings_of({k: v for k, v in comment.items() if k not in ("prompt", "uc")})
    if text_of(fields.get("Source")):
        settings["model"] = text_of(fields["Source"])[:300]
    return GenerationMetadata(prompt, text_of(comment.get("uc")), "NovelAI", settings, "png:Comment")


def comfyui(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    nodes = json_object(fields.get("prompt"))
    if nodes is not None:
        return parse_graph(nodes, limits, "png:prompt")
    model_tag = fields.get("exif:Model", "")  # ComfyUI's WebP: "prompt:{...}" in IFD0's Model tag
    return parse_graph(json_object(model_tag[7:]), limits, "exif:Model") if model_tag.startswith("prompt:") else None


def diffusiondb(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    prompt = fields.get("prompt", "")
    if not prompt.strip() or prompt.lstrip().startswith(("{", "[")):  # a graph (or a broken one) is not prose
        return None
    settings = settings_of({"seed": fields["seed"]}) if "seed" in fields else {}
    return GenerationMetadata(prompt.strip(), "", "DiffusionDB", settings, "png:prompt")


def user_comment(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    """EXIF UserComment (JPEG, WebP, PNG eXIf): an infotext, or JSON as Fooocus and SwarmUI write it."""
    text = fields.get("exif:UserComment", "")
    obj = json_object(text)
    if obj is not None:
        return _from_json_parameters(obj, "exif:UserComment")
    return _from_infotext(text, "exif:UserComment", "AUTOMATIC1111", need_settings=True) if text else None


def comment_json(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    """Fooocus's JSON in a JPEG comment or a PNG ``Comment`` chunk (NovelAI's, with ``uc``, is read before)."""
    for key in ("jpeg:comment", "Comment"):
        obj = json_object(fields.get(key))
        if obj is not None:
            return _from_json_parameters(obj, "jpeg:comment" if key == "jpeg:comment" else "png:Comment")
    return None


def xmp(fields: Fields, limits: MetadataLimits) -> GenerationMetadata | None:
    if fields.get("xmp:parameters"):
        return _from_infotext(fields["xmp:parameters"], "xmp:parameters", "AUTOMATIC1111")
    tool = fields.get("xmp:CreatorTool", "")
    drawn = json_object(fields.get("xmp:UserComment"))
    if drawn is not None and text_of(drawn.get("c")):
        settings = settings_of({k: v for k, v in drawn.items() if k not in ("c", "uc")})
        return GenerationMetadata(text_of(drawn["c"]), text_of(drawn.get("uc")), tool or "Draw Things", settings,
                                  "xmp:UserComment")
    description = fields.get("xmp:description", "")
    recorded = _from_infotext(description, "xmp:description", "AUTOMATIC1111", need_settings=True)
    if recorded is None and description.strip() and any(w in tool.lower() for w in GENERATOR_WORDS):
        recorded = GenerationMetadata(description.strip(), "", tool.strip()[:100], {}, "xmp:description")
    return recorded


# the order matters: a file with several records is answered from the most specific one
PARSERS: tuple[Parser, ...] = (a1111, invokeai, novelai, comfyui, diffusiondb, user_comment, comment_json, xmp)
