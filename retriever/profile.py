"""Profiles are data: one TOML file names every model, index and knob of the pipeline.

Built-in profiles live in ``retriever/profiles/<name>.toml``. ``--profile`` (or the
``UNPROMPT_PROFILE`` environment variable) takes a built-in name or a path to a file.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from retriever.encoders.minilm import METRIC_MODEL
from retriever.errors import ProfileError
from retriever.stage_configs import (BlendConfig, DescribeConfig, MetadataConfig, NegativeConfig, PriorConfig,
                                     ShrinkConfig)
from retriever.strict import Strict as _Strict, format_validation_error

DEFAULT_PROFILE = "lite"
PROFILE_ENV = "UNPROMPT_PROFILE"


CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]  # torch.compile modes


class ClipSpaceSpec(_Strict):
    """A joint image-text space given by an open_clip model."""

    kind: Literal["open_clip"]
    model: str
    pretrained: str = Field(
        description="open_clip pretrained tag, a path to a local checkpoint, or 'random' (benchmarks only)"
    )
    model_config_file: str | None = Field(
        default=None, description="optional JSON model config to register (custom or tiny models)"
    )
    tag: str | None = Field(
        default=None, description="the open_clip pretrained tag a checkpoint file's weights came from: the tag's image "
                                  "preprocessing (mean, std, interpolation, resize mode) and QuickGELU then apply")
    image_mean: tuple[float, float, float] | None = Field(default=None, description="overrides the tag's mean")
    image_std: tuple[float, float, float] | None = Field(default=None, description="overrides the tag's std")
    image_interpolation: Literal["bicubic", "bilinear", "nearest"] | None = None
    image_resize_mode: Literal["shortest", "longest", "squash"] | None = None
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    compile: CompileMode = Field(default="off", description="torch.compile the image tower with this mode (GPU "
                                                            "serving; the first batch pays the compilation)")


class BridgeSpaceSpec(_Strict):
    """An ImageNet classifier bridged zero-shot into a sentence-embedding space.

    image -> class probabilities -> probability-weighted mean of the text embeddings
    of the class phrases.
    """

    kind: Literal["bridge"]
    classifier: Literal["efficientnet-lite0", "efficientnet-lite2"] = "efficientnet-lite2"
    text_model: str = METRIC_MODEL
    class_template: str = "{}"
    top_classes: int = Field(default=0, ge=0, description="keep only the top N classes (0 = all 1000)")
    temperature: float = Field(default=1.0, gt=0)


SpaceSpec = Annotated[ClipSpaceSpec | BridgeSpaceSpec, Field(discriminator="kind")]


class IndexRef(_Strict):
    name: str = Field(description="directory name under $UNPROMPT_HOME/indexes, or a path")
    manifest: str | None = Field(default=None, description="manifest that builds it (for `unprompt setup`)")
    rerank_vectors: Literal["stored", "on_demand"] = Field(
        default="stored", description="stored: every row's rerank-space vector is built beside the index; on_demand: "
                                      "only the top-k candidates are embedded at query time (and remembered)")


class RetrieveConfig(_Strict):
    space: SpaceSpec
    indexes: list[IndexRef] = Field(min_length=1)
    k: int = Field(default=60, ge=1, description="candidates per kind and index")
    search: Literal["auto", "cpu", "gpu_exact"] = Field(
        default="auto", description="auto: FAISS on the GPU(s) when there are some; gpu_exact: exhaustive float16 "
                                    "torch.mm over the stored vectors on CUDA; cpu: always the CPU")


class RerankConfig(_Strict):
    space: SpaceSpec | Literal["retrieval"] = "retrieval"
    floor: float = Field(default=0.29, description="drop candidates whose cosine is under this")
    keep: int = Field(default=30, ge=1, description="candidates kept per kind after reranking")


class AssembleConfig(_Strict):
    templates: list[str] = Field(min_length=1)
    top_n: int = Field(default=1, ge=1, le=64, description="each template is filled with the top 1..N candidates "
                                                           "of its slots (rank r fills every slot with its r-th best)")
    chain_kinds: list[str] = ["flavour"]
    chain_candidates: int = Field(default=16, ge=0)
    max_chain: int = Field(default=6, ge=0, description="most components the greedy chain adds")
    min_gain: float = Field(default=0.0, ge=0, description="a component must raise the score by more than this")
    stop_without_gain: bool = Field(default=True, description="stop the chain when no component raises the score "
                                                              "(false: add the best one each step, up to max_chain)")
    max_tokens: int = Field(default=77, ge=3, le=77, description="CLIP context length, start/end tokens included")
    lazy_round: int = Field(default=0, ge=0, description="0: every step of the chain scores every component; N: "
                                                         "after the first step, score N at a time in order of "
                                                         "their last gain, until the best gain beats every "
                                                         "unscored one's last gain (lazy greedy)")


Mode = Literal["fast", "classic", "best", "negative"]
MODES: tuple[str, ...] = ("fast", "classic", "best", "negative")


class ModeConfig(_Strict):
    """What a mode changes in the assembly (unset keys keep the profile's own ``[assemble]`` values)."""

    templates: list[str] | None = Field(default=None, min_length=1)
    top_n: int | None = Field(default=None, ge=1, le=64)
    max_chain: int | None = Field(default=None, ge=0)
    stop_without_gain: bool | None = None


DEFAULT_MODES: dict[str, ModeConfig] = {
    "fast": ModeConfig(templates=["{subject}"], max_chain=0),  # retrieval only
    "classic": ModeConfig(templates=["{subject}, {medium} {artist}, {movement}", "{subject}, {medium}", "{subject}"],
                          max_chain=3, stop_without_gain=False),
    # CLIP Interrogator's shape: subject, medium, artist, movement, then the N best flavours (N = --flavours, 3)
    "best": ModeConfig(),  # the profile's full assembly
    "negative": ModeConfig(templates=["{subject}"], max_chain=0),  # the answer is the negative prompt
}


class HeadRef(_Strict):
    """One regressor head: its file, and the image space whose features it reads (the retrieval space unless
    named: heads over different image encoders can be averaged)."""

    path: str = Field(description="head file saved by `unprompt train-regressor` (relative: under $UNPROMPT_HOME)")
    space: SpaceSpec | Literal["retrieval"] = "retrieval"
    weight: float = Field(default=1.0, gt=0, description="weight in the average of the heads' predictions")


class RegressConfig(_Strict):
    kind: Literal["bridge", "head", "none"]
    head: str | None = Field(default=None, description="shorthand for heads = [{ path = ... }]")
    heads: list[HeadRef] = Field(default_factory=list, description="heads whose predictions are averaged")
    require_head: bool = Field(default=False, description="refuse to start without every head; otherwise a missing "
                                                          "head is skipped with a warning")

    @model_validator(mode="after")
    def _head_needs_path(self) -> "RegressConfig":
        if self.head:
            object.__setattr__(self, "heads", [HeadRef(path=self.head), *self.heads])
            object.__setattr__(self, "head", None)
        if self.kind == "head" and not self.heads:
            raise ValueError("regress.kind = 'head' needs regress.head = '<path>' or regress.heads = [{ path = ... }]")
        return self


class Profile(_Strict):
    name: str
    description: str = ""
    metric_model: str = METRIC_MODEL
    retrieve: RetrieveConfig
    rerank: RerankConfig = RerankConfig()
    assemble: AssembleConfig
    regress: RegressConfig
    blend: BlendConfig
    prior: PriorConfig = PriorConfig()
    shrink: ShrinkConfig = ShrinkConfig()
    negative: NegativeConfig = NegativeConfig()
    describe: DescribeConfig = DescribeConfig()
    metadata: MetadataConfig = MetadataConfig()
    modes: dict[Mode, ModeConfig] = Field(default_factory=lambda: dict(DEFAULT_MODES))
    default_mode: Mode = "best"
    source: str = Field(default="", description="where the profile was read from (filled in on load)")

    @model_validator(mode="after")
    def _every_mode(self) -> "Profile":
        missing = [m for m in MODES if m not in self.modes]
        if missing:  # a profile may override some modes; the others keep their defaults
            object.__setattr__(self, "modes", {**{m: DEFAULT_MODES[m] for m in missing}, **self.modes})
        return self

    def assemble_for(self, mode: str | None = None, flavours: int | None = None) -> AssembleConfig:
        """The assembly a mode asks for; ``flavours`` sets how many components the chain may add."""
        override = self.modes.get(mode or self.default_mode)  # type: ignore[arg-type]
        if override is None:
            raise ProfileError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        update = {k: v for k, v in override.model_dump().items() if v is not None}
        if flavours is not None:
            if isinstance(flavours, bool) or not isinstance(flavours, int) or flavours < 0:
                raise ProfileError(f"flavours must be a whole number, 0 or more, not {flavours!r}")
            update["max_chain"] = flavours
        return self.assemble.model_copy(update=update) if update else self.assemble

    @property
    def setup_command(self) -> str:
        """The command that builds this profile's indexes: by name for a built-in profile, else by its file."""
        builtin = Path(str(resources.files("retriever") / "profiles" / f"{self.name}.toml"))
        by = self.name if not self.source or Path(self.source) == builtin else self.source
        return f"unprompt setup --profile {by}"

    @property
    def rerank_space(self) -> ClipSpaceSpec | BridgeSpaceSpec:
        return self.retrieve.space if self.rerank.space == "retrieval" else self.rerank.space


def builtin_profiles() -> list[str]:
    folder = resources.files("retriever") / "profiles"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _profile_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        if not candidate.is_file():
            raise ProfileError(f"profile file not found: {candidate}")
        return candidate
    builtin = resources.files("retriever") / "profiles" / f"{name_or_path}.toml"
    if not builtin.is_file():
        raise ProfileError(
            f"unknown profile {name_or_path!r}; built-in profiles: {', '.join(builtin_profiles())} "
            "(or pass a path to a .toml file)"
        )
    return Path(str(builtin))


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by built-in name or file path; defaults to $UNPROMPT_PROFILE, then 'lite'."""
    chosen = name_or_path or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    path = _profile_path(chosen)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"profile {path} is not a UTF-8 text file") from None
    data.setdefault("name", path.stem)
    data["source"] = str(path)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile {path} is invalid: {format_validation_error(exc)}") from None
