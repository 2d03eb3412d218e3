"""Which runtime runs the lite models (EfficientNet-Lite and the MiniLM sentence model): ONNX Runtime or torch.

On a CPU, ONNX Runtime runs the same models from files that ``unprompt setup`` exports from the installed
weights (``retriever.encoders.onnx_export``), and a predict that uses them never imports torch: ``import
onnxruntime`` takes about 0.2 s where ``import torch`` takes 1.3-2.5 s on the 2-core test host, and that import
was half of a short run's CPU time (bench/results/startup-cpu.txt, contention-cpu.txt). Their outputs match
torch's to 1e-5 (checked at export, and tests/test_onnx_runtime.py checks MiniLM against sentence-transformers
to 1e-6). A GPU, an explicit device, missing files or a missing package keep torch, which is the fallback.

``$UNPROMPT_RUNTIME``: ``auto`` (the default), ``onnx`` (refuse to start without the files) or ``torch``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from retriever.errors import MissingWeightsError, UnpromptError

RUNTIME_ENV = "UNPROMPT_RUNTIME"
RUNTIMES = ("auto", "onnx", "torch")
_NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # present while the NVIDIA kernel driver is loaded


def choose_runtime(requested: str, *, device: str | None, onnxruntime_installed: bool, exported: bool,
                   nvidia_driver: bool) -> str:
    """"onnx" or "torch" for one model. ``requested``: auto, onnx or torch; ``device``: one asked for explicitly
    (None: any); ``exported``: the model's ONNX file is there and current for the installed weights."""
    if requested not in RUNTIMES:
        raise UnpromptError(f"${RUNTIME_ENV} must be one of {', '.join(RUNTIMES)} (got {requested!r})")
    if requested == "torch":
        return "torch"
    on_cpu = device in (None, "cpu")
    if requested == "onnx":
        if not on_cpu:
            raise UnpromptError(f"${RUNTIME_ENV}=onnx runs on the CPU only; device {device!r} needs torch")
        if not onnxruntime_installed:
            raise MissingWeightsError(f"${RUNTIME_ENV}=onnx needs ONNX Runtime: `pip install onnxruntime`")
        if not exported:
            raise MissingWeightsError(f"${RUNTIME_ENV}=onnx needs the exported models: run `unprompt setup`, "
                                      f"or unset ${RUNTIME_ENV} to run them in torch")
        return "onnx"
    if not on_cpu or (device is None and nvidia_driver):  # a GPU: torch runs the models there
        return "torch"
    return "onnx" if onnxruntime_installed and exported else "torch"


def requested_runtime() -> str:
    return os.environ.get(RUNTIME_ENV, "").strip().lower() or "auto"


def may_fall_back(runtime: str | None) -> bool:
    """Whether a model chosen for ONNX Runtime may run in torch after all when its file will not load: only
    when nobody fixed the runtime (``runtime`` None here, and ``$UNPROMPT_RUNTIME`` auto)."""
    return runtime is None and requested_runtime() == "auto"


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def runtime_for(exported: Path | None, device: str | None = None) -> str:
    """The runtime for a model whose current ONNX file is ``exported`` (None: there is none), on this machine."""
    return choose_runtime(requested_runtime(), device=device, onnxruntime_installed=onnxruntime_installed(),
                          exported=exported is not None, nvidia_driver=_NVIDIA_DRIVER.exists())


def ort_session(path: Path):
    """An ONNX Runtime CPU session for one model file, sized to the thread plan (retriever.threads): the plan's
    intra-op threads, one inter-op thread, and no spinning (ONNX Runtime's threads spin-wait by default, which on
    a busy CPU takes the time other processes and our own decode workers need)."""
    import onnxruntime as ort

    from retriever.threads import current_plan

    options = ort.SessionOptions()
    options.intra_op_num_threads = current_plan().intra_op
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's input
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a damaged file: onnxruntime raises its own exception types
        raise MissingWeightsError(f"could not load the exported model {path} ({exc.__class__.__name__}); "
                                  "remove it and run `unprompt setup` to export it again") from None


def runtime_of(model: object) -> str:
    """What runs a model: "onnx", "torch" or "sentence-transformers"; for a bridge space its classifier's and
    text model's, joined with "+" where they differ (a CLIP space runs in torch)."""
    parts = [getattr(getattr(model, part, None), "runtime", None) for part in ("classifier", "text")]
    named = [p for p in parts if p]
    return "+".join(dict.fromkeys(named)) if named else getattr(model, "runtime", "torch")


def runtimes(retrieval: object, rerank: object, metric: object) -> dict[str, str]:
    """What runs each of an interrogator's models (for /v1/info and --verbose)."""
    return {"retrieval": runtime_of(retrieval), "rerank": runtime_of(rerank), "metric": runtime_of(metric)}
