"""Make sure every index a profile names exists and is current; build (incrementally) what is not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING, Iterable

from index_build.manifest import load_manifest
from retriever.encoders import create_space, text_model_id, text_tower
from retriever.errors import IndexIntegrityError
from retriever.index_files import RECORD_NAME, read_record, verify_files
from retriever.paths import index_dir
from retriever.profile import Profile

if TYPE_CHECKING:
    from index_build.build import BuildOptions


@dataclass
class SetupResult:
    name: str
    path: Path
    built: bool
    count: int
    seconds: float
    factory: str = ""
    search: str = ""  # where this machine would search it (retriever.search_device's plan for its type)


def index_is_current(directory: Path, manifest_hash: str, model_id: str, rerank_ids: list[str]) -> bool:
    try:
        record = read_record(directory)
        verify_files(directory, record, checksums=False)
    except IndexIntegrityError:
        return False
    return (record.manifest_hash == manifest_hash and record.model_id == model_id
            and set(rerank_ids) <= set(record.rerank_caches))


def rerank_towers(profile: Profile) -> list:
    """Text towers of a rerank space that differs from the retrieval space (their caches go beside the index)."""
    if profile.rerank.space == "retrieval":
        return []
    retrieval, rerank = create_space(profile.retrieve.space), create_space(profile.rerank.space)
    return [] if rerank.text_model_id == retrieval.text_model_id else [text_tower(rerank)]


def rerank_text_ids(profile: Profile) -> list[str]:
    """``rerank_towers``' model ids, from the profile alone (no model loads)."""
    if profile.rerank.space == "retrieval":
        return []
    rerank = text_model_id(profile.rerank.space)
    return [] if rerank == text_model_id(profile.retrieve.space) else [rerank]


def ensure_indexes(profile: Profile, options: BuildOptions | None = None, force: bool = False) -> list[SetupResult]:
    import time

    results = []
    space = None
    for ref in profile.retrieve.indexes:
        directory = index_dir(ref.name)
        if ref.manifest is None:
            if not (directory / RECORD_NAME).is_file():
                raise IndexIntegrityError(
                    f"profile {profile.name} names index {ref.name} without a manifest, and there is none at "
                    f"{directory}: build it with `unprompt build-index MANIFEST --profile {profile.name} "
                    f"--out {directory}`, or give it a manifest in the profile")
            continue
        manifest = load_manifest(ref.manifest)
        stored = rerank_text_ids(profile) if ref.rerank_vectors == "stored" else []
        if not force and index_is_current(directory, manifest.digest(), text_model_id(profile.retrieve.space), stored):
            record = read_record(directory)  # current by its build record: answered without loading a model
            results.append(SetupResult(ref.name, directory, False, record.count, 0.0, record.factory,
                                       _search(record.factory, record.dim, options)))
            continue
        space = space or create_space(profile.retrieve.space)
        extras = rerank_towers(profile) if ref.rerank_vectors == "stored" else []
        from index_build.build import build_index  # polars and the readers: only when there is work

        t = time.perf_counter()
        report = build_index(manifest, text_tower(space), directory, options, rerank_encoders=extras)
        rec = report.record
        remember_words(_index_texts(directory), profile.assemble.templates)
        results.append(SetupResult(ref.name, directory, True, rec.count, time.perf_counter() - t, rec.factory,
                                   _search(rec.factory, rec.dim, options)))
    return results


def _index_texts(directory: Path) -> list[str]:
    from retriever.index import TextIndex

    return TextIndex.load(directory).texts.to_list()


def remember_words(texts: Iterable[str], templates: Iterable[str] = ()) -> None:
    """Put the CLIP token counts of these texts' words (and the templates' fixed words) in the word table, so
    that serving counts prompts made of them without loading the tokenizer (``retriever.encoders.clip_words``)."""
    import string

    from retriever._compat import open_clip_tokenizer
    from retriever.encoders import clip_words

    fixed = [literal for template in templates for literal, *_ in string.Formatter().parse(template) if literal]
    table = clip_words.word_table()
    table.learn([*texts, *fixed], open_clip_tokenizer()._tokenizer.encode)
    table.save()


def _search(factory: str, dim: int, options: BuildOptions | None) -> str:
    from retriever.search_device import describe, plan_for_factory

    return describe(plan_for_factory(factory, dim, options.gpus if options else 0))
