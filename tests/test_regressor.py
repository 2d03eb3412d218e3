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
    out = reg.predict(x[:3])
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
