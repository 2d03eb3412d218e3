import numpy as np
import pytest

from fakes import HashTextEncoder
from index_build.build import BuildOptions, build_index
from index_build.manifest import load_manifest
from retriever.index import TextIndex
from retriever.profile import AssembleConfig
from retriever.stages.assemble import Assembler, clip_token_count, template_slots
from retriever.stages.blend import blend
from retriever.stages.candidates import Candidate
from retriever.stages.rerank import Reranker, TextEmbeddings
from retriever.stages.retrieve import Retriever


@pytest.fixture()
def small_index(tmp_path):
    (tmp_path / "subjects.txt").write_text("a red fox\na cup of coffee\na lighthouse at dusk\n")
    (tmp_path / "flavours.txt").write_text("\n".join(f"flavour {i}" for i in range(40)) + "\n")
    (tmp_path / "m.toml").write_text(
        '[[sources]]\nname = "subjects"\npath = "subjects.txt"\nkind = "subject"\n'
        '[[sources]]\nname = "flavours"\npath = "flavours.txt"\nkind = "flavour"\n'
    )
    enc = HashTextEncoder()
    build_index(load_manifest(tmp_path / "m.toml"), enc, tmp_path / "ix", BuildOptions(progress=False))
    return TextIndex.load(tmp_path / "ix"), enc


def test_retrieve_ranks_by_score_per_kind(small_index):
    index, enc = small_index
    query = enc.vector("a cup of coffee")[None]
    cands = Retriever({"ix": index}, k=5).retrieve(query)[0]
    assert set(cands) == {"subject", "flavour"}
    assert cands["subject"][0].text == "a cup of coffee"
    assert np.isclose(cands["subject"][0].retrieval_score, 1.0, atol=1e-3)
    assert len(cands["subject"]) == 3 and len(cands["flavour"]) == 5  # k per kind, capped by the kind's size
    for kind in cands:
        scores = [c.retrieval_score for c in cands[kind]]
        assert scores == sorted(scores, reverse=True)
        assert all(c.kind == kind for c in cands[kind])


def test_rerank_orders_floors_and_uses_stored_embeddings(small_index):
    index, enc = small_index
    image = enc.vector("a lighthouse at dusk")
    cands = Retriever({"ix": index}, k=40).retrieve(image[None])[0]
    embeddings = TextEmbeddings(enc, {"ix": index})
    before = enc.embedded
    out = Reranker(embeddings, floor=0.0, keep=4).rerank(image, cands)
    assert enc.embedded == before and embeddings.computed == 0  # all known texts: nothing embedded
    assert out["subject"][0].text == "a lighthouse at dusk"
    for kept in out.values():
        assert len(kept) <= 4 and all(c.rerank_score >= 0.0 for c in kept)
        assert [c.score for c in kept] == sorted((c.score for c in kept), reverse=True)
    strict = Reranker(embeddings, floor=0.99, keep=4).rerank(image, cands)
    assert list(strict) == ["subject"] and len(strict["subject"]) == 1


def test_unknown_texts_are_embedded_once(small_index):
    index, enc = small_index
    emb = TextEmbeddings(enc, {"ix": index})
    emb.for_texts(["new text", "new text", "other"])
    emb.for_texts(["new text"])
    assert emb.computed == 2


def cand(text, kind, score):
    return Candidate(text, kind, "s", "ix", 0, score, score)


class ScoreByWords:
    """encode() such that vector @ image = 0.5 + 0.1*#good - 0.1*#bad, with image = e0."""

    def __init__(self, step: float = 0.1):
        self.step = step
        self.image = np.array([1.0, 0.0], dtype=np.float32)

    def __call__(self, texts):
        out = []
        for t in texts:
            s = 0.5 + self.step * (t.count("good") - t.count("bad"))
            s = min(max(s, -0.99), 0.99)
            out.append([s, np.sqrt(1 - s * s)])
        return np.asarray(out, dtype=np.float32)


def test_templates_fill_slots_and_skip_unfillable():
    enc = ScoreByWords()
    cfg = AssembleConfig(templates=["{subject}", "{medium} of {subject}", "{subject} by {artist}"],
                         chain_kinds=[], max_chain=0)
    cands = {"subject": [cand("a fox", "subject", 0.4)], "medium": [cand("a good painting", "medium", 0.3)]}
    out = Assembler(cfg).assemble(enc.image, cands, enc)
    assert out.text == "a good painting of a fox"
    assert {p.text for p in out.tried} == {"a fox", "a good painting of a fox"}  # artist template skipped
    assert template_slots("{medium} of {subject}") == ["medium", "subject"]


def test_greedy_chain_adds_while_score_rises_then_stops():
    enc = ScoreByWords()
    cfg = AssembleConfig(templates=["{subject}"], chain_kinds=["flavour"], max_chain=10)
    flavours = [cand(t, "flavour", 0.2) for t in ("good light", "bad blur", "good detail", "neutral")]
    out = Assembler(cfg).assemble(enc.image, {"subject": [cand("a fox", "subject", 0.5)], "flavour": flavours}, enc)
    assert out.text.startswith("a fox, good")
    assert "good light" in out.text and "good detail" in out.text
    assert "bad blur" not in out.text and "neutral" not in out.text  # neither raises the score
    assert np.isclose(out.score, 0.7, atol=1e-5)
    limited = Assembler(cfg.model_copy(update={"max_chain": 1})).assemble(
        enc.image, {"subject": [cand("a fox", "subject", 0.5)], "flavour": flavours}, enc)
    assert limited.text.count(",") == 1


class CoverageScore:
    """encode() such that vector @ image = 0.1 + 0.8 * the mean over aspects of 1 - prod(1 - w): each component
    covers aspects with weights, and gains less the more the prompt already covers its aspects (diminishing
    returns; which component gains most changes as the prompt grows). A negative weight only lowers the score.
    Counts the rows it embeds."""

    def __init__(self, weights: dict[str, dict[int, float]], aspects: int):
        self.weights = weights
        self.aspects = aspects
        self.image = np.array([1.0, 0.0], dtype=np.float32)
        self.rows = 0

    def __call__(self, texts):
        self.rows += len(texts)
        out = []
        for t in texts:
            covers = [self.weights.get(part, {}) for part in t.split(", ")]
            cover = np.mean([1 - np.prod([1 - c.get(a, 0.0) for c in covers]) for a in range(self.aspects)])
            s = 0.1 + 0.8 * cover + sum(min(0.0, w) for c in covers for w in c.values())
            out.append([s, np.sqrt(1 - s * s)])
        return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("stop_without_gain", [True, False])
def test_lazy_chain_makes_the_full_chains_choices_with_fewer_encoder_rows(stop_without_gain):
    rng = np.random.default_rng(0)
    names = [f"component {i}" for i in range(12)]
    weights = {n: {int(a): float(rng.uniform(0.2, 0.9)) for a in rng.choice(4, 2, replace=False)} for n in names}
    weights["bad one"] = {0: -0.3}  # lowers the score: never added where the chain stops without gain
    pools = [{"subject": [cand(f"subject {i}", "subject", 0.5)],
              "flavour": [cand(t, "flavour", 0.2) for t in rng.permutation(names + ["bad one"])[: 8 + i]]}
             for i in range(3)]
    outs = {}
    for lazy in (0, 1, 3):
        enc = CoverageScore(weights, aspects=4)
        cfg = AssembleConfig(templates=["{subject}"], chain_kinds=["flavour"], chain_candidates=16, max_chain=5,
                             stop_without_gain=stop_without_gain, lazy_round=lazy)
        got = Assembler(cfg).assemble_batch(np.stack([enc.image] * 3), pools, enc)
        outs[lazy] = ([(a.text, round(a.score, 6)) for a in got], enc.rows)
    full, full_rows = outs[0]
    assert all(text.count(",") == 5 for text, _ in full) or stop_without_gain
    for lazy in (1, 3):
        texts, rows = outs[lazy]
        assert texts == full  # the same prompts and scores
        assert rows < full_rows  # for less work
    assert outs[1][1] < outs[3][1] < full_rows


def test_lazy_chain_scores_every_component_at_the_first_step_and_stops_on_stale_gains():
    enc = CoverageScore({"big": {0: 0.5}, "small": {0: 0.01}, "bad": {0: -0.5}}, aspects=1)
    cfg = AssembleConfig(templates=["{subject}"], chain_kinds=["flavour"], chain_candidates=8, max_chain=5,
                         min_gain=0.02, lazy_round=1)
    flavours = [cand(t, "flavour", 0.2) for t in ("bad", "small", "big")]
    out = Assembler(cfg).assemble(enc.image, {"subject": [cand("s", "subject", 0.5)], "flavour": flavours}, enc)
    assert out.text == "s, big"
    # the template, the three first extensions, then one round (small, the larger last gain): it gains too
    # little, and no component left gained more than min_gain last time (bad): the chain stops unscored
    assert enc.rows == 1 + 3 + 1
    assert {p.text for p in out.tried} == {"s", "s, bad", "s, small", "s, big", "s, big, small"}


def test_chain_respects_the_77_token_cap():
    enc = ScoreByWords(step=0.01)
    cfg = AssembleConfig(templates=["{subject}"], chain_kinds=["flavour"], max_chain=50, chain_candidates=50)
    flavours = [cand(f"good extraordinarily elaborate ornamentation number {i}", "flavour", 0.2) for i in range(40)]
    out = Assembler(cfg).assemble(enc.image, {"subject": [cand("a fox", "subject", 0.5)], "flavour": flavours}, enc)
    assert clip_token_count(out.text) <= 77
    assert all(clip_token_count(p.text) <= 77 for p in out.tried)
    assert out.text.count(",") >= 5  # it did chain, and stopped at the cap, not for lack of gain
    unused = [f.text for f in flavours if f.text not in out.text]
    assert unused and all(clip_token_count(f"{out.text}, {u}") > 77 for u in unused)


def test_overlong_template_is_truncated_to_the_cap():
    enc = ScoreByWords()
    cfg = AssembleConfig(templates=["{subject}"], chain_kinds=[], max_chain=0)
    subject = " ".join(["word"] * 120)
    out = Assembler(cfg).assemble(enc.image, {"subject": [cand(subject, "caption", 0.5)]}, enc)
    assert clip_token_count(out.text) <= 77


def test_blend_arithmetic():
    t = np.array([1.0, 0.0, 0.0])
    r = np.array([0.0, 2.0, 0.0])  # not unit: blend normalises each part first
    out = blend(t, r, 0.25, 0.75)
    np.testing.assert_allclose(out, np.array([0.25, 0.75, 0.0]) / np.hypot(0.25, 0.75), atol=1e-7)
    np.testing.assert_allclose(blend(t, None, 0.25, 0.75), t)
    np.testing.assert_allclose(blend(t, r, 1.0, 0.0), t)
    np.testing.assert_allclose(np.linalg.norm(blend(t, r, 3, 1)), 1.0, atol=1e-7)


def test_blend_with_a_prior():
    t, r, p = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 3.0])
    out = blend(t, r, 0.5, 0.5, prior=p, prior_weight=0.5)
    np.testing.assert_allclose(out, np.ones(3) / np.sqrt(3), atol=1e-7)
    np.testing.assert_allclose(blend(t, r, 0.5, 0.5, prior=None, prior_weight=0.5), blend(t, r, 0.5, 0.5))


def test_style_components_join_the_chain():
    enc = ScoreByWords()
    cfg = AssembleConfig(templates=["{subject}"], chain_kinds=["flavour"], max_chain=5)
    style = [cand("good style", "flavour", 0.0), cand("bad style", "flavour", 0.0)]
    out = Assembler(cfg).assemble(enc.image, {"subject": [cand("a fox", "subject", 0.5)]}, enc, style)
    assert out.text == "a fox, good style"
