"""The head and its file: a linear map or a small MLP, saved with the model ids and dimensions it fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from retriever.errors import HeadMismatchError, MissingWeightsError
from retriever.files import atomic_write

HEAD_FORMAT = 1


def make_head(in_dim: int, out_dim: int, hidden: int = 0) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def save_head(path: str | Path, head: nn.Module, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save({"format": HEAD_FORMAT, "meta": meta, "state_dict": head.state_dict()}, tmp)


def load_head_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"regressor head not found: {path}. Train one with `unprompt train-regressor` "
            "(or set regress.kind = 'none' in the profile)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        head = make_head(int(meta["in_dim"]), int(meta["out_dim"]), int(meta.get("hidden", 0)))
        head.load_state_dict(blob["state_dict"])
    except Exception as exc:  # unpickling and state-dict errors come in many types
        raise HeadMismatchError(f"regressor head {path} is not a valid head file ({exc.__class__.__name__}: {exc})") from None
    return head.eval(), meta


def check_head(path: str | Path, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    wrong = [f"{k} is {meta.get(k)!r}, the profile needs {v!r}" for k, v in expected.items() if meta.get(k) != v]
    if wrong:
        raise HeadMismatchError(f"regressor head {path} does not fit this profile: " + "; ".join(wrong))
