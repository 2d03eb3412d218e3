"""Make ``import torchvision`` work next to a CPU-only torch.

PyPI's torchvision wheels are CUDA builds. Next to the CPU build of torch their
C++ ops fail to load, and torchvision 0.28's ``_meta_registrations`` then dies
registering fake kernels for ``torchvision::nms``/``qnms``. Every library we use
(open_clip, transformers, sentence-transformers) imports torchvision, so we
declare those two op schemas when, and only when, the extension cannot load. That is found by loading the
extension itself (what torchvision's ``extension.py`` does first), not by a failed import of torchvision and a
second one (which cost 1.8 s). Only the pure-Python parts (transforms, model metadata) are used by unprompt.

The lite profile needs no torchvision at all; its only use of open_clip is the CLIP tokenizer, which
``open_clip_tokenizer`` loads from open_clip's ``tokenizer.py`` alone: the package's ``__init__`` imports
its models, timm, transformers and torchvision (2.5 s) for a BPE table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_LIBRARY: Any = None  # a torch.library.Library, kept alive: dropping it unregisters the ops


def _extension_loads() -> bool:
    """Whether torchvision's C++ ops load next to this torch (True when there is no torchvision to ask)."""
    import torch

    spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return True
    libs = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(Path(spec.origin).parent.glob("_C*.pyd"))
    try:
        torch.ops.load_library(str(libs[0]))
    except (IndexError, OSError, ImportError, RuntimeError):
        return False
    return True


def _declare_ops() -> None:
    global _LIBRARY
    import torch

    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def ensure_torchvision_importable() -> None:
    if "torchvision" in sys.modules:
        return
    if not _extension_loads():
        _declare_ops()
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:  # a failure the check above did not foresee: declare, and import again
        if "torchvision::" not in str(exc) or _LIBRARY is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_ops()
        import torchvision  # noqa: F401


def open_clip_tokenizer() -> ModuleType:
    """open_clip's ``tokenizer`` module, without running open_clip's package ``__init__`` when it has not run."""
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    name = "_unprompt_open_clip_tokenizer"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("open_clip")
    if package is None or package.origin is None:
        raise ImportError("open_clip is not installed: pip install open_clip_torch")
    spec = importlib.util.spec_from_file_location(name, Path(package.origin).parent / "tokenizer.py")
    if spec is None or spec.loader is None:
        raise ImportError("open_clip's tokenizer.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
