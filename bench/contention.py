"""`unprompt predict` over a folder, idle, beside busy processes and under a CPU quota: today's default threads
against the thread plan (retriever/threads.py) and fixed thread counts, all in one run.

    .venv/bin/python bench/contention.py --out bench/results/contention-cpu.txt
    .venv/bin/python bench/contention.py --busy 2 --repeat 3 --images data_manifests/examples/images
    .venv/bin/python bench/contention.py --tables data_manifests/devset/dev.csv,data_manifests/devset/heldout.csv

Each timing is one fresh process, ``unprompt predict <folder>`` from start to exit (what a user waits for), with
the lite profile and the index in $UNPROMPT_HOME (build it first: ``unprompt setup``). One untimed run of each
configuration comes first: a cold page cache would otherwise cost whichever configuration runs first.

Scenarios: idle (whatever else the machine runs: the load average is printed); beside ``--busy`` CPU-bound
processes of each ``--busy-kind`` (started and killed here, each also bounded by ``timeout``): ``yes`` is
``yes > /dev/null``, one thread that never sleeps; ``torch`` is another PyTorch job (matrix products on
torch's default thread pool, as a training run or a second interrogator would be), whose OpenMP threads spin
while they wait, as today's default's do; under a simulated quota (``taskset`` to ``--quota`` CPUs, fewer
than the host shows).

Configurations: baseline, today's default (the code at ``--baseline-rev``, exported with ``git archive`` to a
temporary folder and run from there, so its threads, imports and start are the old ones); new default (this
tree, no thread option); this tree with ``--threads N`` for each N in ``--fixed``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "73ae2cd"  # main before issue 22
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
               "UNPROMPT_THREADS", "_UNPROMPT_OMP_NUM_THREADS")
MAIN = "import sys; from api.cli import main; sys.exit(main())"


def export_rev(rev: str) -> Path:
    """The tree at ``rev``, without touching the repository's worktrees (git archive | tar)."""
    target = Path(tempfile.mkdtemp(prefix="unprompt-baseline-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def table_images(tables: str) -> list[str]:
    """The image paths of eval tables (``image`` column; ``pkg:`` paths resolved where the package is installed)."""
    from retriever.evaluation.tables import read_pairs

    return [str(path) for table in tables.split(",") for path in read_pairs(ROOT / table)[0]]


def timed_predict(tree: Path, images: list[str], threads: int | None, cpus: str | None, timeout: float) -> float:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(tree)  # ahead of the editable install's finder
    cmd = [sys.executable, "-c", MAIN, "predict", *images, "--format", "tsv"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + cmd
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"predict failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return seconds


TORCH_JOB = ("import torch\n"
             "a = torch.randn(384, 384)\n"
             "while True:\n"
             "    for _ in range(50):\n"
             "        b = a @ a\n")
BUSY_KINDS = {"yes": ["yes"], "torch": [sys.executable, "-c", TORCH_JOB]}


class Busy:
    """N CPU-bound children of one kind (BUSY_KINDS), each bounded by `timeout`, killed on exit."""

    def __init__(self, n: int, limit_s: int, kind: str = "yes") -> None:
        self.n, self.limit_s, self.kind = n, limit_s, kind
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Busy":
        # each in its own process group: killing `timeout` alone would leave its child running, unbounded.
        # The children get the environment of a user who set nothing (torch's own default thread count).
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
        self.procs = [subprocess.Popen(["timeout", str(self.limit_s), *BUSY_KINDS[self.kind]], env=env,
                                       stdout=subprocess.DEVNULL, start_new_session=True) for _ in range(self.n)]
        time.sleep(1.0 if self.kind == "yes" else 4.0)  # let them take their CPUs (torch: past its import)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="data_manifests/examples/images", help="folder of images to predict")
    ap.add_argument("--tables", default=None, help="instead of --images: the images of these eval tables "
                                                   "(comma-separated CSVs, e.g. data_manifests/devset/dev.csv)")
    ap.add_argument("--busy", type=int, default=2, help="busy processes beside predict")
    ap.add_argument("--busy-kind", default="yes,torch", help=f"kinds of busy process, one scenario each: "
                                                            f"{', '.join(BUSY_KINDS)}")
    ap.add_argument("--quota", type=int, default=1, help="CPUs for the taskset scenario")
    ap.add_argument("--fixed", default="1,2,4", help="fixed --threads counts to time")
    ap.add_argument("--repeat", type=int, default=1, help="timings per cell (the median is reported)")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision whose default is the baseline")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before one predict is given up")
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: the busy children are still stopped
    if shutil.which("taskset") is None or shutil.which("yes") is None:
        raise SystemExit("needs taskset and yes (util-linux, coreutils)")
    images = table_images(args.tables) if args.tables else [str((ROOT / args.images).resolve())]
    count = len(images) if args.tables else len(os.listdir(images[0]))
    baseline_tree = export_rev(args.baseline_rev)
    fixed = [int(x) for x in args.fixed.split(",") if x]
    host = os.cpu_count() or 1
    quota_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: args.quota])
    configs = [("baseline (today's default)", baseline_tree, None), ("new default", ROOT, None)] + \
              [(f"--threads {n}", ROOT, n) for n in fixed]
    kinds = [k for k in args.busy_kind.split(",") if k]
    if not set(kinds) <= set(BUSY_KINDS):
        raise SystemExit(f"--busy-kind: one or more of {', '.join(BUSY_KINDS)}")
    scenarios = [("idle", 0, None, "yes")] + [(f"beside {args.busy} busy ({k})", args.busy, None, k) for k in kinds] \
        + [(f"taskset {args.quota} CPU", 0, quota_cpus, "yes")]
    lines = [f"$ .venv/bin/python bench/contention.py {' '.join(sys.argv[1:])}".rstrip(),
             f"{time.strftime('%Y-%m-%d %H:%M')} UTC; host CPUs {host}; images: {count} in "
             f"{args.tables or args.images}; baseline: {args.baseline_rev}; median of {args.repeat}; seconds per predict process", ""]
    print("\n".join(lines), flush=True)
    runs: dict[tuple[str, str], list[float]] = {}
    try:
        for name, tree, threads in configs:  # untimed: the first process of each tree reads its files from disk
            timed_predict(tree, images, threads, None, args.timeout)
        for scenario, busy, cpus, kind in scenarios:
            with Busy(busy, int(args.timeout * len(configs) * args.repeat + 60), kind):
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                for _ in range(args.repeat):
                    for name, tree, threads in configs:  # interleaved: drifting load hits every config alike
                        runs.setdefault((scenario, name), []).append(
                            timed_predict(tree, images, threads, cpus, args.timeout))
            line = f"{scenario}: load average {load} at start"
            print(line, flush=True)
            lines.append(line)
    finally:
        shutil.rmtree(baseline_tree, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    lines.append("")
    first = len(lines)
    header = f"{'configuration':<28}" + "".join(f"{s:>24}" for s, *_ in scenarios)
    lines.append(header)
    for name, _, _ in configs:
        lines.append(f"{name:<28}" + "".join(f"{med[(s, name)]:>23.2f}s" for s, *_ in scenarios))
    lines.append("")
    for scenario, *_ in scenarios:
        base, new = med[(scenario, configs[0][0])], med[(scenario, "new default")]
        best_name = min((c[0] for c in configs[2:]), key=lambda n: med[(scenario, n)])
        lines.append(f"{scenario}: new default {base / new:.2f}x faster than the baseline; "
                     f"{new / med[(scenario, best_name)]:.2f}x the best fixed count ({best_name}, "
                     f"{med[(scenario, best_name)]:.2f}s)")
    print("\n".join(lines[first:]))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
