"""Encoders behind small interfaces, and the one factory that builds them from a profile spec."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from retriever._compat import ensure_torchvision_importable
from retriever.encoders.base import ImageEncoder, Space, TextEncoder, l2_normalize

if TYPE_CHECKING:
    from retriever.profile import BridgeSpaceSpec, ClipSpaceSpec

__all__ = ["ImageEncoder", "Space", "TextEncoder", "create_space", "l2_normalize", "text_model_id", "text_tower"]


@lru_cache(maxsize=8)
def create_space(spec: ClipSpaceSpec | BridgeSpaceSpec) -> Space:
    """Build (once per process and spec) the joint image-text space a profile names."""
    from retriever.profile import ClipSpaceSpec
    from retriever.threads import apply_threads

    if isinstance(spec, ClipSpaceSpec):
        from retriever.encoders.clip import ClipSpace

        apply_threads()  # before the first model call: torch's pools sized to the CPUs this process may use
        ensure_torchvision_importable()  # open_clip imports torchvision
        return ClipSpace(spec)
    from retriever.encoders.bridge import BridgeSpace
    from retriever.encoders.efficientnet import efficientnet_classifier
    from retriever.encoders.minilm import sentence_encoder

    # each model applies the thread plan itself: to torch's pools, or to its ONNX Runtime session
    return BridgeSpace(
        efficientnet_classifier(spec.classifier),
        sentence_encoder(spec.text_model),
        class_template=spec.class_template,
        top_classes=spec.top_classes,
        temperature=spec.temperature,
    )


def text_model_id(spec: ClipSpaceSpec | BridgeSpaceSpec) -> str:
    """The ``text_model_id`` the space of this spec will have, known without loading any model."""
    from retriever.profile import ClipSpaceSpec

    if isinstance(spec, ClipSpaceSpec):
        from retriever.encoders.clip import clip_model_id

        return clip_model_id(spec)
    from retriever.encoders.minilm import sentence_model_id

    return sentence_model_id(spec.text_model)


def text_tower(space: Space) -> TextEncoder:
    """The encoder that embeds index texts for this space (its model_id is the space's text_model_id)."""
    tower = getattr(space, "text", space)
    assert tower.model_id == space.text_model_id
    return tower


def text_tower_for(spec: ClipSpaceSpec | BridgeSpaceSpec) -> TextEncoder:
    """Picklable entry point (module-level) for workers that build their own text encoder from a spec."""
    return text_tower(create_space(spec))
