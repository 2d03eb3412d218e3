"""The recorded prompt: when an image's file records the prompt that made it, that prompt is the answer.

The front of the pipeline turns each input (a path, a caller's PIL image, or an :class:`ImageWithMetadata`
that ``feed`` and the service admitted from the bytes they read) into an image and its record
(``retriever.metadata``, read from the same bytes). After the stages have run, :class:`RecordedPrompt` puts
the record in front: the prompt, its negative prompt, its settings and the generator, with the final
embedding the metric's embedding of the recorded prompt. The interrogated prompt stays the first
alternative (and is kept as ``interrogated_prompt``). Images without a record keep their interrogated answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from retriever.images import ImageLimits, admit_image, read_image_file
from retriever.metadata import GenerationMetadata, image_metadata, read_metadata

if TYPE_CHECKING:
    from retriever.pipeline import Interrogation


@dataclass(frozen=True)
class ImageWithMetadata:
    """An admitted RGB image and what its file records (None: nothing, or not asked for)."""

    image: Image.Image
    recorded: GenerationMetadata | None = None


def prepare(item: "ImageWithMetadata | Image.Image | str | Path", metadata: bool,
            limits: ImageLimits = ImageLimits()) -> ImageWithMetadata:
    """One pipeline input: a path is read once (admission and metadata share the bytes); a caller's PIL image
    keeps the metadata Pillow read with it; ``metadata=False`` drops any record."""
    if isinstance(item, ImageWithMetadata):
        return item if metadata or item.recorded is None else ImageWithMetadata(item.image)
    if isinstance(item, Image.Image):
        rgb = item if item.mode == "RGB" else item.convert("RGB")
        return ImageWithMetadata(rgb, image_metadata(item) if metadata else None)
    data = read_image_file(item, limits)
    return ImageWithMetadata(admit_image(data, limits, name=str(item)), read_metadata(data) if metadata else None)


class RecordedPrompt:
    """Puts each image's recorded prompt in front of its interrogated one (one metric call per batch)."""

    def __init__(self, metric_embed: Callable[[Sequence[str]], np.ndarray]) -> None:
        self.metric_embed = metric_embed

    def apply(self, results: list["Interrogation"], records: Sequence[GenerationMetadata | None], mode: str) -> None:
        found = [(r, rec) for r, rec in zip(results, records) if rec is not None]
        if not found:
            return
        vectors = self.metric_embed([rec.prompt for _, rec in found])
        for (result, rec), vector in zip(found, vectors):
            _answer_recorded(result, rec, vector / max(float(np.linalg.norm(vector)), 1e-12), mode)


def _answer_recorded(result: "Interrogation", rec: GenerationMetadata, vector: np.ndarray, mode: str) -> None:
    result.interrogated_prompt = result.prompt  # still the best of result.prompts: the first alternative
    result.negative_prompt = rec.negative_prompt or result.negative_prompt
    result.prompt = result.negative_prompt if mode == "negative" else rec.prompt
    result.stage_embeddings["metadata"] = vector
    result.embedding = vector
    result.source, result.generator, result.settings, result.recorded_in = ("metadata", rec.generator,
                                                                            dict(rec.settings), rec.found_in)
