"""The metric model without sentence-transformers: the same vectors as SentenceTransformer.encode, in any
batching; and the lite start's other shortcuts (preprocessing without torchvision, open_clip's tokenizer alone)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from retriever.encoders.minilm import METRIC_MODEL, SentenceEncoder, length_batches, resolve_sentence_model

SD_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "sd-dev" / "prompts.csv"
DEVSET = Path(__file__).resolve().parents[1] / "data_manifests" / "devset"
HOSTILE = ["", "   ", "  padded  ", "A CAT", "über café 日本語 😀 \u200b", "word " * 400, "x", "\t\n", "ﬁne ligature"]


RUNTIMES = ("torch", "onnx")  # both runtimes of the metric model (retriever/encoders/runtime.py)
_ENCODERS: dict[str, SentenceEncoder] = {}


def sentence_encoder(runtime: str = "torch") -> SentenceEncoder:
    """The metric model in one runtime (the ONNX export is the session home's: tests/conftest.py)."""
    if runtime not in _ENCODERS:
        _ENCODERS[runtime] = SentenceEncoder(METRIC_MODEL, runtime=runtime)
    assert _ENCODERS[runtime].runtime == runtime
    return _ENCODERS[runtime]


def real_prompts() -> list[str]:
    rows = [r["prompt"] for f in ("dev.csv", "heldout.csv") for r in csv.DictReader(open(DEVSET / f))]
    if SD_DEV.is_file():
        rows += [r["prompt"] for r in csv.DictReader(open(SD_DEV, encoding="utf-8"))]
    return list(dict.fromkeys(rows))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fast_path_matches_sentence_transformers_on_real_prompts(runtime):
    if not SD_DEV.is_file():
        pytest.skip(f"{SD_DEV} absent: the real generated prompts live beside the repository (shared/)")
    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from sentence_transformers import SentenceTransformer

    texts = real_prompts() + HOSTILE
    encoder = sentence_encoder(runtime)
    assert encoder.exact_fast_path
    reference = SentenceTransformer(resolve_sentence_model(METRIC_MODEL), device="cpu")
    expected = reference.encode(texts, batch_size=16, normalize_embeddings=True, show_progress_bar=False)
    got = encoder.encode_text(texts)
    assert got.shape == expected.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-6
    assert encoder.vocabulary() == {w for w in reference.tokenizer.get_vocab() if w.isalpha()}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batching_by_length_keeps_order_and_vectors(runtime):
    encoder = sentence_encoder(runtime)
    texts = real_prompts()[:12] + HOSTILE[:5] + HOSTILE[6:]
    alone = np.concatenate([encoder.encode_text([t]) for t in texts])  # no padding at all
    budget = encoder.token_budget
    try:
        for b in (16, 100_000):
            encoder.token_budget = b
            assert np.abs(encoder.encode_text(texts) - alone).max() < 1e-6
        perm = np.random.default_rng(0).permutation(len(texts))
        assert np.abs(encoder.encode_text([texts[i] for i in perm]) - alone[perm]).max() < 1e-6
    finally:
        encoder.token_budget = budget
    batches = length_batches([3, 9, 1, 9, 4], token_budget=18)
    assert [list(b) for b in batches] == [[1, 3], [4, 0, 2]]  # longest first; rows x longest <= budget
    # a batch ends where padding the next length would cost more than another run; else lengths share one
    batches = length_batches([5, 5, 5, 4, 4, 4, 4, 4, 2], token_budget=20)
    assert [list(b) for b in batches] == [[0, 1, 2], [3, 4, 5, 6, 7], [8]]
    assert [list(b) for b in length_batches([50], token_budget=8)] == [[0]]  # too long alone: still a batch
    assert length_batches([], token_budget=8) == []
    # a predict's chain prompts: one padded batch would cost 8 x 31 tokens + one run; three lengths near 31 share
    # a batch, and the 22s get their own
    batches = length_batches([31, 31, 30, 30, 29, 22, 22, 22], token_budget=1024, overhead=16)
    assert [list(b) for b in batches] == [[0, 1, 2, 3, 4], [5, 6, 7]]


def _batch_cost(lengths, batches, overhead: int) -> int:
    return sum(len(b) * max(lengths[i] for i in b) + overhead for b in batches)


def test_length_batches_are_the_cheapest_cut_by_distinct_length():
    """Against every way of cutting the distinct lengths into runs, each costing its rows x its longest plus
    ``overhead`` for each batch the budget cuts it into: the batches chosen cost no more than the cheapest; every
    row comes once; no batch of two or more rows passes the budget."""
    from itertools import combinations

    rng = np.random.default_rng(0)
    for _ in range(60):
        lengths = [int(x) for x in rng.integers(1, 12, rng.integers(1, 9))]
        budget, overhead = int(rng.integers(8, 40)), int(rng.integers(0, 20))
        batches = length_batches(lengths, token_budget=budget, overhead=overhead)
        assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget for b in batches)
        distinct = sorted(set(lengths), reverse=True)
        best = None
        for k in range(len(distinct)):
            for cuts in combinations(range(1, len(distinct)), k):
                edges, cost = [0, *cuts, len(distinct)], 0
                for a, b in zip(edges, edges[1:]):
                    rows = sum(distinct[b - 1] <= n <= distinct[a] for n in lengths)
                    cost += rows * distinct[a] + overhead * -(-rows // max(1, budget // distinct[a]))
                best = cost if best is None else min(best, cost)
        assert _batch_cost(lengths, batches, overhead) <= best


def test_calibration_picks_the_fastest_budget_while_it_embeds():
    from index_build.embed import calibrated_embed

    encoder = sentence_encoder()
    budget = encoder.token_budget
    texts = real_prompts()[:32]
    try:
        vectors, rates = calibrated_embed(encoder, texts, budgets=(64, 512))
        assert set(rates) == {64, 512} and encoder.token_budget == max(rates, key=rates.get)
        # each candidate embedded its own share; together they are the texts' vectors, in order
        assert np.abs(vectors - encoder.encode_text(texts)).max() < 1e-6
    finally:
        encoder.token_budget = budget

    class Plain:  # an encoder that does not batch by tokens: embedded as it is, nothing timed
        dim = 2

        def encode_text(self, texts):
            return np.ones((len(texts), 2))

    vectors, rates = calibrated_embed(Plain(), ["a", "b"])
    assert rates == {} and vectors.shape == (2, 2)


def test_a_build_calibrates_on_its_largest_shard_and_writes_every_shard(tmp_path, monkeypatch):
    """embed_sources hands the largest missing shard to calibrated_embed first (a small first source would time
    the candidates on a few hundred texts), and every shard holds its own texts' vectors."""
    from index_build import embed
    from index_build.manifest import load_manifest
    from index_build.read import read_manifest

    (tmp_path / "small.txt").write_text("\n".join(f"small {i}" for i in range(10)))
    (tmp_path / "big.txt").write_text("\n".join(f"big text number {i}" for i in range(60)))
    (tmp_path / "m.toml").write_text("[[sources]]\nname = 'small'\npath = 'small.txt'\nkind = 'flavour'\n"
                                     "[[sources]]\nname = 'big'\npath = 'big.txt'\nkind = 'flavour'\n")
    staged = read_manifest(load_manifest(tmp_path / "m.toml"), tmp_path / "staged", 20)

    class Encoder:  # batches by tokens, as the metric model does
        model_id, dim, token_budget, exact_fast_path = "fake", 3, 1024, True

        def encode_text(self, texts):
            return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)

    calibrated: list[int] = []
    real = embed.calibrated_embed
    monkeypatch.setattr(embed, "calibrated_embed", lambda enc, texts: calibrated.append(len(texts)) or
                        real(enc, texts, budgets=(64, 128)))
    monkeypatch.setattr(embed, "CALIBRATE_MIN_TEXTS", 30)
    encoder = Encoder()
    assert embed.embed_sources(staged, encoder, tmp_path / "shards", shard_size=20, progress=False) == \
        {"small": 10, "big": 60}
    assert calibrated == [20]  # the big source's full shard, not the small source's 10 texts
    for st in staged:
        vectors = np.concatenate(list(embed.source_vectors(tmp_path / "shards", "fake", st, 20)))
        np.testing.assert_array_equal(vectors, Encoder().encode_text(st.all_texts()).astype(np.float16))


def test_batches_run_on_one_thread_workers_with_the_same_vectors(monkeypatch, request):
    """Many batches on a CPU run in worker threads, each with a one-thread torch pool; the vectors are the
    sequential path's, and the process-wide pool is the plan's again afterwards."""
    import threading

    import torch

    from retriever import threads

    encoder = sentence_encoder()
    texts = real_prompts()
    budget = encoder.token_budget
    seen: list[tuple[str, int]] = []
    embed = encoder._fast.embed

    def spy(encodings):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return embed(encodings)

    plan, before = threads.current_plan(), torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(before))  # whatever the plans below leave set
    monkeypatch.setattr(encoder._fast, "embed", spy)
    try:
        encoder.token_budget = 64  # many small batches
        monkeypatch.setattr(threads, "_PLAN", dataclasses.replace(plan, intra_op=1))
        alone = encoder.encode_text(texts)
        assert {name for name, _ in seen} == {threading.current_thread().name}  # one CPU: no workers
        seen.clear()
        monkeypatch.setattr(threads, "_PLAN", dataclasses.replace(plan, intra_op=2))
        pooled = encoder.encode_text(texts)
        restored = torch.get_num_threads()
    finally:
        encoder.token_budget = budget
    assert all(name.startswith("batch") and n == 1 for name, n in seen) and len(seen) >= 4
    assert np.abs(pooled - alone).max() < 1e-6
    assert restored == 2  # the process-wide count is the plan's again
    assert threads.batch_workers(3) == 1  # fewer than two batches a worker: no pool
    with threads.batch_pool(8) as pool:  # one pool at a time: a second caller meanwhile runs in its own thread
        assert pool is not None
        with threads.batch_pool(8) as second:
            assert second is None

    def broken(encodings):
        raise RuntimeError("a batch failed")

    monkeypatch.setattr(encoder._fast, "embed", broken)
    encoder.token_budget = 64
    try:
        with pytest.raises(RuntimeError, match="a batch failed"):
            encoder.encode_text(texts)
    finally:
        encoder.token_budget = budget
    with threads.batch_pool(8) as pool:  # the failure let the pool go
        assert pool is not None


def test_preprocessing_equals_torchvision_to_the_bit():
    from PIL import Image

    from retriever._compat import ensure_torchvision_importable
    from retriever.encoders.efficientnet import preprocess

    ensure_torchvision_importable()
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    for w, h in ((640, 480), (300, 1000), (260, 260), (100, 50), (261, 999)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = T.Compose([T.Resize(260, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(260),
                              T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])(image).numpy()
        assert np.array_equal(preprocess(image, 260), expected), (w, h)


def test_open_clip_tokenizer_alone_counts_like_open_clip():
    from retriever._compat import open_clip_tokenizer

    import open_clip.tokenizer as real

    ours, theirs = open_clip_tokenizer().SimpleTokenizer(), real.SimpleTokenizer()
    for text in real_prompts()[:20] + HOSTILE:
        assert ours.encode(text) == theirs.encode(text)
