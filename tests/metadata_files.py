"""Image files that record their prompt, each written the way its tool writes it (Pillow's PngInfo, EXIF and
XMP writers; the formats as documented by the tools and read by receyuki/stable-diffusion-prompt-reader and
d3x-at/sd-parsers). Small images: the test is the metadata."""

from __future__ import annotations

import io
import json
import struct
import zlib
from functools import lru_cache

from PIL import Image, PngImagePlugin

A1111 = ("a steampunk hummingbird made of brass gears, intricate, highly detailed\n"
         "Negative prompt: blurry, lowres,\nwatermark\n"
         'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592, Size: 512x512, '
         'Model hash: 0123abcd, Model: dreamshaper_8, Lora hashes: "gears: 1a2b, brass: 3c4d", Version: v1.10.1')
COMFY_POSITIVE = "a fantasy city floating above the clouds, golden hour"
COMFY_NEGATIVE = "text, watermark, ugly"


def picture(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (180, 90, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def png(texts: dict[str, str] | None = None, itxt: dict[str, str] | None = None, image: Image.Image | None = None,
        extra_chunks: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A PNG with tEXt chunks (``texts``), iTXt chunks (``itxt``) and raw chunks inserted after IHDR."""
    info = PngImagePlugin.PngInfo()
    for key, value in (texts or {}).items():
        info.add_text(key, value)
    for key, value in (itxt or {}).items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    (image or picture()).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    at = 8 + 25  # signature + IHDR
    return data[:at] + b"".join(chunk(kind, body) for kind, body in extra_chunks) + data[at:]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_exif(comment: bytes, fmt: str = "JPEG", image: Image.Image | None = None, **ifd0: str) -> bytes:
    """A JPEG or WebP whose EXIF UserComment holds ``comment`` (its 8-byte character code included)."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    for tag, value in ifd0.items():
        exif[int(tag, 16)] = value
    buf = io.BytesIO()
    (image or picture()).save(buf, fmt, exif=exif, quality=90)
    return buf.getvalue()


def with_xmp(packet: str, fmt: str = "JPEG", image: Image.Image | None = None) -> bytes:
    buf = io.BytesIO()
    (image or picture()).save(buf, fmt, xmp=packet.encode("utf-8"), quality=90)
    return buf.getvalue()


def xmp_packet(body: str, attributes: str = "") -> str:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
            f'xmlns:sd="https://example.org/sd/1.0/" {attributes}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
            '<?xpacket end="w"?>')


def comfy_graph() -> dict:
    """A ComfyUI API graph in which the negative text node comes first (lowest id, first in the file), the
    positive reaches the sampler through a ControlNet node and a ConditioningCombine, its text through a
    string node, and a stray text node is wired to nothing."""
    return {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": COMFY_NEGATIVE, "clip": ["4", 1]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "an unused draft prompt", "clip": ["4", 1]}},
        "3": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": COMFY_POSITIVE}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl_base_1.0.safetensors"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": ["3", 0], "clip": ["4", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "volumetric light", "clip": ["4", 1]}},
        "7": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["5", 0], "conditioning_2": ["6", 0]}},
        "8": {"class_type": "ControlNetApplyAdvanced",
              "inputs": {"positive": ["7", 0], "negative": ["1", 0], "control_net": ["12", 0], "image": ["13", 0],
                         "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
        "9": {"class_type": "KSampler",
              "inputs": {"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0, "model": ["4", 0], "positive": ["8", 0], "negative": ["8", 1],
                         "latent_image": ["10", 0]}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["4", 2]}},
        "12": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}},
        "13": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "14": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["11", 0]}},
    }


def comfy_png(graph: dict | None = None, image: Image.Image | None = None) -> bytes:
    return png({"prompt": json.dumps(graph or comfy_graph()), "workflow": json.dumps({"nodes": [], "links": []})},
               image=image)


@lru_cache(maxsize=4)
def deflated(inflated_mib: float) -> bytes:
    """A zlib stream that inflates to ``inflated_mib`` MiB (about 1000 times its own size)."""
    packer = zlib.compressobj(9)
    left, parts = int(inflated_mib * (1 << 20)), []
    while left > 0:
        parts.append(packer.compress(b"a" * min(left, 1 << 20)))
        left -= 1 << 20
    return b"".join(parts) + packer.flush()


def many_text_chunks(image: Image.Image | None = None, count: int = 30) -> bytes:
    """A PNG with ``count`` zTXt chunks, each just under Pillow's 1 MiB limit per chunk (so the image itself is
    still admitted): 30 MiB of text under keywords that record no prompt."""
    body = deflated(1 - 1 / (1 << 20))  # one byte under 1 MiB
    keys = ("Title", "Source", "Software", "seed")
    return png(image=image, extra_chunks=[(b"zTXt", keys[i % 4].encode() + b"\x00\x00" + body) for i in range(count)])


def ztxt_bomb(inflated_mib: int = 32, keyword: bytes = b"parameters", image: Image.Image | None = None) -> bytes:
    """A PNG whose zTXt chunk inflates to ``inflated_mib`` MiB."""
    return png(image=image, extra_chunks=[(b"zTXt", keyword + b"\x00\x00" + deflated(inflated_mib))])


def cyclic_graph(with_text: bool) -> dict:
    """The sampler's positive input runs into a loop of conditioning nodes (and, optionally, a text node)."""
    graph = {
        "1": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["3", 0]}},
        "2": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["1", 0], "conditioning_from": ["3", 0]}},
        "3": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["1", 0], "width": 64}},
        "4": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7, "positive": ["1", 0],
                                                    "negative": ["2", 0], "model": ["4", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0]}},
    }
    if with_text:
        graph["3"]["inputs"]["conditioning"] = ["6", 0]
        graph["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse in a storm", "clip": ["6", 0]}}
    return graph
