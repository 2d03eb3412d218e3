"""Where unprompt keeps indexes, heads and caches: $UNPROMPT_HOME, default ~/.cache/unprompt."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "UNPROMPT_HOME"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "unprompt").expanduser()


def resolve_home_path(value: str, subdir: str = "") -> Path:
    """An absolute or ./relative path is taken as is; a bare name lives under $UNPROMPT_HOME/subdir."""
    path = Path(value).expanduser()
    if path.is_absolute() or value.startswith("."):
        return path
    return home() / subdir / path if subdir else home() / path


def index_dir(name: str) -> Path:
    return resolve_home_path(name, "indexes")
