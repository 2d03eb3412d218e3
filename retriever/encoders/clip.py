"""CLIP through open_clip: a model name plus a pretrained tag, or a local checkpoint path."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from retriever.device import inference, maybe_compile, pick_device, pick_dtype, to_device
from retriever.encoders.base import l2_normalize
from retriever.encoders.clip_tokens import PieceTokenizer
from retriever.encoders.clip_text import encode_truncated, eot_lengths, length_buckets, truncation_supported
from retriever.errors import MissingWeightsError, ProfileError
from retriever.profile import ClipSpaceSpec

HF_HOST = "huggingface.co"
TOKENIZE_GROUP = 4096  # texts tokenised ahead while the model embeds the previous group
RANDOM = "random"  # pretrained = "random": random initialisation, for throughput benchmarks only


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or Path(value).suffix in {".bin", ".pt", ".pth", ".safetensors"}


def _host_reachable(host: str) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _how_to_provide(spec: ClipSpaceSpec) -> str:
    return (
        f"Download the checkpoint for {spec.model} ({spec.pretrained}) on a machine with access, then set "
        f'`pretrained = "/path/to/open_clip_pytorch_model.bin"` and `tag = "{spec.pretrained}"` (its preprocessing) '
        "for this model in a copy of the profile and pass it with `--profile ./my-profile.toml` (or place it in "
        "the Hugging Face cache, HF_HOME)."
    )


def _tag_cfg(model: str, tag: str) -> dict:
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(model)
        raise ProfileError(
            f"open_clip has no pretrained tag {tag!r} for {model}; "
            f"known tags: {', '.join(tags) or 'none'} (or give a checkpoint path)"
        )
    return cfg


def load_settings(spec: ClipSpaceSpec) -> dict:
    """Keyword arguments of open_clip's ``create_model_and_transforms`` that a pretrained tag implies.

    open_clip applies a tag's preprocessing (mean, std, interpolation, resize mode: ``pretrained.py``) only when
    it downloads the weights itself; given a file path it falls back to the model config's defaults, and it
    never switches on QuickGELU for a tag trained with it (it warns). Here the tag (``pretrained`` when it is
    one, else ``tag``, the tag a checkpoint file came from) decides both, and the profile's explicit
    ``image_*`` fields override it."""
    import open_clip

    tag = spec.tag or (None if _looks_like_path(spec.pretrained) or spec.pretrained == RANDOM else spec.pretrained)
    if spec.tag and not _looks_like_path(spec.pretrained) and spec.pretrained not in (RANDOM, spec.tag):
        raise ProfileError(f"{spec.model}: `tag = {spec.tag!r}` contradicts `pretrained = {spec.pretrained!r}`; "
                           "give `tag` only with a checkpoint path")
    cfg = _tag_cfg(spec.model, tag) if tag else {}
    settings = {"image_mean": spec.image_mean or cfg.get("mean"), "image_std": spec.image_std or cfg.get("std"),
                "image_interpolation": spec.image_interpolation or cfg.get("interpolation"),
                "image_resize_mode": spec.image_resize_mode or cfg.get("resize_mode")}
    settings = {k: v for k, v in settings.items() if v is not None}
    model_quick_gelu = bool((open_clip.get_model_config(spec.model) or {}).get("quick_gelu", False))
    if cfg.get("quick_gelu", False) and not model_quick_gelu:
        settings["force_quick_gelu"] = True
    return settings


def resolve_checkpoint(spec: ClipSpaceSpec) -> str | None:
    """Return a local file holding the weights, downloading when the hub can be reached.

    Fails fast with MissingWeightsError instead of waiting on the hub client's retries.
    """
    from open_clip import pretrained as oc_pretrained

    if spec.pretrained == RANDOM:
        return None
    if _looks_like_path(spec.pretrained):
        path = Path(spec.pretrained).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"checkpoint file for open_clip model {spec.model} not found: {path}. "
                "Point `pretrained` at an existing .bin/.pt/.safetensors file."
            )
        return str(path)
    cfg = _tag_cfg(spec.model, spec.pretrained)
    hub_id = cfg.get("hf_hub", "")
    host = HF_HOST if hub_id else urlparse(cfg.get("url", "")).hostname or HF_HOST
    cached = _cached_checkpoint(cfg)
    if cached:
        return cached
    if not _host_reachable(host):
        raise MissingWeightsError(
            f"weights for open_clip model {spec.model} (pretrained {spec.pretrained!r}) are not available: "
            f"{host} cannot be reached and they are not in the local cache. {_how_to_provide(spec)}"
        )
    try:
        return oc_pretrained.download_pretrained(cfg)
    except Exception as exc:  # network errors come in many types
        raise MissingWeightsError(
            f"could not download weights for open_clip model {spec.model} (pretrained {spec.pretrained!r}): "
            f"{exc.__class__.__name__}. {_how_to_provide(spec)}"
        ) from None


def _cached_checkpoint(cfg: dict) -> str | None:
    """A checkpoint already on disk (Hugging Face cache or open_clip's URL cache), if any."""
    hub_id = cfg.get("hf_hub", "")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        parts = hub_id.strip("/").split("/")
        repo_id = "/".join(parts[:2])
        names = [parts[2]] if len(parts) > 2 else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename)
            if isinstance(found, str):
                return found
        return None
    url = cfg.get("url", "")
    target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    return str(target) if url and target.is_file() else None


def clip_model_id(spec: ClipSpaceSpec) -> str:
    """open_clip:<model>:<pretrained tag>, or for a checkpoint file the hash of its content (not its path:
    the same weights at a new path keep their indexes, caches and heads; other weights at the same path do not)."""
    tag = f"sha256-{weights_digest(Path(spec.pretrained).expanduser())}" if _looks_like_path(spec.pretrained) \
        else spec.pretrained
    return f"open_clip:{spec.model}:{tag}"


def weights_digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a checkpoint, remembered by (path, size, mtime): a start does not reread it."""
    import json

    from retriever.files import write_bytes_atomic
    from retriever.index_files import sha256_file
    from retriever.paths import home

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = home() / "cache" / "weights-sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = sha256_file(path)[:16]
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(memo_file, json.dumps(memo, indent=1).encode())
    return memo[key]


class ClipSpace:
    """Image and text towers of one open_clip model."""

    def __init__(self, spec: ClipSpaceSpec, device: torch.device | None = None, batch_size: int = 0) -> None:
        import open_clip

        if spec.model_config_file:
            config = Path(spec.model_config_file).expanduser()
            if not config.is_file():
                raise ProfileError(f"model_config_file not found: {config}")
            open_clip.add_model_config(config)
        if spec.model not in open_clip.list_models():
            raise ProfileError(f"open_clip knows no model named {spec.model!r}")
        checkpoint = resolve_checkpoint(spec)
        settings = load_settings(spec)
        self.device = device or pick_device()
        self.dtype = pick_dtype(self.device, spec.precision)
        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=checkpoint, precision=precision, device=self.device, **settings
            )
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise MissingWeightsError(
                f"could not load checkpoint {checkpoint} into {spec.model}: {str(exc).splitlines()[0][:300]}"
            ) from None
        self.model = model.eval()
        self.encode_image_fn = maybe_compile(self.model.encode_image, spec.compile)
        self.preprocess = preprocess
        self.tokenizer = PieceTokenizer(open_clip.get_tokenizer(spec.model))
        self.spec = spec
        self.model_id = clip_model_id(spec)
        self.text_model_id = self.model_id
        self.batch_size = batch_size  # 0: choose from free memory
        tower = getattr(self.model, "text", self.model)
        self.text_width = int(getattr(getattr(tower, "transformer", None), "width", 512))
        self.truncate = truncation_supported(self.model)
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["a"]).to(self.device))
        self.dim = int(probe.shape[-1])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.preprocess(im) for im in images])
        with inference(self.device, self.dtype):
            out = self.encode_image_fn(to_device(batch, self.device, self.dtype))
        return l2_normalize(out.float().cpu().numpy())

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors. Tokenising the next group overlaps the model's work on this one."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        groups = [texts[i : i + TOKENIZE_GROUP] for i in range(0, len(texts), TOKENIZE_GROUP)]
        if len(groups) == 1:
            return self.encode_tokens(self.tokenizer(groups[0]))
        out = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            upcoming = pool.submit(self.tokenizer, groups[0])
            for i in range(len(groups)):
                tokens = upcoming.result()
                if i + 1 < len(groups):
                    upcoming = pool.submit(self.tokenizer, groups[i + 1])
                out.append(self.encode_tokens(tokens))
        return np.concatenate(out)

    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Exact context truncation with length buckets where the tower allows it, else encode_text."""
        batch_size = self.batch_size or auto_batch_size(self.device, self.text_width)
        with inference(self.device, self.dtype):
            if not self.truncate:
                out = [self.model.encode_text(to_device(tokens[s : s + batch_size], self.device)).float().cpu()
                       for s in range(0, len(tokens), batch_size)]
                return l2_normalize(torch.cat(out).numpy())
            result = np.zeros((len(tokens), self.dim), dtype=np.float32)
            for batch in length_buckets(eot_lengths(tokens).numpy(), batch_size):
                chunk = to_device(tokens[torch.from_numpy(batch)], self.device)
                result[batch] = encode_truncated(self.model, chunk).float().cpu().numpy()
        return l2_normalize(result)


def auto_batch_size(device: torch.device, width: int) -> int:
    """CPU: 256. GPU: as many texts as half the free memory holds at full context, within [64, 8192]."""
    if device.type != "cuda":
        return 256
    free, _ = torch.cuda.mem_get_info(device)
    per_text = 77 * width * 2 * 24  # fp16 activations of a block, with generous headroom
    return int(max(64, min(8192, free * 0.5 // per_text)))
