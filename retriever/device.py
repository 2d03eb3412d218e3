"""Device and precision choice, in one place: a GPU when there is one, half precision on it.

Every model call goes through ``inference(device, dtype)`` (inference mode, plus autocast on CUDA) and every
input batch through ``to_device`` (pinned host memory and a non-blocking copy on CUDA); on the CPU both
reduce to plain inference mode and an ordinary tensor.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def inference(device: torch.device, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """``torch.inference_mode``, and fp16/bf16 autocast when the device is CUDA and the dtype is half."""
    with torch.inference_mode():
        if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                yield
        else:
            yield


def to_device(batch: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host batch -> device: pinned memory and a non-blocking copy on CUDA (the copy overlaps queued work)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, dtype, non_blocking=True)
    return batch.to(device, dtype) if dtype is not None else batch


def maybe_compile(fn: F, mode: str) -> F:
    """``torch.compile`` a model method when a profile asks for it (``compile = "default"`` etc.); "off" keeps it."""
    if mode == "off":
        return fn
    return torch.compile(fn, mode=mode)  # type: ignore[return-value]


def training_device() -> torch.device:
    """A process's device: under torchrun each process takes the GPU of its LOCAL_RANK; else pick_device()."""
    import os

    device = pick_device()
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def training_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Autocast dtype for training: fp32 on the CPU; on CUDA bf16 where the GPU has it (auto), else fp16."""
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return pick_dtype(device, precision)


def training_autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on CUDA in half precision; nothing on the CPU or in fp32."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
