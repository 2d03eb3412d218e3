"""Training inputs on disk: image features, text features and metric targets as memory-mapped matrices.

Each matrix is an ``.npy`` file under ``$UNPROMPT_HOME/cache/heads/<key>/`` filled chunk by chunk, with a
small JSON record of how many rows are done, so a killed run resumes where it stopped and a finished one is
reused. The key is the producing model and the source file's content hash, so a changed table or another
model never reuses old rows. Training then reads row blocks from the memory map: millions of pairs never
sit in RAM at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from retriever.files import write_bytes_atomic
from retriever.index_files import sha256_file
from retriever.paths import home

CHUNK = 4096  # rows computed between two progress records


@dataclass
class CachedMatrix:
    path: Path  # the .npy (memory-mapped) holding rows x dim
    valid: Path  # uint8 per row: 1 when the row holds a real value (an unreadable image leaves 0)

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.path, mmap_mode="r"), np.load(self.valid, mmap_mode="r")


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def source_digest(path: str | Path) -> str:
    return sha256_file(Path(path))[:20]


def cached_matrix(name: str, key: str, rows: int, dim: int,
                  compute: Callable[[int, int], tuple[np.ndarray, np.ndarray]], desc: str,
                  chunk: int = CHUNK, dtype: str = "float16") -> CachedMatrix:
    """Fill (or resume filling) a rows x dim matrix with ``compute(start, end) -> (values, valid)`` per chunk."""
    folder = home() / "cache" / "heads" / key
    folder.mkdir(parents=True, exist_ok=True)
    path, valid_path, record = folder / f"{name}.npy", folder / f"{name}.valid.npy", folder / f"{name}.json"
    try:
        done = int(json.loads(record.read_text())["done"])
        matrix = np.load(path, mmap_mode="r+")
        valid = np.load(valid_path, mmap_mode="r+")
        if matrix.shape != (rows, dim) or valid.shape != (rows,):
            raise ValueError("shape changed")
    except (OSError, ValueError, KeyError):  # nothing yet, or a damaged start: begin again
        done = 0
        matrix = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, dim))
        valid = np.lib.format.open_memmap(valid_path, mode="w+", dtype=np.uint8, shape=(rows,))
    with tqdm(total=rows, initial=done, desc=desc, unit="row", disable=done >= rows) as bar:
        for start in range(done, rows, chunk):
            end = min(rows, start + chunk)
            values, ok = compute(start, end)
            matrix[start:end] = values
            valid[start:end] = ok
            matrix.flush()
            valid.flush()
            write_bytes_atomic(record, json.dumps({"done": end, "rows": rows, "dim": dim}).encode())
            bar.update(end - start)
    del matrix, valid
    return CachedMatrix(path, valid_path)


def image_features(space, paths: Sequence[Path], source_hash: str, batch_size: int = 32) -> CachedMatrix:
    """The retrieval space's features of every image (decoded ahead in threads); unreadable images are marked."""
    from retriever.feed import decoded_batches

    def compute(start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        values = np.zeros((end - start, space.dim), np.float32)
        ok = np.zeros(end - start, np.uint8)
        offset = 0
        for batch in decoded_batches(paths[start:end], batch_size):
            good = [i for i, d in enumerate(batch) if d.image is not None]
            if good:
                values[[offset + i for i in good]] = space.encode_images([batch[i].image for i in good])
                ok[[offset + i for i in good]] = 1
            offset += len(batch)
        return values, ok

    key = cache_key("images", space.model_id, source_hash)
    return cached_matrix("features", key, len(paths), space.dim, compute, "image features", chunk=min(CHUNK, 1024))


def text_matrix(encoder, texts: Sequence[str], source_hash: str, name: str, desc: str) -> CachedMatrix:
    """Embeddings of texts (CLIP text features, or the metric's targets) by ``encoder.encode_text``."""
    def compute(start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        return encoder.encode_text(texts[start:end]), np.ones(end - start, np.uint8)

    key = cache_key(name, encoder.model_id, source_hash)
    return cached_matrix(name, key, len(texts), encoder.dim, compute, desc, dtype="float32")
