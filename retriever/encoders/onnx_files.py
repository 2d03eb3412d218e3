"""Where exported ONNX models live ($UNPROMPT_HOME/onnx) and whether one is current for the installed weights.

Each model is two files: ``<label>.onnx`` and ``<label>.json``, its record, written last (so a record always
describes a whole model file). The record names the weights file it was exported from (its path, size and
modification time) and the model file's own size: a changed or reinstalled weights package, or a model file cut
short, makes the export stale, and the model runs in torch until ``unprompt setup`` exports it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from retriever.paths import home

FORMAT = 1


def onnx_dir() -> Path:
    return home() / "onnx"


def classifier_label(name: str) -> str:
    return name


def sentence_label(folder: Path) -> str:
    """A sentence model's label: its folder's name and a digest of where it is (two installs, two exports)."""
    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:10]
    return f"sentence-{folder.name}-{where}"


def source_stamp(source: Path) -> dict:
    """What identifies the weights an export was made from. OSError when the file is not there."""
    st = source.stat()
    return {"path": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class Exported:
    path: Path  # the .onnx file
    record: dict


def model_paths(label: str) -> tuple[Path, Path]:
    """(the model file, its record) for a label."""
    return onnx_dir() / f"{label}.onnx", onnx_dir() / f"{label}.json"


def current_export(label: str, source: Path) -> Exported | None:
    """The export of ``label`` made from ``source`` as it is now, or None (missing, stale, cut short, damaged
    record). Reads one small file and stats two: no model is loaded."""
    model, record_path = model_paths(label)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        stamp, size = source_stamp(source), model.stat().st_size
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("source") != stamp \
            or record.get("model_size") != size:
        return None
    return Exported(model, record)


def record_for(source: Path, model: Path, **facts) -> dict:
    """The record of a model file just written from ``source`` (``facts``: what the loader needs, and checks)."""
    return {"format": FORMAT, "source": source_stamp(source), "model_size": model.stat().st_size, **facts}
