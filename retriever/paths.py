"""Where unprompt keeps indexes, heads and caches: $UNPROMPT_HOME, default ~/.cache/unprompt."""

from __future__ import annotations

import importlib.util
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


# import name -> the distribution pip installs it from, where they differ (the dev set's image packages)
DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}


def local_file(value: str, base: Path | None = None) -> Path:
    """``pkg:<package>/<file>`` inside an installed package, or a path (relative ones under ``base`` when given).
    ValueError when the package is not installed, its name is not one, or the path leaves the package."""
    if not value.startswith("pkg:"):
        path = Path(value).expanduser()
        return path if path.is_absolute() or base is None else base / path
    found = package_file(value[4:])
    if found is None:
        package = value[4:].partition("/")[0]
        dist = DISTRIBUTIONS.get(package, package)
        raise ValueError(f"{value} needs the package {package!r}, which is not installed: `pip install {dist}` "
                         "(the dev set's image packages all come with `pip install -e '.[test]'`)")
    return found


def package_file(spec: str) -> Path | None:
    """'<package>/<file>' (a ``pkg:`` path without its prefix) inside an installed package, found without
    importing the package (importing can have side effects: clip_interrogator's starts downloads). None when
    the package is not installed; ValueError for a bad name or a path that leaves the package."""
    package, _, rel = spec.partition("/")
    if not package.isidentifier():
        raise ValueError(f"pkg:{spec}: {package!r} is not a package name")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(list(found.submodule_search_locations)[0]).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"pkg:{spec} points outside the package {package!r}")
    return target
