"""Run the embedding stage on Ray: shard jobs become tasks on a pool of encoder actors.

Each actor builds its own encoders from picklable factories (a profile's space spec, say), one per text tower
(model id), so a model is loaded once per actor, not once per shard (the first tower as the actor starts: ready
means loaded; another when its shards come, replacing the one before), and the retrieval tower and the rerank
tower are both embedded on the cluster. Results come back as they finish and are written by the caller exactly
as a local run writes them, so a Ray build gives the same shards and the same index.

Placement follows Ray's own accounting (``ray.cluster_resources()``, the cluster's totals, not the driver's
torch): the pool is capped at what the cluster can hold at once (actors waiting for a GPU that no node has would
hang), and each actor must answer a readiness call within ``ready_timeout`` seconds (``ray.wait`` with a
timeout), or the build stops with an error that says what the cluster has. Every node needs the same unprompt
install as the driver (or a ``runtime_env`` given to ``ray.init``): the actors import ``retriever``.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Mapping

import numpy as np

from index_build.embed import ShardJob
from retriever.encoders.base import TextEncoder
from retriever.errors import UnpromptError

EncoderFactory = Callable[[], TextEncoder]
READY_TIMEOUT_S = 600.0  # a bigG text tower loads in about a minute from a local disk; downloads take longer


def actor_gpus(cluster: Mapping[str, float]) -> float:
    """One GPU an actor where the cluster has GPUs (Ray's totals: the driver may be a CPU-only head), none
    otherwise: the actors then run on CPUs."""
    return 1.0 if cluster.get("GPU", 0) >= 1 else 0.0


def actor_count(asked: int, cluster: Mapping[str, float], cpus_per_actor: float, gpus_per_actor: float,
                role: str = "encoder") -> tuple[int, str]:
    """(actors to start, why fewer than asked): at most what the cluster's totals hold at once."""
    limits = []
    if gpus_per_actor > 0:
        limits.append((int(cluster.get("GPU", 0) // gpus_per_actor), f"{cluster.get('GPU', 0):g} GPU"))
    if cpus_per_actor > 0:
        limits.append((int(cluster.get("CPU", 0) // cpus_per_actor), f"{cluster.get('CPU', 0):g} CPU"))
    fit, what = min(limits, default=(asked, ""))
    if fit < 1:
        raise UnpromptError(f"the Ray cluster has {what}; one {role} actor needs {gpus_per_actor:g} GPU and "
                            f"{cpus_per_actor:g} CPU: add a node with them, or run without --ray")
    if fit < asked:
        return fit, f"{asked} {role} actors asked for, the Ray cluster holds {fit} ({what})"
    return asked, ""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else exc.__class__.__name__)[:300]


def import_ray():
    """The ``ray`` module, or a clear error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UnpromptError("--ray needs Ray, which is not installed: `pip install 'unprompt[ray]'` (on every node "
                            "of the cluster), or run without --ray") from None
    return ray


class RayRunner:
    def __init__(self, towers: Mapping[str, EncoderFactory], actors: int = 2, address: str | None = None,
                 num_cpus_per_actor: float = 1, num_gpus_per_actor: float | None = 0,
                 ready_timeout: float = READY_TIMEOUT_S, role: str = "encoder") -> None:
        """``towers``: model id -> factory of that text tower (``partial(text_tower_for, spec)``), or of any
        object with ``encode_text(texts) -> array`` (generate-pairs' pipeline). ``num_gpus_per_actor=None``:
        ``actor_gpus`` of the cluster's totals."""
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UnpromptError(f"cannot start or reach Ray at {address or 'a local instance'}: "
                                    f"{str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__}"
                                    ) from None
        self._ray, self.towers, self.role = ray, dict(towers), role
        cluster = ray.cluster_resources()
        if num_gpus_per_actor is None:
            num_gpus_per_actor = actor_gpus(cluster)
        self.num_gpus_per_actor = num_gpus_per_actor
        n, self.capped = actor_count(max(1, actors), cluster, num_cpus_per_actor, num_gpus_per_actor, role)
        if self.capped:
            print(f"ray: {self.capped}", file=sys.stderr)

        @ray.remote(num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor)
        class _Embedder:
            def __init__(self, towers: Mapping[str, EncoderFactory], first: str) -> None:
                # (create_space, behind the factories, applies the torchvision import fix in the worker too)
                self.towers, self.model_id, self.encoder = towers, first, towers[first]()  # ready = model loaded

            def ready(self) -> bool:
                return True

            def embed(self, model_id: str, texts: list[str]) -> np.ndarray:
                if model_id != self.model_id:  # one tower in memory at a time: all its shards come together
                    self.encoder = None
                    self.encoder, self.model_id = self.towers[model_id](), model_id
                return np.asarray(self.encoder.encode_text(texts), dtype=np.float16)

        self._actors = [_Embedder.remote(self.towers, next(iter(self.towers))) for _ in range(n)]
        self._await_ready(ready_timeout, num_cpus_per_actor, num_gpus_per_actor)

    def _await_ready(self, timeout: float, cpus: float, gpus: float) -> None:
        ray = self._ray
        calls = {actor.ready.remote(): i for i, actor in enumerate(self._actors)}
        ready, waiting = ray.wait(list(calls), num_returns=len(calls), timeout=timeout)
        try:
            ray.get(ready)
        except ray.exceptions.RayError as exc:
            self.shutdown()
            raise UnpromptError(f"a Ray {self.role} actor failed to start: {_first_line(exc)}. Every node needs the "
                                "same unprompt install as this one (or a runtime_env)") from None
        if waiting:
            free = ray.available_resources()
            self.shutdown()
            raise UnpromptError(
                f"{len(waiting)} of {len(calls)} Ray {self.role} actors were not ready after {timeout:g} s (each asks "
                f"{cpus:g} CPU, {gpus:g} GPU; the cluster has {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU "
                "free): free resources, lower --ray-actors, or check that every node has the same unprompt install")

    def shutdown(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []

    def run(self, jobs: list[ShardJob]) -> Iterator[tuple[ShardJob, np.ndarray]]:
        ray = self._ray
        unknown = {job.model_id for job in jobs} - set(self.towers)
        if unknown:
            raise UnpromptError(f"the Ray runner has no encoder for {', '.join(sorted(unknown))}")
        pending: dict = {}
        queue = list(jobs)
        idle = list(self._actors)
        while queue or pending:
            while queue and idle:
                job, actor = queue.pop(0), idle.pop()
                pending[actor.embed.remote(job.model_id, job.texts())] = (job, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            job, actor = pending.pop(done[0])
            idle.append(actor)
            try:
                vectors = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                raise UnpromptError(f"a Ray {self.role} actor failed on shard {job.path.name} of {job.source}: "
                                    f"{_first_line(exc)}") from None
            yield job, vectors
