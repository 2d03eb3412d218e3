from pathlib import Path

import numpy as np
import pytest
import torch

from retriever.heads.config import TrainConfig
from retriever.heads.train import train_head
from retriever.errors import HeadMismatchError, MissingWeightsError
from retriever.heads.model import load_head_file, save_head
from retriever.stages.regress import HeadRegressor


def planted(n=3000, d_in=32, d_out=384, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    y = x @ w
    return x, y / np.linalg.norm(y, axis=1, keepdims=True)


def test_training_recovers_a_planted_linear_map():
    x, y = planted()
    held_x, held_y = x[2500:], y[2500:]
    result = train_head(x[:2500], y[:2500], TrainConfig(epochs=150, patience=15, seed=0))
    with torch.no_grad():
        pred = result.head(torch.from_numpy(held_x / np.linalg.norm(held_x, axis=1, keepdims=True))).numpy()
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    held_cos = float((pred * held_y).sum(1).mean())
    assert held_cos > 0.95, held_cos
    assert result.val_cosine > 0.95 and result.n_val == 250 and result.n_train == 2250


def test_early_stopping_stops_before_the_epoch_budget():
    x, y = planted(n=400)
    result = train_head(x, y, TrainConfig(epochs=2000, patience=3, lr=0.05))
    assert result.epochs < 2000


def test_head_roundtrip_and_refusal(tmp_path):
    x, y = planted(n=200, d_in=8, d_out=384)
    result = train_head(x, y, TrainConfig(epochs=5))
    meta = {"feature_model_id": "open_clip:A:tag", "in_dim": 8, "target_model_id": "st:minilm", "out_dim": 384,
            "hidden": 0, "metrics": {"val_cosine": result.val_cosine}}
    path = tmp_path / "head.pt"
    save_head(path, result.head, meta)
    reg = HeadRegressor(path, "open_clip:A:tag", 8, "st:minilm", 384)
    out = reg.predict_features(x[:3])
    assert out.shape == (3, 384) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    with pytest.raises(HeadMismatchError, match="feature_model_id"):
        HeadRegressor(path, "open_clip:B:tag", 8, "st:minilm", 384)
    with pytest.raises(HeadMismatchError, match="in_dim"):
        HeadRegressor(path, "open_clip:A:tag", 16, "st:minilm", 384)
    with pytest.raises(HeadMismatchError, match="target_model_id"):
        HeadRegressor(path, "open_clip:A:tag", 8, "st:other", 384)
    (tmp_path / "junk.pt").write_bytes(b"not a head")
    with pytest.raises(HeadMismatchError, match="not a valid head"):
        load_head_file(tmp_path / "junk.pt")
    with pytest.raises(MissingWeightsError, match="train-regressor"):
        load_head_file(tmp_path / "absent.pt")


def test_feature_cache_resumes_after_a_crash_and_reuses_finished_rows(tmp_path, monkeypatch):
    from retriever.heads.features import cached_matrix

    monkeypatch.setenv("UNPROMPT_HOME", str(tmp_path))
    calls = []

    def compute(start, end, fail_at=None):
        calls.append(start)
        if start == fail_at:
            raise KeyboardInterrupt  # the run is killed while filling the third chunk
        return np.full((end - start, 4), start, np.float32), np.ones(end - start, np.uint8)

    with pytest.raises(KeyboardInterrupt):
        cached_matrix("m", "k", 10, 4, lambda s, e: compute(s, e, fail_at=6), "t", chunk=3)
    assert calls == [0, 3, 6]
    calls.clear()
    matrix, valid = cached_matrix("m", "k", 10, 4, compute, "t", chunk=3).open()
    assert calls == [6, 9]  # resumed at the first unfinished chunk
    assert isinstance(matrix, np.memmap) and matrix.shape == (10, 4) and valid.all()
    np.testing.assert_array_equal(matrix[:, 0], [0, 0, 0, 3, 3, 3, 6, 6, 6, 9])
    calls.clear()
    cached_matrix("m", "k", 10, 4, compute, "t", chunk=3)
    assert calls == []  # finished: reused


def test_training_streams_from_a_memory_map_and_skips_invalid_rows(tmp_path):
    x, y = planted(n=1200)
    valid = np.ones(len(x), np.uint8)
    valid[:100] = 0
    x[:100] = 0  # unreadable images leave zero rows: they must not be trained on
    np.save(tmp_path / "x.npy", x.astype(np.float16))
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    result = train_head(xm, y, TrainConfig(epochs=60, batch_size=64, patience=10), valid=valid)
    assert result.n_train + result.n_val == 1100 and result.val_cosine > 0.9
    assert [h["epoch"] for h in result.history] == list(range(1, result.epochs + 1))


def test_fine_tuning_starts_from_the_initial_head():
    x, y = planted(n=600)
    first = train_head(x, y, TrainConfig(epochs=40, patience=40))
    again = train_head(x, y, TrainConfig(epochs=1, lr=1e-6), init=first.head)
    assert again.val_cosine > first.val_cosine - 0.01  # a fresh head after one tiny step would be near 0


def test_heads_are_averaged_with_their_weights(tmp_path):
    from retriever.heads.model import make_head
    from retriever.stages.regress import HeadEnsemble, _Member

    meta = {"feature_model_id": "f", "in_dim": 8, "target_model_id": "t", "out_dim": 384}
    torch.manual_seed(0)
    for name in ("a", "b"):
        save_head(tmp_path / f"{name}.pt", make_head(8, 384), meta)
    a, b = (HeadRegressor(tmp_path / f"{n}.pt", "f", 8, "t", 384) for n in ("a", "b"))
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    out = HeadEnsemble([_Member(a, None, 1.0), _Member(b, None, 3.0)]).predict([None] * 4, x)
    expected = a.predict_features(x) + 3 * b.predict_features(x)
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)


def test_ensemble_weights_are_chosen_on_validation_and_written_into_the_profile(tmp_path):
    from retriever.heads.ensemble import choose_weights, regress_section, with_regress
    from retriever.profile import load_profile

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((300, 384)).astype(np.float32)
    good = truth + 0.8 * rng.standard_normal(truth.shape)  # a better head and a worse one, errors independent
    fair = truth + 1.6 * rng.standard_normal(truth.shape)
    junk = rng.standard_normal(truth.shape)  # a head that knows nothing
    choice = choose_weights([good, fair, junk], truth)
    assert choice.single[0] > choice.single[1] > choice.single[2]
    w = choice.weights
    assert abs(sum(w) - 1) < 1e-6 and w[0] > w[1] > w[2] and w[2] <= 0.1
    assert choice.cosine >= max(choice.single) and choice.cosine > choice.uniform
    # an unhelpful head gets no weight and the profile's [regress] section lists the rest
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "retriever" / "profiles" / "kaggle.toml").read_text()
    section = regress_section(["heads/a.pt", "heads/b.pt", "heads/c.pt"], [0.7, 0.3, 0.0])
    (tmp_path / "ens.toml").write_text(with_regress(text, section))
    profile = load_profile(str(tmp_path / "ens.toml"))
    assert [(h.path, h.weight) for h in profile.regress.heads] == [("heads/a.pt", 0.7), ("heads/b.pt", 0.3)]
    assert profile.blend.regressor_weight == 0.75 and profile.assemble.top_n == 8  # the rest is kept
