"""Exact context truncation for CLIP text towers.

open_clip's ``encode_text`` always runs the full 77-token context. Under a causal attention
mask, a position only attends to positions before it, so every token after the end-of-text
(EOT) token can be dropped without changing the output at the EOT position, which is what
argmax pooling takes. Embedding each batch at its own longest EOT position, after sorting
texts by length into buckets, gives the same embeddings for a fraction of the work.

The fast path is used only for towers with a causal mask and argmax (EOT) pooling and no
appended class token or padding mask; every other tower falls back to ``encode_text``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn


def _tower(model: nn.Module) -> nn.Module | None:
    """The module holding token_embedding/positional_embedding/transformer/ln_final/attn_mask."""
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        return model  # open_clip CLIP: the text tower lives on the model itself
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "transformer"):
        return text  # CustomTextCLIP with open_clip's TextTransformer
    return None


def _is_causal(mask: torch.Tensor | None) -> bool:
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isinf(mask[upper]).all() and (mask[upper] < 0).all() and (mask[~upper] == 0).all())


def truncation_supported(model: nn.Module) -> bool:
    tower = _tower(model)
    if tower is None:
        return False
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
    if pool != "argmax":
        return False
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        return False
    return _is_causal(getattr(tower, "attn_mask", None))


def eot_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens up to and including EOT (the highest id in CLIP's vocabulary, hence argmax pooling)."""
    return tokens.argmax(dim=-1) + 1


@torch.inference_mode()
def encode_truncated(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the first max-EOT positions only (unnormalised)."""
    tower = _tower(model)
    assert tower is not None
    length = int(eot_lengths(tokens).max())
    t = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(t).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)]
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


def length_buckets(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Indices sorted by length, cut into batches: each batch pads only to its own longest text."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
