"""Feed images to the interrogator in batches: decoding runs in worker processes ahead of the model.

``interrogate_files`` is the one batched path of ``predict``, ``submit`` and ``eval``: files are read and
admitted (``retriever.images``) by ``workers`` decode processes (``retriever.decode_pool``: the service's
time and memory limits hold here too) up to ``ahead`` batches before the model needs them
(measured on 2 CPU cores at batch 32: 71-72 images/s against 64-67 decoding inline, tiny-CLIP kaggle profile;
on a GPU the model's time hides the decoding entirely); each batch goes through ``Interrogator.interrogate_batch``
once.
Each file is read once: its bytes are admitted and searched for a recorded prompt (``retriever.metadata``,
unless ``metadata=False``: bounded, and far cheaper than the decode), which the pipeline then answers with.
A batch the model cannot finish (an image that needs too much memory) is retried image by image, so one bad
image costs only its own answer.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from PIL import Image

from retriever.decode_pool import shared_pool
from retriever.errors import UnpromptError
from retriever.images import ImageLimits, admit_image, read_image_file
from retriever.metadata import GenerationMetadata, read_metadata
from retriever.stages.recorded import ImageWithMetadata
from retriever.threads import decode_workers

if TYPE_CHECKING:
    from retriever.pipeline import Interrogation, Interrogator
    from retriever.profile import Mode

DEFAULT_BATCH_SIZE = 16


@dataclass
class Decoded:
    path: str
    image: Image.Image | None = None
    error: str | None = None
    decode_ms: float = 0.0
    recorded: GenerationMetadata | None = None


@dataclass
class Answer:
    path: str
    result: "Interrogation | None" = None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def _decode(path: str, limits: ImageLimits, metadata: bool = True) -> Decoded:
    t0 = time.perf_counter()
    try:
        data = read_image_file(path, limits)
        image = admit_image(data, limits, name=path)
    except UnpromptError as exc:
        return Decoded(path, error=str(exc))
    except MemoryError:
        return Decoded(path, error=f"{path}: the image needs too much memory")
    recorded = read_metadata(data) if metadata else None
    return Decoded(path, image, decode_ms=(time.perf_counter() - t0) * 1000, recorded=recorded)


def _collect(path: str, future: "Future") -> Decoded:
    try:
        image, ms, recorded = future.result()
    except UnpromptError as exc:
        return Decoded(path, error=str(exc))
    return Decoded(path, image, decode_ms=ms, recorded=recorded)


def decoded_batches(paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH_SIZE,
                    limits: ImageLimits = ImageLimits(), workers: int | None = None,
                    ahead: int = 2, metadata: bool = True) -> Iterator[list[Decoded]]:
    """Batches of decoded images in input order, decoding up to ``ahead`` batches ahead of the consumer in
    ``workers`` decode processes (None: the thread plan's decode share, ``retriever.threads``; 0: each batch is
    decoded here when it is asked for, without a time limit);
    ``metadata``: read recorded prompts (from the same bytes, in the worker: bounded and far cheaper than the decode)."""
    batch_size = max(1, batch_size)
    workers = decode_workers() if workers is None else workers
    if workers <= 0:
        for start in range(0, len(paths), batch_size):
            yield [_decode(str(p), limits, metadata) for p in paths[start : start + batch_size]]
        return
    pool = shared_pool(workers)
    pending: deque[tuple[str, Future]] = deque()
    todo = iter(str(p) for p in paths)
    window = batch_size * (ahead + 1)
    try:
        while True:
            for path in todo:
                pending.append((path, pool.submit(path, limits, metadata=metadata)))
                if len(pending) >= window:
                    break
            if not pending:
                return
            yield [_collect(*pending.popleft()) for _ in range(min(batch_size, len(pending)))]
    finally:  # the consumer stopped early (an error, Ctrl-C): decodes not yet wanted are dropped
        for _, future in pending:
            future.cancel()


def start_decoders(workers: int | None = None) -> None:
    """Start the decode workers :func:`decoded_batches` will use, in the background: call it before loading
    the models, so that the workers' start overlaps the model load instead of delaying the first image."""
    shared_pool(decode_workers() if workers is None else workers).start()


def interrogate_files(interrogator: "Interrogator", paths: Sequence[str | Path],
                      batch_size: int = DEFAULT_BATCH_SIZE, limits: ImageLimits = ImageLimits(),
                      mode: "Mode | None" = None, flavours: int | None = None, stages: bool = True,
                      metadata: bool = True) -> Iterator[Answer]:
    """One Answer per path, in input order: a result with its timings (decode and every stage, per image), or
    the reason the image could not be answered. ``stages`` and ``metadata``: as ``Interrogator.interrogate_batch``."""
    for batch in decoded_batches(paths, batch_size, limits, metadata=metadata):
        good = [d for d in batch if d.image is not None]
        t0 = time.perf_counter()
        inputs = [ImageWithMetadata(d.image, d.recorded) for d in good]  # type: ignore[arg-type]
        results = _interrogate(interrogator, inputs, (mode, flavours, stages, metadata)) if good else []
        batch_ms = (time.perf_counter() - t0) * 1000 / max(len(good), 1)
        answers = iter(results)
        for d in batch:
            if d.image is None:
                yield Answer(d.path, error=d.error)
                continue
            result = next(answers)
            if isinstance(result, str):
                yield Answer(d.path, error=f"{d.path}: {result}")
                continue
            timings = {"decode": round(d.decode_ms, 3), **{k: round(v, 3) for k, v in result.timings_ms.items()},
                       "total": round(d.decode_ms + batch_ms, 3)}
            yield Answer(d.path, result, timings_ms=timings)


def _interrogate(interrogator: "Interrogator", images: list, options: tuple) -> list:
    """The batch's results; when the batch fails, each image alone (an error message in its place)."""
    try:
        return interrogator.interrogate_batch(images, *options)
    except (UnpromptError, MemoryError) as exc:
        if len(images) == 1:
            return [str(exc) if isinstance(exc, UnpromptError) else "the image needs too much memory"]
    return [_interrogate(interrogator, [image], options)[0] for image in images]
