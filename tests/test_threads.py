"""The thread plan: usable CPUs (affinity, cgroup v1/v2 quota), the split, the options."""

from __future__ import annotations

import subprocess

import pytest

from retriever import threads
from retriever.errors import UnpromptError
from tests.conftest import run_cli


def _v2_tree(root, limits: dict[str, str]):
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for rel, text in limits.items():
        d = root / rel if rel else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(text + "\n")


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    _v2_tree(tmp_path, {"pod": "max 100000", "pod/app": "150000 100000"})
    assert threads.cgroup_cpu_limit(tmp_path, "0::/pod/app\n") == 1.5
    _v2_tree(tmp_path, {"pod": "50000 100000"})  # a parent's limit binds its children
    assert threads.cgroup_cpu_limit(tmp_path, "0::/pod/app\n") == 0.5
    _v2_tree(tmp_path, {"pod": "max 100000", "pod/app": "max 100000"})
    assert threads.cgroup_cpu_limit(tmp_path, "0::/pod/app\n") is None
    # the unified tree of a hybrid mount; hostile text is no limit, never a crash
    hybrid = tmp_path / "hybrid"
    _v2_tree(hybrid / "unified", {"x": "200000 100000"})
    assert threads.cgroup_cpu_limit(hybrid, "0::/x\n") == 2.0
    _v2_tree(tmp_path, {"pod/app": "lots of cpu"})
    assert threads.cgroup_cpu_limit(tmp_path, "0::/pod/app\n") is None
    assert threads.cgroup_cpu_limit(tmp_path, "garbage") is None


def test_cgroup_v1_cfs_quota(tmp_path):
    cpu = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    for d, quota in ((tmp_path / "cpu,cpuacct", "-1"), (cpu, "300000")):
        (d / "cpu.cfs_quota_us").write_text(quota + "\n")
        (d / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n") == 3.0
    assert threads.cgroup_cpu_limit(tmp_path, "4:cpu,cpuacct:/\n") is None  # -1: unlimited


def test_usable_cpus_rounds_a_quota_up_and_never_exceeds_affinity(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.5)
    assert threads.usable_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 64.0)
    assert threads.usable_cpus() == 4
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 0.2)
    assert threads.usable_cpus() == 1


def test_the_split_never_asks_for_more_than_the_budget():
    assert threads.split(1) == (1, 1, 1) and threads.split(2) == (2, 1, 1)
    for budget in range(3, 65):
        intra, inter, decode = threads.split(budget)
        assert intra + decode == budget and intra >= 1 and decode >= 1 and inter == 1


def test_the_default_is_the_usable_cpus_busy_or_not(monkeypatch):
    for key in ("UNPROMPT_THREADS", "OMP_NUM_THREADS", threads._OURS):
        monkeypatch.delenv(key, raising=False)
    for cpus, split in ((1, (1, 1, 1)), (2, (2, 1, 1)), (16, (12, 1, 4))):
        monkeypatch.setattr(threads, "usable_cpus", lambda n=cpus: n)
        plan = threads.plan_threads()
        assert (plan.usable, plan.intra_op, plan.inter_op, plan.decode, plan.source) == (cpus, *split, "auto")
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]  # they never sleep
    try:
        assert threads.plan_threads().intra_op == 2  # beside them, a sleeping pool of 2 still beats 1
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_explicit_counts_win_and_bad_ones_are_clear_errors(monkeypatch):
    for key in ("UNPROMPT_THREADS", "OMP_NUM_THREADS", threads._OURS):
        monkeypatch.delenv(key, raising=False)
    assert threads.plan_threads(3).intra_op == 3 and threads.plan_threads(3).source == "--threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own
    assert threads.plan_threads().source == "OMP_NUM_THREADS" and threads.plan_threads().intra_op == 1
    monkeypatch.setenv(threads._OURS, "1")  # set by a parent unprompt: plan again
    assert threads.plan_threads().source == "auto"
    monkeypatch.setenv("UNPROMPT_THREADS", "5")
    plan = threads.plan_threads()
    assert (plan.intra_op, plan.inter_op, plan.decode, plan.source) == (5, 1, 1, "UNPROMPT_THREADS")
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("UNPROMPT_THREADS", bad)
        with pytest.raises(UnpromptError, match="UNPROMPT_THREADS"):
            threads.plan_threads()


def test_cli_threads_option_verbose_and_env(monkeypatch, tmp_path):
    for key in threads.environment(threads.plan_threads(1)):  # restored after the test
        monkeypatch.setenv(key, "")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "_PLAN", threads._PLAN)
    r = run_cli("predict", str(tmp_path / "none.jpg"), "--threads", "2", "--verbose")
    assert r.returncode == 2 and "threads: 2 intra-op, 1 inter-op, 1 decode (--threads;" in r.stderr
    assert threads.os.environ["OMP_NUM_THREADS"] == "2" and threads.os.environ["OMP_WAIT_POLICY"] == ""
    r = run_cli("predict", str(tmp_path / "none.jpg"), "--threads", "0")
    assert r.returncode == 2 and "--threads" in r.stderr
    r = run_cli("setup", "--dry-run", env={"UNPROMPT_THREADS": "many"})
    assert r.returncode == 2 and "UNPROMPT_THREADS must be a whole number" in r.stderr and "Traceback" not in r.stderr


def test_apply_sets_torch_and_reports_it(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "_PLAN", threads._PLAN)
    before = torch.get_num_threads()
    try:
        plan = threads.apply_threads(1)
        info = threads.in_force()
        assert torch.get_num_threads() == 1 and info["intra_op"] == 1 and info["torch_intra_op"] == 1
        assert plan.decode == threads.decode_workers() == 1
    finally:
        torch.set_num_threads(before)


def test_thread_counts_are_bounded_by_the_host_and_decoders_by_the_usable_cpus(monkeypatch):
    for key in ("UNPROMPT_THREADS", "OMP_NUM_THREADS", threads._OURS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    assert threads.max_threads() == 8
    plan = threads.plan_threads(8)
    assert plan.intra_op == 8 and plan.decode == 2  # a quarter of 8, but never more processes than CPUs
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")  # the user's own: honoured, the decoders still capped
    assert threads.plan_threads().decode == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    with pytest.raises(UnpromptError, match="--threads must be at most 8"):
        threads.plan_threads(9)
    monkeypatch.setenv("UNPROMPT_THREADS", "300")
    with pytest.raises(UnpromptError, match=r"\$UNPROMPT_THREADS must be at most 8 \(4 x the 2 CPUs"):
        threads.plan_threads()
    r = run_cli("predict", "none.jpg", "--threads", "100000", env={"UNPROMPT_THREADS": ""})
    assert r.returncode == 2 and "argument --threads: must be at most 8" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("setup", "--dry-run", env={"UNPROMPT_THREADS": "300"})
    assert r.returncode == 2 and "unprompt: error: $UNPROMPT_THREADS must be at most 8" in r.stderr


_BLAS_PROBE = """
import json, os, sys
{first}
import numpy
from threadpoolctl import threadpool_info

def numpy_blas():
    return [i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"] and i["user_api"] == "blas"]

before = numpy_blas()
from retriever import threads
plan = threads.configure_environment(2)
print(json.dumps({{"before": before, "after": numpy_blas(), "omp": os.environ["OMP_NUM_THREADS"],
                  "openblas": os.environ["OPENBLAS_NUM_THREADS"]}}))
"""


@pytest.mark.parametrize("first", ["import api.cli", "pass"], ids=["cli", "python-api"])
def test_numpy_openblas_runs_on_the_caller(first):
    """numpy's OpenBLAS keeps a pthreads pool whose threads spin after each call: in the CLI it starts none (the
    variable is set before numpy loads); where numpy came first (the Python API's caller), the plan limits it.
    torch's and faiss's pools keep the plan's count (OMP_NUM_THREADS)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _BLAS_PROBE.format(first=first)], capture_output=True, text=True,
                         env=env, timeout=120, cwd=str(threads.Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after"] == [1] and seen["openblas"] == "1" and seen["omp"] == "2"
    if first == "import api.cli":
        assert seen["before"] == [1]  # never started a pool
    else:
        assert seen["before"] == [min(os.cpu_count() or 1, 64)]  # as wide as the host until the plan limits it


WORKER_PROBE = """\
import sys
from {module} import main


def probe():
    return "api.cli" in sys.modules


if __name__ == "__main__":
    from retriever.decode_pool import DecodePool

    pool = DecodePool(workers=1)
    print(pool._get().schedule(probe).result(timeout=120))
"""


@pytest.mark.parametrize("module, imported", [("api.console", False), ("api.cli", True)])
def test_decode_workers_of_the_console_script_do_not_import_the_command_line(tmp_path, module, imported):
    """A decode worker re-runs the main script's module first: pip's script for `api.console:main` imports only
    that module; one that imported `api.cli` (the entry point before) makes every worker import the CLI."""
    import subprocess
    import sys

    script = tmp_path / "unprompt"
    script.write_text(WORKER_PROBE.format(module=module))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(imported)


def test_the_console_script_is_the_light_entry_point():
    import tomllib
    from pathlib import Path

    from api.console import main

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["unprompt"] == "api.console:main"
    assert callable(main)
