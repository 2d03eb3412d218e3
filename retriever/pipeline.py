"""The interrogator: image -> features -> candidates -> prompt -> embedding, as a profile says."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from retriever.encoders import create_space
from retriever.encoders.base import Space
from retriever.encoders.minilm import sentence_encoder
from retriever.errors import IndexIntegrityError, ProfileError
from retriever.index import TextIndex
from retriever.index_files import RECORD_NAME, read_record
from retriever.paths import index_dir
from retriever.profile import BridgeSpaceSpec, Mode, Profile, load_profile
from retriever.stages.assemble import AssembledPrompt, Assembler, ScoredPrompt
from retriever.stages.blend import FinalEmbedding, PriorBlend
from retriever.stages.candidates import Candidate, Candidates, best_of_all, best_subject
from retriever.stages.describe import Describer, Description
from retriever.stages.negative import NegativePrompt
from retriever.stages.prior import Prior
from retriever.stages.recorded import ImageWithMetadata, RecordedPrompt, prepare
from retriever.stages.regress import BridgeRegressor, Regressor, load_regressor
from retriever.stages.rerank import Reranker, TextEmbeddings
from retriever.stages.retrieve import Retriever
from retriever.stages.shrink import Shrink

ALTERNATIVES = 5
ImageLike = Image.Image | str | Path | ImageWithMetadata


@dataclass
class Interrogation:
    prompt: str
    retrieval_prompt: str  # the best caption or subject alone: the retrieval-only answer
    embedding: np.ndarray  # final, 384-d, unit length
    stage_embeddings: dict[str, np.ndarray]  # retrieval | template | prompt | regressor, each in metric space
    candidates: list[Candidate]
    prompts: list[ScoredPrompt]
    negative_prompt: str = ""
    mode: str = "best"
    template_candidates: int = 0  # filled templates scored before the chain
    index_ids: dict[str, str] = field(default_factory=dict)  # index -> build id that answered
    timings_ms: dict[str, float] = field(default_factory=dict)
    source: str = "interrogation"  # or "metadata": the prompt the file records (retriever.stages.recorded)
    generator: str | None = None  # the tool that recorded it
    settings: dict = field(default_factory=dict)  # the recorded settings (steps, sampler, seed, model ...)
    recorded_in: str | None = None  # where in the file: png:parameters, exif:UserComment ...
    interrogated_prompt: str | None = None  # with a recorded prompt: what interrogation answered

    @property
    def alternatives(self) -> list[str]:
        """The next best assembled prompts (up to 5), best first, each a distinct prompt: one whose components
        are those of the answer or of a better alternative, or a subset or superset of them (the same prompt
        with a flavour more or less), is left out."""
        kept = [_components(self.prompt)]
        out: list[str] = []
        for p in self.prompts:
            parts = _components(p.text)
            if parts and not any(parts <= k or k <= parts for k in kept):
                kept.append(parts)
                out.append(p.text)
                if len(out) == ALTERNATIVES:
                    break
        return out

    def as_dict(self, embeddings: bool = True, top: int = 20) -> dict:
        out = {
            "prompt": self.prompt,
            "mode": self.mode,
            "alternatives": self.alternatives,
            "negative_prompt": self.negative_prompt,
            "retrieval_prompt": self.retrieval_prompt,
            "candidates": [c.as_dict() for c in self.candidates[:top]],
            "prompt_candidates": [{"text": p.text, "score": round(p.score, 6)} for p in self.prompts[:top]],
            "template_candidates": self.template_candidates,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "source": self.source,
            "generator": self.generator,
        }
        if self.source == "metadata":
            out.update(settings=self.settings, recorded_in=self.recorded_in, interrogated_prompt=self.interrogated_prompt)
        if embeddings:
            out["embedding"] = [round(float(x), 7) for x in self.embedding]
            out["stage_embeddings"] = {k: [round(float(x), 7) for x in v] for k, v in self.stage_embeddings.items()}
        return out


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t) * 1000


def require_indexes(profile: Profile) -> None:
    """Every index the profile names has a build record, or an error that names the setup command that builds it."""
    for ref in profile.retrieve.indexes:
        if not (index_dir(ref.name) / RECORD_NAME).is_file():
            raise IndexIntegrityError(
                f"profile {profile.name} needs index {ref.name}, and there is none at {index_dir(ref.name)}: build it "
                f"with `{profile.setup_command}` (add --dry-run to see what it takes first)")
        read_record(index_dir(ref.name))


def load_indexes(profile: Profile, space: Space, checksums: bool = False) -> dict[str, TextIndex]:
    require_indexes(profile)
    return {ref.name: load_index(profile, ref.name, space, checksums) for ref in profile.retrieve.indexes}


def load_index(profile: Profile, name: str, space: Space, checksums: bool = False) -> TextIndex:
    """One of the profile's indexes, placed for search, refused unless built by the profile's text tower."""
    index = TextIndex.load(index_dir(name), checksums=checksums).place(profile.retrieve.search)
    if index.record.model_id != space.text_model_id:
        raise IndexIntegrityError(
            f"index {name} was built with {index.record.model_id}, but profile {profile.name} retrieves "
            f"with {space.text_model_id}; rebuild it with `unprompt build-index --profile {profile.name}`"
        )
    return index


class Interrogator:
    def __init__(self, profile: Profile, retrieval: Space, rerank: Space, indexes: dict[str, TextIndex],
                 regressor: Regressor | None) -> None:
        self.profile = profile
        self.retrieval_space = retrieval
        self.rerank_space = rerank
        self.indexes = indexes
        self.metric = sentence_encoder(profile.metric_model)
        self.retriever = Retriever(indexes, profile.retrieve.k)
        self.text_embeddings = TextEmbeddings(rerank, indexes)
        self.reranker = Reranker(self.text_embeddings, profile.rerank.floor, profile.rerank.keep)
        self.negative = NegativePrompt(indexes, profile.negative)
        self.regressor = regressor
        self._rerank_is_metric = rerank.text_model_id == self.metric.model_id
        self.prior = Prior.build(profile.prior, indexes, self.text_embeddings,
                                 None if self._rerank_is_metric else self._metric_embed, profile.name)
        self.describer = Describer.for_profile(profile, retrieval, indexes, self.metric) if profile.describe.enabled \
            else None
        self.recorded = RecordedPrompt(self._metric_embed)
        shrink = Shrink.load(profile.shrink, profile.metric_model, profile.blend.text_weight, profile.name)
        # the final embedding: lite's shrinkage where images are described (it needs their medium decision),
        # else the profile's blend with the prior
        self.final_embedding: FinalEmbedding = shrink.for_description if shrink and self.describer else PriorBlend(
            profile.blend.text_weight, profile.blend.regressor_weight, self.prior.metric, profile.prior.blend_weight,
            profile.describe.uncertainty_prior_weight)

    @classmethod
    def load(cls, profile: str | Profile | None = None, checksums: bool = False) -> "Interrogator":
        """The Python API's entry point: ``Interrogator.load("lite")`` (a built-in name, a .toml path or a Profile)."""
        return cls.from_profile(profile if isinstance(profile, Profile) else load_profile(profile), checksums)

    @classmethod
    def from_profile(cls, profile: Profile, checksums: bool = False) -> "Interrogator":
        require_indexes(profile)  # a missing index is reported before any model loads
        retrieval = create_space(profile.retrieve.space)
        rerank = retrieval if profile.rerank.space == "retrieval" else create_space(profile.rerank.space)
        indexes = load_indexes(profile, retrieval, checksums)
        metric = sentence_encoder(profile.metric_model)
        regressor: Regressor | None = None
        if profile.regress.kind == "bridge":
            spec = profile.retrieve.space
            if not isinstance(spec, BridgeSpaceSpec) or retrieval.text_model_id != metric.model_id:
                raise ProfileError(f"profile {profile.name}: regress.kind = 'bridge' needs a bridge retrieval space "
                                   f"whose text model is the metric model ({profile.metric_model})")
            regressor = BridgeRegressor()
        elif profile.regress.kind == "head":
            regressor = load_regressor(profile.regress, retrieval, metric.model_id, metric.dim, create_space,
                                       profile.name)
        return cls(profile, retrieval, rerank, indexes, regressor)

    def with_indexes(self, indexes: dict[str, TextIndex]) -> "Interrogator":
        """Another interrogator over other builds of the indexes, sharing this one's loaded models (hot swap)."""
        return Interrogator(self.profile, self.retrieval_space, self.rerank_space, indexes, self.regressor)

    def _metric_embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.metric.encode_text(texts)

    def interrogate(self, image: ImageLike, mode: Mode | None = None, flavours: int | None = None,
                    stages: bool = True, metadata: bool = True) -> Interrogation:
        """One image (a PIL image or a path): prompt, alternatives, negative prompt, embedding, timings."""
        return self.interrogate_batch([image], mode, flavours, stages, metadata)[0]

    def interrogate_batch(self, images: Sequence[ImageLike], mode: Mode | None = None,
                          flavours: int | None = None, stages: bool = True,
                          metadata: bool = True) -> list[Interrogation]:
        """One Interrogation per image, in one batch through every stage. ``mode`` (fast, classic, best,
        negative) and ``flavours`` (components the chain may add) choose the assembly, as the profile's
        ``[modes]`` say. ``stages=False`` leaves out the metric embeddings only reports use (retrieval and
        template) where they would cost a model call. A file that records its prompt is answered with it
        (``source="metadata"``) unless ``metadata=False`` or the profile's ``[metadata]`` says otherwise.
        Timings are per image (a batch's stage time over its size)."""
        if not images:
            return []
        inputs = [prepare(im, metadata and self.profile.metadata.enabled) for im in images]
        images = [i.image for i in inputs]
        mode = mode or self.profile.default_mode
        assembler = Assembler(self.profile.assemble_for(mode, flavours))
        timer = _Timer()
        with timer.stage("image_encode"):
            features = None
            if self.describer and self.describer.head is not None:  # probabilities and features, one pass
                probabilities, features = self.retrieval_space.classifier.predict(images)
                retrieval_vectors = self.retrieval_space.embed_probabilities(probabilities)
            elif self.describer:  # the classifier's probabilities serve the description too
                probabilities = self.retrieval_space.classifier.predict_proba(images)
                retrieval_vectors = self.retrieval_space.embed_probabilities(probabilities)
            else:
                retrieval_vectors = self.retrieval_space.encode_images(images)
            rerank_vectors = (
                retrieval_vectors if self.rerank_space is self.retrieval_space else self.rerank_space.encode_images(images)
            )
        with timer.stage("retrieve"):
            retrieved = self.retriever.retrieve(retrieval_vectors)
        with timer.stage("rerank"):
            reranked = self.reranker.rerank_batch(rerank_vectors, retrieved)
            # a floor that empties everything must not leave the image without a prompt
            reranked = [r if r else _only_best(c) for r, c in zip(reranked, retrieved)]
        to_assemble, styles = reranked, [self.prior.style] * len(images)
        descriptions: list[Description | None] = [None] * len(images)
        if self.describer:
            with timer.stage("describe"):
                descriptions = list(self.describer.describe(probabilities, images, features))
                applied = [self.describer.apply(d, c, self.prior.style) for d, c in zip(descriptions, reranked)]
                to_assemble, styles = [a[0] for a in applied], [a[1] for a in applied]
        mediums = [d.mediums if d is not None else None for d in descriptions]
        with timer.stage("assemble"):
            targets = self.prior.assembly_targets(rerank_vectors)
            assembled = assembler.assemble_batch(targets, to_assemble, self.text_embeddings.for_texts, styles)
        with timer.stage("negative"):
            negatives = self.negative.useful(mediums)
            least_similar = self.negative(retrieval_vectors) if mode == "negative" else [""] * len(images)
        with timer.stage("regress"):
            regressed = self.regressor.predict(images, retrieval_vectors) if self.regressor else None
        with timer.stage("blend"):
            results = self._finish(assembled, reranked, regressed, stages, descriptions)
        for r, negative, unlike in zip(results, negatives, least_similar):
            r.negative_prompt, r.mode = negative, mode
            if mode == "negative":  # CLIP Interrogator's negative mode: the components least like the image
                r.prompt = unlike
        with timer.stage("metadata"):
            self.recorded.apply(results, [i.recorded for i in inputs], mode)
        per_image = {k: v / len(images) for k, v in timer.ms.items()}
        index_ids = {name: ix.record.build_id for name, ix in self.indexes.items()}
        for r in results:
            r.timings_ms, r.index_ids = dict(per_image), index_ids
        return results

    def _finish(self, assembled: list[AssembledPrompt], reranked: list[Candidates], regressed: np.ndarray | None,
                stages: bool, descriptions: Sequence[Description | None]) -> list[Interrogation]:
        tops = [_top_subject(c) for c in reranked]
        templates = [a.template.text if a.template else a.text for a in assembled]
        if self._rerank_is_metric:  # the rerank space is the metric's: reuse its (stored) embeddings
            prompt_emb = np.stack([a.embedding for a in assembled])
            template_emb = np.stack([a.embedding if a.template_embedding is None else a.template_embedding
                                     for a in assembled])
            retrieval_emb = self.text_embeddings.for_candidates(tops)
        else:  # one metric call for the batch's prompts (and templates and retrieval answers, for reports)
            n = len(assembled)
            extra = templates + [c.text for c in tops] if stages else []
            emb = self._metric_embed([a.text for a in assembled] + extra)
            prompt_emb, template_emb, retrieval_emb = emb[:n], emb[n : 2 * n], emb[2 * n :]
        results = []
        for i, a in enumerate(assembled):
            reg = None if regressed is None else regressed[i]
            named = {"retrieval": retrieval_emb[i], "template": template_emb[i]} if len(template_emb) else {}
            named["prompt"] = prompt_emb[i]
            if reg is not None:
                named["regressor"] = reg
            final = self.final_embedding(prompt_emb[i], reg, descriptions[i])
            cands = sorted((c for cs in reranked[i].values() for c in cs), key=lambda c: -c.score)
            results.append(Interrogation(a.text, tops[i].text, final, named, cands, a.tried,
                                         template_candidates=a.template_count))
        return results


def _components(prompt: str) -> frozenset[str]:
    """A prompt's comma-separated components, case and spacing aside."""
    return frozenset(" ".join(part.lower().split()) for part in prompt.split(",") if part.strip())


def _only_best(candidates: Candidates) -> Candidates:
    best = best_of_all(candidates)
    return {best.kind: [best]} if best else {}


def _top_subject(candidates: Candidates) -> Candidate:
    """The retrieval-only answer: the best caption or subject (or, failing those, the best candidate)."""
    top = best_subject(candidates) or best_of_all(candidates)
    assert top is not None  # reranking never leaves an image without candidates
    return top
