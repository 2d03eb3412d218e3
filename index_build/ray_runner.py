"""Run the embedding stage on Ray: shard jobs become tasks on a pool of encoder actors.

Each actor builds its own encoder from a picklable factory (a profile's space spec, say),
so the model is loaded once per actor, not once per shard. Results come back as they
finish and are written by the caller exactly as a local run writes them, so a Ray build
gives the same shards and the same index.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from index_build.embed import ShardJob
from retriever.encoders.base import TextEncoder

EncoderFactory = Callable[[], TextEncoder]


class RayRunner:
    def __init__(self, factory: EncoderFactory, actors: int = 2, address: str | None = None,
                 num_cpus_per_actor: float = 1, num_gpus_per_actor: float = 0) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)

        @ray.remote(num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor)
        class _Embedder:
            def __init__(self, make: EncoderFactory) -> None:
                from retriever._compat import ensure_torchvision_importable

                ensure_torchvision_importable()  # inside the worker too

                self.encoder = make()

            def embed(self, texts: list[str]) -> np.ndarray:
                return np.asarray(self.encoder.encode_text(texts), dtype=np.float16)

        self._ray = ray
        self._actors = [_Embedder.remote(factory) for _ in range(max(1, actors))]

    def run(self, jobs: list[ShardJob]) -> Iterator[tuple[ShardJob, np.ndarray]]:
        ray = self._ray
        pending: dict = {}
        queue = list(jobs)
        idle = list(self._actors)
        while queue or pending:
            while queue and idle:
                job, actor = queue.pop(0), idle.pop()
                pending[actor.embed.remote(job.texts())] = (job, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            job, actor = pending.pop(done[0])
            idle.append(actor)
            yield job, ray.get(done[0])
