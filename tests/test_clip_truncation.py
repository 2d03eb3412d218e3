import json

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_CLIP_CONFIG
from retriever.encoders.clip import ClipSpace
from retriever.encoders.clip_text import encode_truncated, eot_lengths, length_buckets, truncation_supported
from retriever.profile import ClipSpaceSpec

MIXED = ["cat", "a cat", "by greg rutkowski", "highly detailed",
         "a photograph of an astronaut riding a horse on the moon, dramatic lighting, 8k, trending on artstation",
         "an extremely long prompt " + ", ".join(f"detail number {i}" for i in range(40)),  # past 77: truncated by the tokenizer
         "oil painting"]


def test_truncated_matches_encode_text_on_mixed_lengths(tiny_clip):
    import open_clip

    model = open_clip.create_model("unprompt-tiny-a").eval()
    model.load_state_dict(torch.load(tiny_clip["unprompt-tiny-a"]["checkpoint"])["state_dict"])
    tokens = open_clip.get_tokenizer("unprompt-tiny-a")(MIXED)
    lengths = eot_lengths(tokens)
    assert lengths.min() <= 3 and lengths.max() == 77  # one batch, very different lengths
    assert truncation_supported(model)
    with torch.no_grad():
        full = model.encode_text(tokens)
    fast = encode_truncated(model, tokens)
    assert float((full - fast).abs().max()) <= 1e-4
    short = tokens[:4]  # a batch whose longest text is short runs at that length
    assert int(eot_lengths(short).max()) < 10
    with torch.no_grad():
        assert float((model.encode_text(short) - encode_truncated(model, short)).abs().max()) <= 1e-4


def test_bucketed_space_embedding_matches_full_context(tiny_clip):
    spec = ClipSpaceSpec(kind="open_clip", model="unprompt-tiny-a", pretrained=str(tiny_clip["unprompt-tiny-a"]["checkpoint"]),
                         model_config_file=str(tiny_clip["unprompt-tiny-a"]["config"]))
    space = ClipSpace(spec, batch_size=3)
    assert space.truncate
    texts = MIXED * 3
    fast = space.encode_text(texts)
    space.truncate = False
    full = space.encode_text(texts)
    assert np.abs(fast - full).max() <= 1e-4
    order = [b.tolist() for b in length_buckets(np.array([5, 1, 9, 2, 7]), 2)]
    assert order == [[1, 3], [0, 4], [2]]


@pytest.mark.parametrize("change", [{"no_causal_mask": True}, {"pool_type": "last"}])
def test_other_towers_fall_back_to_full_context(tmp_path, change):
    import open_clip

    cfg = json.loads(json.dumps(TINY_CLIP_CONFIG))
    cfg["text_cfg"].update(change)
    name = "unprompt-tiny-fallback-" + "-".join(change)
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    model = open_clip.create_model(name).eval()
    assert not truncation_supported(model)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    space = ClipSpace(ClipSpaceSpec(kind="open_clip", model=name, pretrained=str(tmp_path / "w.pt"),
                                    model_config_file=str(tmp_path / f"{name}.json")))
    assert not space.truncate
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer(name)(MIXED)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(space.encode_text(MIXED), ref, atol=1e-5)


def test_piece_tokenizer_equals_open_clips_tokenizer_on_real_prompts():
    import csv

    from open_clip.tokenizer import SimpleTokenizer

    from retriever.encoders.clip_tokens import PieceTokenizer

    reference = SimpleTokenizer()
    pieces = PieceTokenizer(reference)
    flavours = (REPO / "data_manifests/clip_interrogator/flavors.txt").read_text().splitlines()[::997]
    with open(REPO / "data_manifests/examples/eval.csv") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    chained = [", ".join(flavours[i : i + 25]) for i in range(0, len(flavours), 5)]  # some pass 77 tokens
    odd = ["wow!, yes", "a,b", "x , y", "café, naïve art", "  spaced ,  out  ", "3, 4, 5d", "it's, 'quoted', ok",
           "&amp;, html", "emoji 🎨, art", ",leading", "trailing,", "",
           # cleaning that crosses a piece: an entity (open_clip unescapes it to "&", which joins the comma), ftfy's
           # repair of mojibake, a terminal escape, spaces
           "tom &amp, jerry", "a &amp;amp; b, c", "cafÃ©, x", "x\x1b[31m, y", "a  b, c", "Joaquín Sorolla, oil"]
    texts = prompts + flavours + chained + odd
    assert any(len(reference.encode(t)) > 75 for t in chained)
    assert torch.equal(pieces(texts), reference(texts))
    assert [pieces.count(t) for t in texts] == [len(reference.encode(t)) + 2 for t in texts]
