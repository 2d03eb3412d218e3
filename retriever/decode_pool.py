"""Decoding untrusted images in worker processes, where a time limit and a memory limit can hold.

A decode in a thread cannot be stopped, and the memory a decoder took stays with the process. Here each
image is decoded by :func:`retriever.images.admit_image` in one of a few warm worker processes (pebble's
``ProcessPool``, started lazily, on the first image):

* a decode that runs past ``ImageLimits.decode_seconds`` is stopped by killing its worker (pebble starts
  a fresh one) and refused as ``too_slow``; the other workers go on, so one slow file delays nobody else
  beyond that limit;
* each worker's address space is capped (``RLIMIT_AS``) at what it had after start-up plus
  ``memory_bytes``, so a decoder that asks for more gets a MemoryError (``too_large``) or dies (also
  ``too_large``), and the memory of a killed worker goes back to the system;
* only the admitted, shrunk RGB image comes back (its raw bytes: at most about 3 MB at the 1024-pixel
  working side).

One pool per worker count and memory budget is shared by everything in a process (the service's apps, the
batched CLI path); it stops when the process exits. The Python API (``Interrogator.interrogate`` on a path)
decodes in its own process and has the format, pixel and memory checks, but no time limit.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import Future, TimeoutError as FutureTimeout
from pathlib import Path

from PIL import Image

from retriever.images import ImageLimits, ImageRejected, admit_image, read_image_file
from retriever.metadata import GenerationMetadata, read_metadata

MiB = 1 << 20
DEFAULT_WORKERS = 2
DEFAULT_MEMORY_BYTES = 1024 * MiB  # per worker, over what the worker holds after start-up

# the admitted image, the milliseconds its decode took in the worker, and the prompt the file records (when asked)
Decoded = tuple[Image.Image, float, "GenerationMetadata | None"]


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _init_worker(memory_bytes: int) -> None:
    # this process decodes one image at a time: its warnings filter is its own. The pixel limit decides
    # (Pillow's own bomb warning above Image.MAX_IMAGE_PIXELS would only repeat it on stderr)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if memory_bytes > 0:
        try:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            soft = _vm_size() + memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        except (ImportError, OSError, ValueError, StopIteration):  # not Linux: the pixel and memory checks remain
            pass


def _decode_task(source: bytes | str, limits: ImageLimits, name: str, metadata: bool = False) -> tuple:
    """In a worker: ('ok', size, rgb bytes, ms, recorded prompt or None) or ('refused', reason, message); never
    raises. ``metadata``: also read the recorded prompt from the same bytes (the file is read once)."""
    t0 = time.perf_counter()
    try:
        data = source if isinstance(source, bytes) else read_image_file(source, limits)
        img = admit_image(data, limits, name)
        recorded = read_metadata(data) if metadata else None
        return "ok", img.size, img.tobytes(), (time.perf_counter() - t0) * 1000, recorded
    except ImageRejected as exc:
        return "refused", exc.reason, str(exc)
    except MemoryError:
        return "refused", "too_large", f"{name}: image needs too much memory to decode"


def _context():
    """forkserver where there is one: workers are forked from a small server process that has imported only
    this module (Pillow, numpy), never from the caller. A worker forked from a process that holds the models
    would inherit its free heap, and an allocation served from that heap is invisible to the ``RLIMIT_AS``
    cap; from the server it starts small, and so does every replacement of a killed worker. (Like spawn, a
    worker imports the caller's main module: every entry point of unprompt guards it.) fork, then spawn,
    where forkserver is missing."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["retriever.decode_pool"])
        return ctx
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _warm() -> int:
    return 0


class DecodePool:
    """Warm worker processes that admit images under a wall-clock and a memory limit."""

    def __init__(self, workers: int = DEFAULT_WORKERS, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.workers, self.memory_bytes = max(1, workers), memory_bytes
        self._pool = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._pool is None:
                from pebble import ProcessPool

                self._pool = ProcessPool(max_workers=self.workers, initializer=_init_worker,
                                         initargs=(self.memory_bytes,), context=_context())
            return self._pool

    def warm(self) -> None:
        """Start the workers now (the first image then does not wait for them)."""
        futures = [self._get().schedule(_warm) for _ in range(self.workers)]
        for f in futures:
            f.result()

    def start(self) -> None:
        """Begin starting the workers on a background thread and return at once. The server process and the
        workers start (a fresh interpreter importing Pillow and numpy) while the caller goes on loading its
        models, instead of when the first image arrives. A failure to start is not raised here; the first
        :meth:`submit` meets it."""

        def go() -> None:
            try:
                for _ in range(self.workers):
                    self._get().schedule(_warm)
            except Exception:  # noqa: BLE001 - submit() reports it
                pass

        threading.Thread(target=go, name="unprompt-decode-start", daemon=True).start()

    def submit(self, source: bytes | str | Path, limits: ImageLimits = ImageLimits(),
               name: str | None = None, metadata: bool = False) -> "Future[Decoded]":
        """Admit bytes (or read and admit a file) in a worker; the future raises ImageRejected on refusal.
        Cancelling it while the decode runs stops the worker."""
        name = name or (str(source) if not isinstance(source, bytes) else "image")
        source = source if isinstance(source, bytes) else os.path.abspath(source)  # a worker's cwd is its own
        inner = self._get().schedule(_decode_task, args=(source, limits, name, metadata), timeout=limits.decode_seconds)
        outer: Future[Decoded] = Future()

        def done(f: Future) -> None:
            if f.cancelled():
                outer.cancel()
                return
            try:
                answer = f.result()
            except FutureTimeout:
                outer.set_exception(ImageRejected(
                    "too_slow", f"{name}: decoding took longer than the limit of {limits.decode_seconds:g} s"))
                return
            except Exception as exc:  # pebble's ProcessExpired: the decoder crashed or ran out of memory
                outer.set_exception(ImageRejected(
                    "too_large", f"{name}: the decoder stopped ({exc.__class__.__name__}); the image needs more "
                                 f"memory than a decode may take, or is corrupt"))
                return
            if answer[0] == "ok":
                _, size, raw, ms, recorded = answer
                outer.set_result((Image.frombytes("RGB", size, raw), ms, recorded))
            else:
                outer.set_exception(ImageRejected(answer[1], answer[2]))

        def cancel_inner(f: Future) -> None:
            if f.cancelled():
                inner.cancel()

        outer.add_done_callback(cancel_inner)
        inner.add_done_callback(done)
        return outer

    def admit(self, data: bytes, limits: ImageLimits = ImageLimits(), name: str = "image") -> Image.Image:
        """Blocking :meth:`submit` of bytes: the admitted image, or ImageRejected."""
        return self.submit(data, limits, name).result()[0]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join(5)
                self._pool = None


_SHARED: dict[tuple[int, int], DecodePool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int = DEFAULT_WORKERS, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> DecodePool:
    """The process's pool for this worker count and memory budget (made on first use, stopped at exit)."""
    with _SHARED_LOCK:
        key = (max(1, workers), memory_bytes)
        if key not in _SHARED:
            if not _SHARED:
                atexit.register(_close_all)
            _SHARED[key] = DecodePool(*key)
        return _SHARED[key]


def _close_all() -> None:
    for pool in list(_SHARED.values()):
        pool.close()
