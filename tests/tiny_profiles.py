"""A built-in profile with tiny random CLIPs swapped in through the same keys, and small local manifests: how the
production profiles (kaggle, sd15, sd2, sdxl) run end to end in tests."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

CAPTIONS = [
    "a photo of a cat sitting on a windowsill", "a cup of coffee on a wooden table", "a red sports car on a road",
    "a castle on a hill at sunset", "portrait of an old man with a beard", "a bowl of fruit, still life",
    "a spaceship flying over a city", "a dog running on the beach", "a forest in autumn with fog",
    "a robot playing chess", "an astronaut riding a horse", "a lighthouse in a storm",
]
SPACE = re.compile(r'model = "([^"]+)", pretrained = "([^"]+)"')
# production manifest -> the small local one that stands in for it
MANIFESTS = {"captions.toml": "captions.toml", "diffusiondb-2m.toml": "captions.toml",
             "components-1.6m.toml": "components.toml"}


def tiny_profile(tmp_path: Path, tiny, name: str = "kaggle", limits: dict[str, int] | None = None) -> Path:
    """``retriever/profiles/<name>.toml`` with its first CLIP (retrieval) replaced by unprompt-tiny-a, its second
    (rerank) by unprompt-tiny-b, its manifests by small local ones (``limits``: rows kept of each component
    source), and no rerank floor (random weights)."""
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    (tmp_path / "captions.toml").write_text(
        '[[sources]]\nname = "captions"\npath = "captions.txt"\nkind = "caption"\n'
    )
    components = (REPO / "data_manifests" / "components.toml").read_text()
    for source, limit in (limits or {"flavours": 300, "artists": 200}).items():
        components = components.replace(f'name = "{source}"\n', f'name = "{source}"\nlimit = {limit}\n')
    (tmp_path / "components.toml").write_text(components)
    text = (REPO / "retriever" / "profiles" / f"{name}.toml").read_text()
    models = list(dict.fromkeys(m.group(0) for m in SPACE.finditer(text)))  # retrieval first, then rerank
    assert 1 <= len(models) <= 2, models
    for original, tiny_name in zip(models, ("unprompt-tiny-a", "unprompt-tiny-b")):
        t = tiny[tiny_name]
        # the same keys the production profile uses: model, pretrained (+ a config for models open_clip doesn't ship)
        text = text.replace(original, f'model = "{tiny_name}", pretrained = "{t["checkpoint"]}", '
                                      f'model_config_file = "{t["config"]}"')
    for production, local in MANIFESTS.items():
        text = text.replace(f'manifest = "{production}"', f'manifest = "{tmp_path / local}"')
    text = re.sub(r"floor = [0-9.]+", "floor = -1.0", text)  # random tiny models: keep every candidate
    assert not any(m in text for m in models) and all(f'"{m}"' not in text for m in MANIFESTS)
    path = tmp_path / f"{name}-tiny.toml"
    path.write_text(text)
    return path
