"""Dynamic micro-batching: concurrent requests share one model batch.

Requests queue up; a collector takes the first and, when other requests are in flight, waits at
most ``max_wait_ms`` for more, up to ``max_batch_size``; a lone request runs at once. Batches run
on a single worker thread, so model work never blocks the event loop and never runs two at once.
Requests with different options (mode, flavours) share the wait but run as separate model batches.
A batch that fails is run again image by image, so only the request whose image fails gets the error.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Sequence

BatchFn = Callable[[Sequence[Any], Hashable], list[Any]]  # (images, options) -> one result per image
_Item = tuple[Any, Hashable, asyncio.Future]


class MicroBatcher:
    def __init__(self, run: BatchFn, max_batch_size: int = 16, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None, enabled: bool = True) -> None:
        self.run = run
        self.max_batch_size = max_batch_size if enabled else 1
        self.max_wait = max_wait_ms / 1000 if enabled else 0.0
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unprompt-model")
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.inflight = 0  # submitted and not yet answered

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, image: Any, options: Hashable = None) -> Any:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.inflight += 1
        try:
            await self.queue.put((image, options, future))
            return await future
        finally:
            self.inflight -= 1

    async def _collect(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait
            # wait for company only when other requests are on their way (alone, run at once)
            while len(batch) < self.max_batch_size and (self.inflight > len(batch) or not self.queue.empty()):
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self.queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self.queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            groups: dict[Hashable, list[_Item]] = {}
            for item in batch:
                if not item[2].cancelled():
                    groups.setdefault(item[1], []).append(item)
            for options, live in groups.items():
                await self._run(live, options)

    async def _run(self, live: list[_Item], options: Hashable) -> None:
        loop = asyncio.get_running_loop()
        if self.on_batch:
            self.on_batch(len(live))
        try:
            results = await loop.run_in_executor(self.executor, self.run, [im for im, _, _ in live], options)
        except Exception as exc:
            if len(live) == 1:
                _settle(live[0][2], exc=exc)
                return
            # one bad image must not fail its neighbours: run each alone, so only its own request fails
            for image, _, fut in live:
                try:
                    _settle(fut, result=(await loop.run_in_executor(self.executor, self.run, [image], options))[0])
                except Exception as alone:
                    _settle(fut, exc=alone)
            return
        for (_, _, fut), result in zip(live, results):
            _settle(fut, result=result)


def _settle(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the client went away
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
