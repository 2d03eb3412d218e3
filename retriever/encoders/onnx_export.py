"""Export the lite models from their installed torch weights to ONNX, and check each file against torch.

``unprompt setup`` calls :func:`ensure_exports` for a profile: every EfficientNet-Lite classifier of its bridge
spaces, and every BERT-mean sentence model it names (the metric model among them). An export that is current
for the installed weights is left as it is (``retriever.encoders.onnx_files``). A new one is written to a
temporary file with ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``: these models are plain
feed-forward graphs, and it needs no package beyond ``onnx``), run in ONNX Runtime beside torch on fixed inputs,
and kept only when the two agree to :data:`TOLERANCE`; its record (and the difference measured) is written last.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from retriever.encoders.onnx_files import classifier_label, current_export, model_paths, record_for, sentence_label
from retriever.errors import UnpromptError
from retriever.files import atomic_write, write_bytes_atomic

if TYPE_CHECKING:
    from retriever.profile import Profile

TOLERANCE = 1e-5  # the largest difference from torch an export may show on the check inputs
OPSET = 17  # LayerNormalization is an ONNX op from 17 on
CHECK_TEXTS = ("a photo of a cat", "", "an oil painting of a lighthouse on a cliff at dusk, dramatic lighting, "
               "highly detailed, trending on artstation", "Ünïcödé and 数字 123")


@dataclass(frozen=True)
class ExportResult:
    label: str
    path: Path
    exported: bool  # False: the file was current already
    seconds: float
    max_diff: float


def _export(module, args: tuple, target: Path, names: tuple[list[str], list[str]], axes: dict) -> None:
    import torch

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(target), dynamo=False, input_names=names[0], output_names=names[1],
                          dynamic_axes=axes, opset_version=OPSET)


def _up_to_date(label: str, source: Path, force: bool) -> ExportResult | None:
    """The result for an export that is current (read from its record, no model loaded), else None."""
    current = None if force else current_export(label, source)
    if current is None:
        return None
    return ExportResult(label, current.path, False, 0.0, float(current.record.get("max_diff", 0.0)))


def _checked_write(label: str, source: Path, build, check, **facts) -> ExportResult:
    """Export (``build(target)``), compare (``check(target)`` -> largest difference from torch), then keep."""
    import json

    model, record = model_paths(label)
    model.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with atomic_write(model) as tmp:
        build(tmp)
        diff = check(tmp)
        if not diff <= TOLERANCE:
            raise UnpromptError(f"the ONNX export of {label} differs from torch by {diff:.3g} (more than "
                                f"{TOLERANCE:g}); its models keep running in torch")
    facts = {**facts, "max_diff": diff}
    write_bytes_atomic(record, json.dumps(record_for(source, model, **facts), indent=1).encode())
    return ExportResult(label, model, True, time.perf_counter() - t, diff)


def check_images(size: int) -> list[Image.Image]:
    """Two fixed images: a smooth gradient and seeded noise, not square (the crop runs)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size + 40, dtype=np.float32)
    smooth = np.stack([np.add.outer(ramp[:size], ramp) / 2, np.tile(ramp, (size, 1)),
                       np.tile(ramp[:size, None], (1, size + 40))], axis=-1)
    noise = rng.integers(0, 256, (size + 17, size, 3))
    return [Image.fromarray(a.astype(np.uint8)) for a in (smooth, noise)]


def export_classifier(name: str, force: bool = False) -> ExportResult:
    """EfficientNet-Lite ``name`` -> (probabilities, pooled features), one graph with a dynamic batch."""
    from retriever.encoders.efficientnet import EfficientNetLiteClassifier, preprocess, weights_path

    weights = Path(weights_path(name))
    done = _up_to_date(classifier_label(name), weights, force)
    if done is not None:
        return done
    import torch

    from retriever.encoders.runtime import ort_session

    classifier = EfficientNetLiteClassifier(name, device=torch.device("cpu"))

    class Heads(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels):
            pooled = self.net.extract_features(pixels).mean(dim=(2, 3))
            return self.net._fc(pooled).softmax(-1), pooled

    graph = Heads(classifier.model).eval()
    images = check_images(classifier.size)

    def build(target: Path) -> None:
        example = torch.from_numpy(preprocess(images[0], classifier.size)[None])
        _export(graph, (example,), target, (["pixels"], ["probs", "features"]),
                {"pixels": {0: "batch"}, "probs": {0: "batch"}, "features": {0: "batch"}})

    def check(target: Path) -> float:
        session = ort_session(target)
        probs, feats = classifier.predict(images)
        diffs = []
        for i, image in enumerate(images):
            p, f = session.run(None, {"pixels": preprocess(image, classifier.size)[None]})
            diffs += [float(np.abs(p[0] - probs[i]).max()), float(np.abs(f[0] - feats[i]).max())]
        return max(diffs)

    return _checked_write(classifier_label(name), weights, build, check, image_size=classifier.size,
                          model_id=classifier.model_id)


def export_sentence_model(name: str, force: bool = False) -> ExportResult | None:
    """A BERT-mean sentence model (ids, types, mask) -> unit vectors; None for a model of any other kind (it
    runs through sentence-transformers)."""
    from retriever.encoders.minilm import _bert_mean_folder, _BertMean, resolve_sentence_model

    folder = _bert_mean_folder(resolve_sentence_model(name))
    if folder is None:
        return None
    done = _up_to_date(sentence_label(folder), folder / "model.safetensors", force)
    if done is not None:
        return done
    import torch

    from retriever.encoders.runtime import ort_session

    bert = _BertMean(folder, torch.device("cpu"))

    class Graph(torch.nn.Module):
        def forward(self, input_ids, token_type_ids, attention_mask):
            return bert.forward(input_ids, token_type_ids, attention_mask, masked=True)

    encodings, _ = bert.tokens.token_lengths(CHECK_TEXTS)
    arrays = bert.tokens.arrays(encodings)  # padded: the mask is not all ones
    names = ["input_ids", "token_type_ids", "attention_mask"]

    def build(target: Path) -> None:
        axes = {n: {0: "batch", 1: "length"} for n in names} | {"embedding": {0: "batch"}}
        _export(Graph().eval(), tuple(torch.from_numpy(a) for a in arrays), target, (names, ["embedding"]), axes)

    def check(target: Path) -> float:
        session = ort_session(target)

        def run(batch: list) -> np.ndarray:
            return session.run(None, dict(zip(names, bert.tokens.arrays(batch))))[0]

        # the padded batch, and one text alone (torch skips the mask there; the graph always applies it)
        return max(float(np.abs(run(batch) - bert.embed(batch)).max()) for batch in (encodings, encodings[:1]))

    return _checked_write(sentence_label(folder), folder / "model.safetensors", build, check, dim=bert.dim,
                          model_id=f"sentence-transformers:{name}")


def ensure_exports(profile: Profile, force: bool = False) -> list[ExportResult]:
    """Every lite model the profile uses, exported and checked where its export is missing or stale."""
    from retriever.profile import BridgeSpaceSpec

    bridges = [s for s in (profile.retrieve.space, profile.rerank.space) if isinstance(s, BridgeSpaceSpec)]
    results = [export_classifier(name, force) for name in dict.fromkeys(s.classifier for s in bridges)]
    for name in dict.fromkeys([*(s.text_model for s in bridges), profile.metric_model]):
        result = export_sentence_model(name, force)
        if result is not None:
            results.append(result)
    return results
