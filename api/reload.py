"""Hot swap in the service: ``POST /v1/admin/reload`` and, with ``UNPROMPT_WATCH_INDEXES=1``, a watcher that
polls the profile's index directories for a new committed build (``build.json`` is the commit point, so a
build in progress is never seen). The checks and the warm-up are ``retriever.hot_swap``; here one lock keeps
reloads one at a time, the swap is one assignment of ``Service.interrogator`` (a batch holds the interrogator
it started with, so requests in flight finish on the old build, released when the last of them is done), and
the metrics and log say what happened."""

from __future__ import annotations

import asyncio
import logging
import threading

from fastapi.concurrency import run_in_threadpool

from api.deps import Service
from api.metrics import Metrics
from retriever.hot_swap import Reload, canary_image, committed_builds, prepare_reload
from retriever.pipeline import Interrogator


class Reloader:
    def __init__(self, service: Service, metrics: Metrics, log: logging.Logger, checksums: bool = True) -> None:
        self.service, self.metrics, self.log, self.checksums = service, metrics, log, checksums
        self._lock = threading.Lock()
        self.refused: dict[str, str] = {}  # index -> build id refused (the watcher does not retry it)
        self._shown: dict[str, str] = {}  # index -> build id its gauge series is labelled with
        self.show(service.interrogator)

    def show(self, interrogator: Interrogator) -> None:
        """The index gauges: one series per index, labelled with the build id serving now."""
        for name, index in interrogator.indexes.items():
            if name in self._shown:
                self.metrics.index_build.remove(name, self._shown[name])
            self._shown[name] = index.record.build_id
            self.metrics.index_build.labels(name, index.record.build_id).set(index.loaded_at)
            self.metrics.index_load.labels(name).set(index.load_s)

    def _warm(self, candidate: Interrogator) -> None:
        """The canary interrogation, on the model thread: it waits its turn like any batch."""
        self.service.batcher.executor.submit(candidate.interrogate_batch, [canary_image()]).result()

    def reload(self, skip_refused: bool = False) -> Reload:
        """Load, check and warm what changed, then swap; blocking (run it off the event loop)."""
        with self._lock:
            result = prepare_reload(self.service.interrogator, self.checksums, self._warm,
                                    self.refused if skip_refused else None)
            if result.interrogator is not None:
                self.service.interrogator = result.interrogator  # the swap: one reference
                self.show(result.interrogator)
            for name, build_id in result.loaded.items():
                self.refused.pop(name, None)
                self.metrics.reloads.labels(name, "loaded").inc()
                self.log.info("index reloaded", extra={"fields": {"index": name, "build_id": build_id}})
            for name, why in result.refused.items():
                self.refused[name] = result.tried.get(name, "")
                self.metrics.reloads.labels(name, "refused").inc()
                self.log.warning("index build refused; the old build keeps serving",
                                 extra={"fields": {"index": name, "build_id": result.tried.get(name, ""),
                                                   "reason": why}})
            return result

    async def watch(self, interval_s: float) -> None:
        """Poll for committed builds that differ from the serving ones; reload when one appears."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                serving = {n: ix.record.build_id for n, ix in self.service.interrogator.indexes.items()}
                committed = await run_in_threadpool(committed_builds, self.service.interrogator)
                changed = {n: b for n, b in committed.items() if b and b != serving[n] and self.refused.get(n) != b}
                if changed:
                    await run_in_threadpool(self.reload, True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher must never die of one bad poll
                self.log.warning("index watch failed", extra={"fields": {"error": str(exc)[:300]}})
