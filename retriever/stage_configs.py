"""The knobs of the later stages (negative prompt, blend, prior, describe), as profile sections.

``retriever.profile`` composes them into a Profile; they live here to keep each module small.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from retriever.strict import Strict as _Strict


class NegativeConfig(_Strict):
    """The negative prompt: the quality negatives people use, then the mediums the image most clearly is not;
    ``mode=negative``: the components of these kinds least like the image (searched with the negated vector)."""

    kinds: list[str] = ["flavour"]
    count: int = Field(default=6, ge=1, le=50)
    quality: str | None = Field(default="pkg:retriever/data/negative_quality.txt",
                                description="a file of quality negatives (pkg:<package>/<file> or a path); none: off")
    quality_terms: int = Field(default=12, ge=0, description="how many of its first terms the negative prompt takes")
    not_mediums: int = Field(default=2, ge=0, description="least likely mediums (medium head) added as negatives")


class BlendConfig(_Strict):
    text_weight: float = Field(ge=0)
    regressor_weight: float = Field(ge=0)

    @model_validator(mode="after")
    def _not_both_zero(self) -> "BlendConfig":
        if self.text_weight + self.regressor_weight <= 0:
            raise ValueError("blend weights must not both be 0")
        return self


class PriorConfig(_Strict):
    """What prompts look like, apart from any image: the mean embedding of the first `top` texts of one
    kind in the index (clip-interrogator's flavours come most-used first). It can pull the assembly
    target and the final blend toward prompt style; both weights 0 (the default) switch it off."""

    kind: str = "flavour"
    top: int = Field(default=200, ge=1)
    texts: str | None = Field(default=None, description="a text file of prompts (pkg:<package>/<file> or a path) "
                                                        "whose mean is the prior instead of the index's texts")
    assemble_weight: float = Field(default=0.0, ge=0, description="added to the image vector as the assembly target")
    style_candidates: int = Field(default=16, ge=0, description="first prior texts the greedy chain may add")
    blend_weight: float = Field(default=0.0, ge=0, description="weight of the prior in the final blend")


class ShrinkSetting(_Strict):
    """One decision's shrinkage: final = normalize(wt * prompt + regressor_weight * regressor + w * centroid),
    w = base + extra * (1 - the subject's confidence); centroid = normalize((1 - medium_centroid - neighbours) *
    pool mean + medium_centroid * the medium head's mixture of per-medium pool means + neighbours * the pool's
    prompts softmax-weighted by cosine to the image's own answer over ``temperature``)."""

    regressor_weight: float = Field(ge=0)
    base: float = Field(ge=0)
    extra: float = Field(ge=0)
    medium_centroid: float = Field(default=0.0, ge=0, le=1)
    neighbours: float = Field(default=0.0, ge=0, le=1)
    temperature: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _a_mixture(self) -> "ShrinkSetting":
        if self.medium_centroid + self.neighbours > 1:
            raise ValueError("shrink: medium_centroid + neighbours must not exceed 1")
        return self


class ShrinkConfig(_Strict):
    """Lite's final embedding shrunk toward a centroid of prompt pool (``centroids``: an .npz of metric-space
    embeddings and their mediums, retriever/data/make_centroids.py), one setting for images the medium decision
    calls photos and one for the rest. Off (no ``centroids``): the prior's blend weight applies."""

    centroids: str | None = None
    photo: ShrinkSetting | None = None
    other: ShrinkSetting | None = None

    @model_validator(mode="after")
    def _both_settings(self) -> "ShrinkConfig":
        if self.centroids and (self.photo is None or self.other is None):
            raise ValueError("shrink.centroids needs both [shrink.photo] and [shrink.other]")
        return self


GENERIC_PARENTS = ["entity", "physical entity", "object", "whole", "artifact", "living thing", "organism",
                   "instrumentality", "chordate", "vertebrate", "placental", "matter", "solid", "substance",
                   "abstraction", "covering", "structure", "device", "implement", "commodity", "equipment",
                   "furnishing", "container", "conveyance", "invertebrate", "diapsid", "craft", "material",
                   "part", "natural object", "geological formation", "protective covering", "causal agent", "person"]
GRAPHIC_CLASSES = ["web site", "comic book", "crossword puzzle", "book jacket", "menu", "jigsaw puzzle", "envelope",
                   "packet", "binder", "street sign", "scoreboard", "screen", "monitor", "television", "oscilloscope"]


MEDIUM_PHRASES = {"photo": "a photo", "painting": "a painting", "illustration": "an illustration",
                  "3D render": "a 3D render", "anime": "an anime illustration", "digital art": "concept art"}
SCENE_PARENTS = ["geological formation", "building", "place of business", "housing", "bridge", "area", "residence",
                 "establishment"]


class LookConfig(_Strict):
    """Colour and lighting words from the pixels (retriever/stages/look.py); chosen on the dev halves."""

    grey_saturation: float = Field(default=0.08, ge=0, le=1, description="under this mean saturation: black and white")
    muted_saturation: float = Field(default=0.2, ge=0, le=1)
    vibrant_saturation: float = Field(default=0.45, ge=0, le=1)
    hue_share: float = Field(default=0.25, gt=0, le=1, description="share of colourful pixels a named hue needs")
    dark_brightness: float = Field(default=0.3, ge=0, le=1)
    bright_brightness: float = Field(default=0.7, ge=0, le=1)
    dramatic_contrast: float = Field(default=0.28, ge=0, le=1)
    soft_contrast: float = Field(default=0.12, ge=0, le=1)
    warm_share: float = Field(default=0.75, gt=0.5, le=1, description="share of warm hues for warm (cold below 1-x)")


class DescribeConfig(_Strict):
    """The lite describe stage (retriever/stages/describe.py): a subject named only as far as the classifier
    is sure, a medium decided from the image, cleaner candidates. Needs a classifier (bridge) retrieval space."""

    enabled: bool = False
    confident: float = Field(default=0.5, gt=0, le=1, description="top-class probability to name the class")
    parent_mass: float = Field(default=0.5, gt=0, le=1, description="summed probability to name a WordNet parent")
    generic: list[str] = Field(default_factory=lambda: list(GENERIC_PARENTS),
                               description="WordNet parents too vague to name")
    graphic_classes: list[str] = Field(default_factory=lambda: list(GRAPHIC_CLASSES))
    graphic_mass: float = Field(default=0.35, description="probability on graphic classes: painting or illustration")
    illustration_flat: float = Field(default=0.35, description="share of perfectly flat pixels: an illustration")
    painting_noise: float = Field(default=12.0, description="a graphic image this noisy is a painting")
    render_noise: float = Field(default=1.0, description="a colourful image this smooth is a 3D render")
    render_saturation: float = 0.2
    grey_saturation: float = Field(default=0.06, description="under this mean saturation a photo is black and white")
    medium_head: str | None = Field(default=None, description="a medium head (pkg:<package>/<file> or a path): "
                                                              "the medium from the classifier's features")
    medium_phrases: dict[str, str] = Field(default_factory=lambda: dict(MEDIUM_PHRASES))
    scene_parents: list[str] = Field(default_factory=lambda: list(SCENE_PARENTS),
                                     description="ImageNet classes under these WordNet parents are scenes")
    scene_mass: float = Field(default=0.05, ge=0, le=1, description="probability a scene hint needs (no subject)")
    style_terms: int = Field(default=6, ge=0, description="most-used prior style components every prompt ends with")
    look: LookConfig = Field(default_factory=LookConfig)
    photo_drop_kinds: list[str] = ["artist", "movement"]
    jargon_flavours: int = Field(default=500, ge=0, description="words of the first N flavours count as real words")
    uncertainty_prior_weight: float = Field(default=0.0, ge=0, description="the prior's blend weight grows by this "
                                                                            "times (1 - the subject's confidence)")


class MetadataConfig(_Strict):
    """The recorded-prompt step (retriever/stages/recorded.py): an image whose file records the prompt that
    made it (A1111 `parameters`, a ComfyUI graph, InvokeAI, NovelAI, EXIF, XMP ...) is answered with that
    prompt; the interrogated one stays the first alternative. Per call: `--no-metadata`, `metadata=false`."""

    enabled: bool = True
