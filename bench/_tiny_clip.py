"""A small random-weight open_clip model for benchmarks, saved and loaded through the checkpoint path."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_clip_spec(root: Path, name: str = "unprompt-bench-clip", embed_dim: int = 384, width: int = 128,
                   layers: int = 2, seed: int = 0, vision: dict | None = None):
    import open_clip
    import torch

    from retriever.profile import ClipSpaceSpec

    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{name}.json"
    checkpoint = root / f"{name}.pt"
    config.write_text(json.dumps({
        "embed_dim": embed_dim,
        "vision_cfg": vision or {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 4, "layers": layers},
    }))
    if not checkpoint.exists():
        open_clip.add_model_config(config)
        torch.manual_seed(seed)
        torch.save({"state_dict": open_clip.create_model(name).state_dict()}, checkpoint)
    return ClipSpaceSpec(kind="open_clip", model=name, pretrained=str(checkpoint), model_config_file=str(config))
