"""The CLIP word table: counts from it equal the tokenizer's, it learns and persists, and a bad file is empty."""

import os
from pathlib import Path

import pytest

from retriever._compat import open_clip_tokenizer
from retriever.encoders import clip_words
from retriever.encoders.clip_words import WordTable, words
from retriever.stages import assemble

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip_tokenizer()._tokenizer


def real_texts() -> list[str]:
    """Component texts (the vendored term lists, every 20th), prompts joined from them, and prior prompts."""
    terms = [t for name in ("artists", "flavors", "mediums", "movements")
             for t in (ROOT / "data_manifests/clip_interrogator" / f"{name}.txt").read_text().splitlines()[::20]
             if t.strip()]
    prior = [t for t in (ROOT / "retriever/data/prior_prompts.txt").read_text().splitlines()
             if t and not t.startswith("#")]
    return terms + [", ".join(terms[i : i + 7]) for i in range(0, len(terms), 7)] + prior


HARD = ["1234567890 9876543210", "!!!???...;;;", "it's they're we'll I'd 'quoted' rock'n'roll", "CAPS and MiXeD",
        "<start_of_text>x<end_of_text>", "<|endoftext|>", "  spaced   out  ", "", "x" * 300, "co-op, e.g. u.s.a.!",
        "a\tb", "line\nbreak", "nul\x00here", "esc\x1b[31mred", "tom &amp, jerry", "café", "ｆｕｌｌ width"]


def exact(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text)) + 2


def test_table_counts_equal_the_tokenizer(tokenizer):
    texts = real_texts() + HARD
    table = WordTable(None)
    table.learn(texts, tokenizer.encode)
    counted = 0
    for text in texts:
        n = table.count(text)
        if n is not None:
            counted += 1
            assert n == exact(tokenizer, text), text
    countable = [t for t in texts if words(t) is not None]
    assert counted == len(countable) > 0.95 * len(texts)  # all but the non-ASCII ones (accented artists, ...)
    for refused in ("a\tb", "nul\x00here", "esc\x1b[31mred", "tom &amp, jerry", "café", "ｆｕｌｌ width"):
        assert words(refused) is None and table.count(refused) is None
    assert table.count("an entirely unseen zyzzogeton") is None  # a word it never learnt: no guess


def test_table_persists_merges_and_survives_bad_files(tokenizer, tmp_path):
    path = tmp_path / "cache" / "words.json"
    first = WordTable(path)
    first.learn(["a red fox"], tokenizer.encode)
    other = WordTable(path)  # another process, started before the first saved
    other.learn(["a lighthouse at dusk"], tokenizer.encode)
    first.save()
    other.save()
    merged = WordTable(path)
    assert merged.count("a red fox at dusk") == exact(tokenizer, "a red fox at dusk")
    for bad in ("{not json", "[1, 2]", '{"fox": "x", "red": -1, "a": 99, "dusk": 1}'):
        path.write_text(bad)
        table = WordTable(path)
        assert set(table.counts) <= {"dusk"}  # only entries a tokenizer could have made survive
    path.unlink()
    os.mkfifo(path)  # a FIFO in the cache would block a plain read forever
    assert WordTable(path).counts == {}
    readonly = WordTable(Path("/proc/unprompt-cannot-write/words.json"))
    readonly.learn(["a fox"], tokenizer.encode)
    readonly.save()  # a cache: no error


def test_clip_token_count_learns_what_it_had_to_tokenize(tokenizer, monkeypatch, tmp_path):
    table = WordTable(tmp_path / "w.json")
    monkeypatch.setattr(assemble, "word_table", lambda: table)
    text = "a steampunk hummingbird, brass gears, volumetric light"
    assert table.count(text) is None
    assert assemble.clip_token_count(text) == exact(tokenizer, text)
    assert table.count(text) == exact(tokenizer, text)  # next time without the tokenizer


def test_setup_fills_the_table_with_the_index_words(monkeypatch, tmp_path, tokenizer):
    from index_build.setup import remember_words

    table = WordTable(tmp_path / "w.json")
    monkeypatch.setattr(clip_words, "word_table", lambda: table)
    remember_words(["a lighthouse at dusk", "oil painting"], ["{medium} of {subject}, {style}"])
    assert table.count("oil painting of a lighthouse at dusk") == exact(tokenizer, "oil painting of a lighthouse at dusk")
    assert WordTable(tmp_path / "w.json").count("a lighthouse") is not None  # saved
