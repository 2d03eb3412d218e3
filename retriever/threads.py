"""How many CPU threads this process uses, decided in one place (CLI, service, builder and Python API alike).

The CPUs a process may really use are fewer than ``os.cpu_count()`` more often than not: its affinity mask
(``taskset``, a cpuset) and its cgroup's CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1: a pod
limited to 2 CPUs on a 64-core host). The default is that number, split so that the pools never ask for more.
CPUs that other processes keep busy are not taken off: a pool whose threads sleep while they wait (below) gets
its fair share of a busy CPU. On 2 cores beside two ``yes``, a pool of 2 ran the lite pipeline over 40 images
about 20% faster than a pool of 1 on ONNX Runtime, and as fast on torch; beside two PyTorch jobs whose threads
spin, within 5% of a pool of 1 (bench/contention.py times whole predicts). ``--threads N`` or
``$UNPROMPT_THREADS`` fixes the count; a user's own ``$OMP_NUM_THREADS`` is honoured too.

The plan is applied twice: ``configure_environment`` before torch (or faiss) loads OpenMP, so that its pool
never spins (``OMP_WAIT_POLICY=PASSIVE``, libgomp's switch; ``KMP_BLOCKTIME=0`` for an Intel OpenMP runtime)
and child processes inherit the same limits; then ``apply_threads`` sets torch's intra-op and inter-op pools
(inter-op can only be set before any inter-op work: unprompt never forks torch work, so it gets one thread).
numpy's OpenBLAS, whose own pthreads pool spins after every call, runs on the calling thread
(``calm_blas_before_numpy``, ``calm_loaded_blas``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

THREADS_ENV = "UNPROMPT_THREADS"
THREADS_PER_CPU = 4  # a fixed count may oversubscribe the host this much, no more (each count starts pools)
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_OURS = "_UNPROMPT_OMP_NUM_THREADS"  # the OMP_NUM_THREADS unprompt itself set (children plan again)
# OpenBLAS's own pthreads pool (numpy's) runs on the caller: see calm_loaded_blas. An OpenMP-backed OpenBLAS
# (faiss's) ignores OPENBLAS_NUM_THREADS and follows OMP_NUM_THREADS (a 4096-query flat search took the same
# time at 1 and 2, and twice as long with OMP_NUM_THREADS=1).
SPINNING_BLAS_THREADS = "1"


@dataclass(frozen=True)
class ThreadPlan:
    """What this process runs with: the usable CPUs, and how they are split."""

    usable: int  # CPUs the affinity mask and the cgroup quota allow
    intra_op: int  # torch's (and faiss's, BLAS's) OpenMP pool
    inter_op: int  # torch's inter-op pool
    decode: int  # image-decoding workers (they run while the model waits on its input)
    source: str  # "--threads", "UNPROMPT_THREADS", "OMP_NUM_THREADS" or "auto"

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"threads: {self.intra_op} intra-op, {self.inter_op} inter-op, {self.decode} decode "
                f"({self.source}; {self.usable} usable CPUs)")


def _parse_v2_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max``: "$MAX $PERIOD" (microseconds), "max" for no limit -> CPUs, or None."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def _parse_v1(quota_text: str, period_text: str) -> float | None:
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota of this process's cgroup and its parents, in CPUs (v2, else v1); None when unlimited.

    ``proc_cgroup`` is the text of /proc/self/cgroup (read when not given); ``root`` where cgroupfs is mounted.
    """
    try:
        text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2: the unified tree
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists():
                    limits += _walk_up(base, rel, lambda d: _parse_v2_max((d / "cpu.max").read_text()))
                    break
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own tree
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = root / name
                if (base / "cpu.cfs_quota_us").exists():
                    limits += _walk_up(base, rel, lambda d: _parse_v1((d / "cpu.cfs_quota_us").read_text(),
                                                                       (d / "cpu.cfs_period_us").read_text()))
                    break
    return min(limits) if limits else None


def _walk_up(base: Path, rel: str, read) -> list[float]:
    """The limit of the cgroup at base/rel and of each parent up to the root, where one is set."""
    found, parts = [], [p for p in rel.split("/") if p and p != ".."]
    for depth in range(len(parts), -1, -1):
        try:
            value = read(base.joinpath(*parts[:depth]))
        except (OSError, ValueError, IndexError):
            continue
        if value is not None:
            found.append(value)
    return found


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup quota (rounded up), at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(affinity, math.ceil(quota - 1e-9) if quota else affinity))


def split(budget: int) -> tuple[int, int, int]:
    """(intra-op, inter-op, decode) for a budget of CPUs.

    Decoding runs ahead while the model computes, then sleeps on a full queue, so on two CPUs or fewer the model
    keeps the whole budget and one decode worker shares it; from three CPUs up a quarter (at least one) decodes
    and the model gets the rest, so the two never ask for more than the budget."""
    if budget <= 2:
        return budget, 1, 1
    decode = max(1, budget // 4)
    return budget - decode, 1, decode


def max_threads() -> int:
    """The largest thread count --threads or $UNPROMPT_THREADS may fix: THREADS_PER_CPU x the host's CPUs."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def threads_problem(n: int) -> str | None:
    """Why ``n`` is not a thread count this host accepts (1 to :func:`max_threads`), or None when it is."""
    if n < 1:
        return f"must be at least 1, not {n}"
    if n > max_threads():
        return f"must be at most {max_threads()} ({THREADS_PER_CPU} x the {os.cpu_count() or 1} CPUs of this host), not {n}"
    return None


def _explicit(value: int | None) -> tuple[int, str] | None:
    """A thread count someone chose: --threads, $UNPROMPT_THREADS, or a $OMP_NUM_THREADS that unprompt did not set.
    The first two are checked against :func:`threads_problem` (an unbounded count would start that many pools)."""
    from retriever.errors import UnpromptError

    if value is not None:
        problem = threads_problem(value)
        if problem:
            raise UnpromptError(f"--threads {problem}")
        return value, "--threads"
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit():
            raise UnpromptError(f"${THREADS_ENV} must be a whole number of threads, at least 1 (got {raw!r})")
        problem = threads_problem(int(raw))
        if problem:
            raise UnpromptError(f"${THREADS_ENV} {problem}")
        return int(raw), THREADS_ENV
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1 and os.environ.get(_OURS) != omp:
        return int(omp), "OMP_NUM_THREADS"
    return None


def plan_threads(threads: int | None = None) -> ThreadPlan:
    """The thread plan: ``threads`` (--threads), else $UNPROMPT_THREADS, else $OMP_NUM_THREADS, else the usable CPUs."""
    usable = usable_cpus()
    fixed = _explicit(threads)
    if fixed is not None:
        n, source = fixed
        intra, inter, decode = n, 1, min(split(n)[2], usable)  # decode workers are processes: never past the CPUs
        return ThreadPlan(usable, intra, inter, decode, source)
    return ThreadPlan(usable, *split(usable), "auto")


_PLAN: ThreadPlan | None = None


def current_plan() -> ThreadPlan:
    """The plan in force (made on first use, and put in the environment; torch's pools are set by
    :func:`apply_threads`, which every torch model calls: a predict on ONNX Runtime never imports torch)."""
    return _PLAN or configure_environment()


def decode_workers() -> int:
    """How many image-decoding workers this process should run (the decode share of the plan). Made without
    loading torch: the CLI starts its decoders before torch is imported."""
    return (_PLAN or configure_environment()).decode


def environment(plan: ThreadPlan) -> dict[str, str]:
    """Variables that size and calm OpenMP/BLAS pools, for this process before torch loads and for children."""
    n = str(plan.intra_op)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": SPINNING_BLAS_THREADS,
            "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def configure_environment(threads: int | None = None) -> ThreadPlan:
    """Make the plan and put it in os.environ: call before torch or faiss is imported (the CLI's first step).

    The pool sizes are the plan's; a wait policy the user set is left as it is. Children inherit both (and plan
    again for themselves: a count unprompt set is marked as its own, not the user's)."""
    global _PLAN
    plan = plan_threads(threads)
    for key, value in environment(plan).items():
        if key.endswith("_NUM_THREADS"):
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    os.environ[_OURS] = os.environ["OMP_NUM_THREADS"]
    _PLAN = plan
    calm_loaded_blas()
    return plan


def calm_blas_before_numpy() -> None:
    """The CLI's first step, before numpy is imported: numpy's OpenBLAS then starts no thread pool at all (one
    started at import spins for a while even with no work: 0.1 s of CPU)."""
    os.environ["OPENBLAS_NUM_THREADS"] = SPINNING_BLAS_THREADS


def calm_loaded_blas() -> int:
    """Run the OpenBLAS libraries already loaded with their own pthreads pool on the calling thread; returns how
    many were limited.

    numpy's OpenBLAS starts a pool as wide as the host when numpy is imported, which the Python API's caller may
    have done before any plan (it reads ``OPENBLAS_NUM_THREADS`` then, never again), and its threads spin after
    each call: in a 7-image predict on one thread that pool's spinning took 0.33 s of CPU beside 1.7 s of work,
    CPU that ONNX Runtime's or torch's own threads, or other processes, needed. numpy's products here are small
    (candidate scores, rescoring a few hundred rows); the heavy ones run in ONNX Runtime, torch and faiss,
    whose pools the plan sizes. Set through threadpoolctl; an OpenMP-backed OpenBLAS (faiss's) follows
    ``OMP_NUM_THREADS`` and is left alone."""
    if "numpy" not in sys.modules:
        return 0
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return 0
    spinning = ThreadpoolController().select(internal_api="openblas", threading_layer="pthreads")
    spinning.limit(limits=1)
    return len(spinning.lib_controllers)


def apply_threads(threads: int | None = None) -> ThreadPlan:
    """Set torch's (and faiss's, if loaded) pools to the plan, made on first use or when ``threads`` is given.

    Idempotent; returns the plan in force."""
    plan = _PLAN if _PLAN is not None and threads is None else configure_environment(threads)
    import torch

    if torch.get_num_threads() != plan.intra_op:
        torch.set_num_threads(plan.intra_op)
    if torch.get_num_interop_threads() != plan.inter_op:
        try:
            torch.set_num_interop_threads(plan.inter_op)
        except RuntimeError:  # inter-op work already ran in this process: its pool stays as it is
            pass
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(plan.intra_op)
    return plan


def batch_workers(batches: int) -> int:
    """How many threads should run independent batches at once, each with a single-threaded torch pool: the
    plan's intra-op CPUs when there are at least two batches for each (fewer batches run one after another on
    the whole pool). Two one-thread workers on 2 cores embed the lite build's short texts about a fifth faster
    than one two-thread pool (small matrices: no barrier per op, each core's cache holds its own batch) and
    never wait for a descheduled partner; bench/results/lite-build-cpu.txt."""
    workers = current_plan().intra_op
    return workers if workers > 1 and batches >= 2 * workers else 1


_BATCH_POOL = threading.Lock()  # one pool of batch workers at a time in a process


@contextmanager
def batch_pool(batches: int) -> Iterator[ThreadPoolExecutor | None]:
    """Worker threads for ``batches`` independent batches, each thread with a one-thread torch pool, or None
    where they should run one after another (:func:`batch_workers`; or another pool is running already).

    torch sizes a thread's pool on its first op from a process-wide count; that count is one while the workers
    run and the plan's again afterwards. Threads that already ran torch work keep their own pool size (MKL's
    too, in this torch build: a 2048 x 2048 product on the main thread took 130 ms either way)."""
    workers = batch_workers(batches)
    if workers == 1 or not _BATCH_POOL.acquire(blocking=False):
        yield None
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="batch", initializer=_one_op_thread)
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel_futures=True)  # Ctrl-C, or a batch failed: the batches not started are dropped
        raise
    finally:
        pool.shutdown()
        import torch

        torch.set_num_threads(current_plan().intra_op)
        _BATCH_POOL.release()


def _one_op_thread() -> None:
    """A batch worker's initializer: its first torch call sizes its pool now (so that the count restored later
    cannot reach it), then to one thread."""
    import torch

    torch.get_num_threads()
    torch.set_num_threads(1)


def in_force() -> dict:
    """The plan and what torch really runs with (for /v1/info and --verbose)."""
    plan = current_plan()
    info = plan.as_dict()
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_intra_op"] = torch.get_num_threads()
        info["torch_inter_op"] = torch.get_num_interop_threads()
    return info
