"""The lite models in ONNX Runtime: the choice between it and torch, the exports and their records, the same
outputs as torch on real images and prompts, and a predict that never imports torch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retriever.encoders import onnx_export, onnx_files
from retriever.encoders.efficientnet import EfficientNetLiteClassifier, efficientnet_classifier, weights_path
from retriever.encoders.minilm import METRIC_MODEL, SentenceEncoder, _bert_mean_folder, resolve_sentence_model
from retriever.encoders.runtime import RUNTIME_ENV, choose_runtime, runtime_for
from retriever.errors import MissingWeightsError, UnpromptError

REPO = Path(__file__).resolve().parents[1]
DEVSET = REPO / "data_manifests" / "devset"
CAT = REPO / "data_manifests" / "examples" / "images" / "cat.jpg"


def devset_rows() -> list[dict]:
    return [r for f in ("dev.csv", "heldout.csv") for r in csv.DictReader(open(DEVSET / f, encoding="utf-8"))]


def devset_image(row: dict) -> Image.Image:
    from retriever.paths import local_file

    return Image.open(local_file(row["image"], DEVSET)).convert("RGB")


@pytest.mark.parametrize("requested, device, installed, exported, gpu, want", [
    ("auto", None, True, True, False, "onnx"),  # a CPU machine with the files: ONNX Runtime
    ("auto", None, True, False, False, "torch"),  # no export yet: torch
    ("auto", None, False, True, False, "torch"),  # no onnxruntime: torch
    ("auto", None, True, True, True, "torch"),  # an NVIDIA driver: torch runs them on the GPU
    ("auto", "cuda", True, True, False, "torch"),  # a device asked for: torch
    ("auto", "cpu", True, True, True, "onnx"),  # the CPU asked for on a GPU machine
    ("torch", None, True, True, False, "torch"),
    ("onnx", None, True, True, True, "onnx"),
])
def test_the_runtime_choice(requested, device, installed, exported, gpu, want):
    assert choose_runtime(requested, device=device, onnxruntime_installed=installed, exported=exported,
                          nvidia_driver=gpu) == want


def test_a_runtime_that_cannot_be_had_is_a_clear_error(monkeypatch):
    with pytest.raises(MissingWeightsError, match="run `unprompt setup`"):
        choose_runtime("onnx", device=None, onnxruntime_installed=True, exported=False, nvidia_driver=False)
    with pytest.raises(MissingWeightsError, match="pip install onnxruntime"):
        choose_runtime("onnx", device=None, onnxruntime_installed=False, exported=True, nvidia_driver=False)
    with pytest.raises(UnpromptError, match="CPU only"):
        choose_runtime("onnx", device="cuda", onnxruntime_installed=True, exported=True, nvidia_driver=False)
    monkeypatch.setenv(RUNTIME_ENV, "tensorrt")
    with pytest.raises(UnpromptError, match=r"must be one of auto, onnx, torch \(got 'tensorrt'\)"):
        runtime_for(None)


def test_the_classifier_in_onnx_runtime_gives_torchs_outputs_on_real_images():
    images = [devset_image(r) for r in devset_rows()[::4]]
    images.append(Image.open(CAT).convert("RGB"))
    onnx, torch_model = efficientnet_classifier("efficientnet-lite2"), EfficientNetLiteClassifier("efficientnet-lite2")
    assert onnx.runtime == "onnx" and onnx.model_id == torch_model.model_id and onnx.size == torch_model.size
    (p1, f1), (p2, f2) = onnx.predict(images), torch_model.predict(images)
    assert p1.shape == p2.shape == (len(images), 1000) and f1.shape == f2.shape == (len(images), 1280)
    assert np.abs(p1 - p2).max() < 1e-5 and np.abs(f1 - f2).max() < 1e-4
    assert (p1.argmax(1) == p2.argmax(1)).all()
    empty_p, empty_f = onnx.predict([])
    assert empty_p.shape == (0, 1000) and empty_f.shape == (0, 1280)


def test_the_metric_model_in_onnx_runtime_matches_sentence_transformers_on_the_package_prompts():
    """The dev set's written prompts ship in the package, so this runs everywhere (tests/test_minilm.py adds the
    generated images' prompts where shared/ is there)."""
    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from sentence_transformers import SentenceTransformer

    texts = [r["prompt"] for r in devset_rows()] + ["", "  A CAT  ", "über café 日本語 😀", "word " * 300]
    encoder = SentenceEncoder(METRIC_MODEL)  # the default choice: the session home has the export
    assert encoder.runtime == "onnx" and encoder.exact_fast_path
    reference = SentenceTransformer(resolve_sentence_model(METRIC_MODEL), device="cpu")
    expected = reference.encode(texts, batch_size=16, normalize_embeddings=True, show_progress_bar=False)
    got = encoder.encode_text(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-6


@pytest.fixture()
def own_exports(home) -> Path:
    """This test's own, empty export folder (the private home links the session's, which must stay as it is)."""
    (home / "onnx").unlink()
    (home / "onnx").mkdir()
    return home / "onnx"


def _metric_folder() -> Path:
    folder = _bert_mean_folder(resolve_sentence_model(METRIC_MODEL))
    assert folder is not None
    return folder


def test_an_export_is_checked_and_recorded_and_a_stale_one_is_not_used(own_exports):
    folder = _metric_folder()
    source = folder / "model.safetensors"
    result = onnx_export.export_sentence_model(METRIC_MODEL, force=True)  # into this test's own home
    assert result.exported and result.max_diff <= onnx_export.TOLERANCE and result.path.parent == own_exports
    label = onnx_files.sentence_label(folder)
    current = onnx_files.current_export(label, source)
    assert current is not None and current.record["dim"] == 384 and current.record["source"]["path"] == str(source)
    again = onnx_export.export_sentence_model(METRIC_MODEL)  # current: answered from the record
    assert not again.exported and again.max_diff == result.max_diff
    model, record = onnx_files.model_paths(label)
    kept = record.read_text()
    stale = json.loads(kept)
    stale["source"]["mtime_ns"] += 1  # the weights package was reinstalled
    record.write_text(json.dumps(stale))
    assert onnx_files.current_export(label, source) is None
    assert SentenceEncoder(METRIC_MODEL).runtime == "torch"  # the default falls back; nothing is refused
    record.write_text("{not json")
    assert onnx_files.current_export(label, source) is None
    record.write_text(kept)
    with open(model, "r+b") as f:  # cut short
        f.truncate(model.stat().st_size // 2)
    assert onnx_files.current_export(label, source) is None


def test_an_export_that_differs_from_torch_is_not_kept(own_exports, monkeypatch):
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # no difference passes
    with pytest.raises(UnpromptError, match="differs from torch"):
        onnx_export.export_sentence_model(METRIC_MODEL, force=True)
    assert not any(own_exports.iterdir())  # neither the model nor a record, nor a temporary file


def test_a_damaged_model_file_falls_back_to_torch_unless_onnx_is_required(home, monkeypatch):
    name = "efficientnet-lite2"
    shared = onnx_files.current_export(onnx_files.classifier_label(name), Path(weights_path(name)))
    assert shared is not None
    size = shared.path.stat().st_size
    (home / "onnx").unlink()  # this test's own folder, not the session's files
    (home / "onnx").mkdir()
    model, record = onnx_files.model_paths(onnx_files.classifier_label(name))
    model.write_bytes(b"\0" * size)  # the recorded size, but not a model
    record.write_text(json.dumps({**shared.record, "model_size": model.stat().st_size}))
    with pytest.warns(UserWarning, match="could not load the exported model .* running it in torch"):
        classifier = efficientnet_classifier(name)
    assert classifier.runtime == "torch"
    monkeypatch.setenv(RUNTIME_ENV, "onnx")
    with pytest.raises(MissingWeightsError, match="remove it and run `unprompt setup`"):
        efficientnet_classifier(name)


def _predict(home: Path, runtime: str, *images: str) -> tuple[str, bool]:
    """A fresh process's predict (stdout) and whether it imported torch."""
    code = ("import sys; from api.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "UNPROMPT_HOME": str(home), RUNTIME_ENV: runtime}
    out = subprocess.run([sys.executable, "-c", code, "predict", *images, "--format", "tsv", "--no-embedding"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr.strip().splitlines()[-1] == "True"


def test_a_lite_predict_never_imports_torch_and_gives_torchs_prompts(home):
    """The torch run goes first: it leaves the CLIP word-token table that `unprompt setup` leaves a user (this
    home has only the index and the exports), so the second run has every word's count without open_clip."""
    images = sorted(str(p) for p in CAT.parent.glob("*.jpg"))[:4]
    torch_out, torch_torch = _predict(home, "torch", *images)
    onnx_out, onnx_torch = _predict(home, "auto", *images)
    assert torch_torch and not onnx_torch
    assert onnx_out == torch_out and len(onnx_out.splitlines()) == len(images)
