"""`unprompt doctor`: can this machine serve a profile? One line per check (ok, warn or fail, and a fix).

Checks, in order: the profile; the weights of each model (loaded through the same code that serves) and their
ids; each index present, committed, whole (sizes; SHA-256 with ``checksums``) and built by the profile's
towers; the regressor heads' fit; GPU, VRAM and CUDA (a missing GPU is a line, not a failure); RAM and disk
against ``index_build.plan``; the thread choice; the service port; package versions against unprompt's own
requirements. Only a ``fail`` means the service cannot start.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

from retriever.errors import UnpromptError

Status = Literal["ok", "warn", "fail"]
GiB = 1 << 30


@dataclass
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.message}" + (f"\n      fix: {self.fix}" if self.fix else "")


def run_checks(profile_name: str | None, checksums: bool = False, host: str | None = None,
               port: int | None = None) -> Iterator[Check]:
    """Every check, as it finishes (a check that cannot run because an earlier one failed says so)."""
    from retriever.profile import load_profile

    try:
        profile = load_profile(profile_name)
    except UnpromptError as exc:
        yield Check("profile", "fail", str(exc), "give a built-in name (lite, kaggle) or a valid .toml path")
        return
    yield Check("profile", "ok", f"{profile.name} ({profile.source or 'built in'})")
    spaces = yield from _weights(profile)
    yield from _indexes(profile, spaces.get("retrieval"), spaces.get("rerank"), checksums)
    yield from _heads(profile, spaces.get("retrieval"))
    yield _gpu(profile)
    yield from _memory_and_disk(profile)
    yield _threads()
    yield _port(host, port)
    yield from _packages()


def _profile_arg(profile) -> str:
    """How a fix names the profile: its built-in name, or the file it came from."""
    from retriever.profile import builtin_profiles, load_profile

    if profile.name in builtin_profiles() and load_profile(profile.name).source == profile.source:
        return profile.name
    return profile.source or profile.name


def _guard(name: str, fix: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except UnpromptError as exc:
        return Check(name, "fail", str(exc), fix)
    except (OSError, RuntimeError, ValueError) as exc:
        return Check(name, "fail", f"{type(exc).__name__}: {str(exc)[:300]}", fix)


def _weights(profile):
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder

    spaces: dict = {}
    fix = "provide the weights as the message says (no hub downloads here), or pick the lite profile"

    def load(role: str, spec) -> Check:
        spaces[role] = create_space(spec)
        return Check(f"weights {role}", "ok", spaces[role].model_id)

    yield _guard("weights retrieval", fix, lambda: load("retrieval", profile.retrieve.space))
    if profile.rerank.space == "retrieval":
        spaces["rerank"] = spaces.get("retrieval")
    else:
        yield _guard("weights rerank", fix, lambda: load("rerank", profile.rerank.space))
    yield _guard("weights metric", fix, lambda: Check("weights metric", "ok",
                                                      sentence_encoder(profile.metric_model).model_id))
    return spaces


def _indexes(profile, retrieval, rerank, checksums: bool) -> Iterator[Check]:
    from retriever.index_files import TMP_SUFFIX, read_record, verify_files
    from retriever.paths import index_dir

    for ref in profile.retrieve.indexes:
        name = f"index {ref.name}"
        directory = index_dir(ref.name)
        rebuild = f"unprompt setup --profile {_profile_arg(profile)}"

        def check() -> Check:
            record = read_record(directory)
            verify_files(directory, record, checksums=checksums)
            if retrieval is not None and record.model_id != retrieval.text_model_id:
                return Check(name, "fail", f"built with {record.model_id}, the profile retrieves with "
                                           f"{retrieval.text_model_id}", f"{rebuild} --force")
            if (ref.rerank_vectors == "stored" and rerank is not None and rerank is not retrieval
                    and rerank.text_model_id != record.model_id and rerank.text_model_id not in record.rerank_caches):
                return Check(name, "warn", f"no stored rerank vectors for {rerank.text_model_id}: texts are embedded "
                                           "on demand", f"{rebuild} --force")
            leftovers = [p.name for p in directory.iterdir() if p.name.endswith(TMP_SUFFIX)]
            extra = f"; {len(leftovers)} leftover file(s) of a killed build (removed by the next commit)" if leftovers else ""
            return Check(name, "ok", f"build {record.build_id}, {record.count:,} rows, {record.factory}, "
                                     f"{'checksums' if checksums else 'sizes'} match{extra}")

        yield _guard(name, rebuild, check)


def _heads(profile, retrieval) -> Iterator[Check]:
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.errors import HeadMismatchError, MissingWeightsError
    from retriever.paths import resolve_home_path
    from retriever.stages.regress import HeadRegressor

    if profile.regress.kind != "head":
        yield Check("head", "ok", f"none needed (regress.kind = {profile.regress.kind})")
        return
    metric = sentence_encoder(profile.metric_model)
    train = (f"unprompt train-regressor --profile {_profile_arg(profile)} --prompts PROMPTS.txt "
             "[--pairs PAIRS.csv] (see the README's recipe)")
    for ref in profile.regress.heads:
        path = resolve_home_path(ref.path)
        name = f"head {ref.path}"
        try:
            space = retrieval if ref.space == "retrieval" else create_space(ref.space)
            if space is None:
                yield Check(name, "fail", "not checked: the retrieval weights did not load", "fix the weights first")
                continue
            HeadRegressor(path, space.model_id, space.dim, metric.model_id, metric.dim)
            yield Check(name, "ok", f"{path} fits {space.model_id} -> {metric.model_id}")
        except MissingWeightsError:
            status: Status = "fail" if profile.regress.require_head else "warn"
            yield Check(name, status, f"missing ({path}): the service "
                        + ("refuses to start (require_head)" if status == "fail"
                           else "starts, but the final embedding comes from retrieval and assembly alone"), train)
        except (HeadMismatchError, UnpromptError) as exc:
            status = "fail" if profile.regress.require_head else "warn"
            yield Check(name, status, str(exc), train)


def _gpu(profile) -> Check:
    import torch

    needs = profile.retrieve.space.kind == "open_clip"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        if needs:
            return Check("gpu", "warn", f"no CUDA GPU (torch {torch.__version__}, built for CUDA {built}): the CLIP "
                                        "towers run on the CPU, slowly", "serve on a machine with a CUDA GPU")
        return Check("gpu", "ok", f"no CUDA GPU (torch {torch.__version__}); {profile.name} runs on the CPU")
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    return Check("gpu", "ok", f"{torch.cuda.device_count()} x {props.name}, {total / GiB:.1f} GiB VRAM "
                              f"({free / GiB:.1f} free), CUDA {torch.version.cuda}, cuDNN "
                              f"{torch.backends.cudnn.version()}, torch {torch.__version__}")


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _memory_and_disk(profile) -> Iterator[Check]:
    from index_build.plan import plan_setup
    from retriever.index_files import read_record
    from retriever.paths import home

    try:
        plans = plan_setup(profile).indexes
    except UnpromptError as exc:
        yield Check("plan", "warn", f"cannot plan the indexes: {exc}", "check the profile's manifests")
        return
    ram_need = sum(p.ram_bytes for p in plans)
    mem = _meminfo()
    available = mem.get("MemAvailable", 0)
    ram = f"the indexes need ~{ram_need / GiB:.1f} GiB to serve (plan), {available / GiB:.1f} GiB available " \
          f"of {mem.get('MemTotal', 0) / GiB:.1f}"
    if available and ram_need > available:
        yield Check("ram", "warn", ram + " (memory-mapped files will page)", "more RAM, or smaller indexes "
                    "(--memory-budget picks IVF-PQ)")
    else:
        yield Check("ram", "ok", ram)
    missing = []
    for p in plans:
        try:
            read_record(Path(p.path))
        except UnpromptError:
            missing.append(p)
    root = home()
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    disk_need = sum(p.disk_bytes for p in missing)
    text = f"{free / GiB:.1f} GiB free under {root}; indexes still to build need ~{disk_need / GiB:.1f} GiB (plan)"
    if disk_need > free:
        yield Check("disk", "fail" if missing else "warn", text, "free disk space, or set UNPROMPT_HOME elsewhere")
    else:
        yield Check("disk", "ok", text)


def _threads() -> Check:
    import torch

    from retriever.threads import current_plan

    plan = current_plan()  # the thread plan in force (retriever.threads: affinity, cgroup quota)
    cpus = plan.usable
    threads = torch.get_num_threads()
    text = f"torch uses {threads} thread(s) on {cpus} CPU(s) this process may run on ({plan.describe()})"
    if threads > cpus:
        return Check("threads", "warn", text + ": oversubscribed", f"set OMP_NUM_THREADS={cpus}")
    return Check("threads", "ok", text)


def _port(host: str | None, port: int | None) -> Check:
    from api.settings import Settings

    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:  # UNPROMPT_PORT=99999, say
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return Check("port", "fail", f"bad service settings: {problems}", "fix the UNPROMPT_* variable named")
    host, port = host or settings.host, port if port is not None else settings.port
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return Check("port", "warn", f"{host}:{port} is taken ({exc.strerror}): perhaps unprompt already serves "
                                         "there", "stop the other server, or `unprompt serve --port N`")
    return Check("port", "ok", f"{host}:{port} is free")


def _packages() -> Iterator[Check]:
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires("unprompt") or []
    except importlib.metadata.PackageNotFoundError:
        yield Check("packages", "warn", "unprompt is not installed as a package", "pip install -e .")
        return
    found, bad = [], []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            bad.append(f"{req.name} missing")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req.name} {version} (wants {req.specifier})")
        found.append(f"{req.name} {version}")
    if bad:
        yield Check("packages", "fail", "; ".join(bad), "pip install -e . (or the wheel) in this environment")
    keys = ("torch", "open_clip_torch", "faiss-cpu", "sentence-transformers", "fastapi", "numpy", "polars")
    shown = [f for f in found if f.split()[0] in keys]
    yield Check("packages", "ok", f"unprompt {importlib.metadata.version('unprompt')}; " + ", ".join(shown))
