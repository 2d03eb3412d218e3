"""The one device choice: inference mode everywhere, autocast and pinned non-blocking copies only on CUDA, an
opt-in torch.compile. On this CPU the choice must fall back cleanly; the CUDA branch is checked by its calls."""

import numpy as np
import torch
from PIL import Image

from retriever import device as dev
from retriever.profile import ClipSpaceSpec


def test_cpu_inference_is_plain_inference_mode_and_copies_are_untouched():
    cpu = torch.device("cpu")
    with dev.inference(cpu, torch.float16):
        assert torch.is_inference_mode_enabled() and not torch.is_autocast_enabled("cuda")
    x = torch.ones(2, 3)
    assert dev.to_device(x, cpu) is x
    assert dev.to_device(x, cpu, torch.float64).dtype == torch.float64
    assert dev.pick_dtype(cpu) == torch.float32 and dev.pick_dtype(torch.device("cuda")) == torch.float16


def test_cuda_branch_pins_and_copies_without_blocking(monkeypatch):
    seen = {}

    class Pinned:
        def to(self, device, dtype=None, non_blocking=False):
            seen.update(device=device, dtype=dtype, non_blocking=non_blocking)
            return "on-device"

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: Pinned())
    assert dev.to_device(torch.ones(1), torch.device("cuda"), torch.float16) == "on-device"
    assert seen == {"device": torch.device("cuda"), "dtype": torch.float16, "non_blocking": True}


def test_compile_knob_wraps_the_image_tower(tiny_clip, monkeypatch):
    from retriever.encoders.clip import ClipSpace

    modes = []

    def fake_compile(fn, mode=None):
        modes.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    a = tiny_clip["unprompt-tiny-a"]
    spec = dict(kind="open_clip", model="unprompt-tiny-a", pretrained=str(a["checkpoint"]),
                model_config_file=str(a["config"]))
    plain = ClipSpace(ClipSpaceSpec(**spec))
    compiled = ClipSpace(ClipSpaceSpec(**spec, compile="reduce-overhead"))
    assert modes == ["reduce-overhead"]  # "off" (the default) never calls torch.compile
    images = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (50, 90), (10, 90, 250))]
    np.testing.assert_allclose(plain.encode_images(images), compiled.encode_images(images), atol=1e-6)
