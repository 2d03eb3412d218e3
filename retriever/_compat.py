"""Make ``import torchvision`` work next to a CPU-only torch.

PyPI's torchvision wheels are CUDA builds. Next to the CPU build of torch their
C++ ops fail to load, and torchvision 0.28's ``_meta_registrations`` then dies
registering fake kernels for ``torchvision::nms``/``qnms``. Every library we use
(open_clip, transformers, sentence-transformers) imports torchvision, so we
declare those two op schemas when, and only when, the import fails that way.
Only the pure-Python parts (transforms, model metadata) are used by unprompt.
"""

from __future__ import annotations

import sys
from typing import Any

_LIBRARY: Any = None  # a torch.library.Library, kept alive: dropping it unregisters the ops


def ensure_torchvision_importable() -> None:
    global _LIBRARY
    if "torchvision" in sys.modules and _LIBRARY is not None:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401
