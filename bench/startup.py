"""Time to the first prompt: ``unprompt predict cat.jpg`` in a fresh process against ``python -c "import torch"``,
and ``unprompt setup`` with nothing to do, measured in the same run (interleaved, median of ``--repeat``).

    .venv/bin/python bench/startup.py --out bench/results/startup-cpu.txt

Also times the same commands from the code at ``--baseline-rev`` (exported with ``git archive``, run with this
interpreter), so the report says what changed. The lite index must be current in $UNPROMPT_HOME (``unprompt
setup`` once). Wall seconds are what a user waits for; CPU seconds (user + system, of the child) are what the
process itself spent, which a busy machine disturbs less.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from contention import BASELINE_REV, MAIN, THREAD_VARS, export_rev  # noqa: E402

CAT = "data_manifests/examples/images/cat.jpg"


def timed(cmd: list[str], tree: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(tree)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=str(tree), env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = export_rev(args.baseline_rev)
    py = sys.executable
    commands = {
        "python -c 'import torch'": ([py, "-c", "import torch"], ROOT),
        "predict cat.jpg (new)": ([py, "-c", MAIN, "predict", str(ROOT / CAT)], ROOT),
        "setup, nothing to do (new)": ([py, "-c", MAIN, "setup"], ROOT),
        "predict cat.jpg (baseline)": ([py, "-c", MAIN, "predict", str(ROOT / CAT)], base),
        "setup, nothing to do (baseline)": ([py, "-c", MAIN, "setup"], base),
    }
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    try:
        timed(commands["predict cat.jpg (new)"][0], ROOT)  # warm the page cache and the on-disk caches
        for _ in range(args.repeat):
            for name, (cmd, tree) in commands.items():
                runs[name].append(timed(cmd, tree))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    lines = [f"$ .venv/bin/python bench/startup.py {' '.join(sys.argv[1:])}".rstrip(),
             f"{time.strftime('%Y-%m-%d %H:%M')} UTC; {os.cpu_count()} CPUs; load average at start {load}; "
             f"median of {args.repeat}; baseline {args.baseline_rev}", "",
             f"{'command':<34}{'wall s':>9}{'CPU s':>9}{'wall / import torch':>22}"]
    torch_wall, torch_cpu = med["python -c 'import torch'"]
    for name, (wall, cpu) in med.items():
        lines.append(f"{name:<34}{wall:>9.2f}{cpu:>9.2f}{wall / torch_wall:>21.2f}x")
    lines.append("")
    lines.append(f"predict cat.jpg / import torch: {med['predict cat.jpg (new)'][0] / torch_wall:.2f}x wall, "
                 f"{med['predict cat.jpg (new)'][1] / torch_cpu:.2f}x CPU (baseline "
                 f"{med['predict cat.jpg (baseline)'][0] / torch_wall:.2f}x wall)")
    lines.append(f"setup with nothing to do: {med['setup, nothing to do (new)'][0]:.2f} s "
                 f"(baseline {med['setup, nothing to do (baseline)'][0]:.2f} s)")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
