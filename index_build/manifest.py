"""Manifests: which text sources go into an index, and how each is read, shaped and filtered.

A manifest is TOML (or YAML) like::

    name = "components-lite"

    [[sources]]
    name = "artists"
    path = "pkg:data_manifests/clip_interrogator/artists.txt"   # file, glob, pkg:<package>/<file>, or a URL
                                                      # (hf://datasets/..., https://..., s3://..., globs too)
    kind = "artist"                                   # caption | subject | medium | movement | artist | flavour ...
    template = "by {}"                                # optional
    min_chars = 2
    max_chars = 200
    blocked_words = ["nsfw"]
    rows = 5300                                       # estimate for `setup --dry-run`
    license = "MIT"

    [dedup]
    near = false                                      # also drop texts equal up to case and punctuation
"""

from __future__ import annotations

import glob
import hashlib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from retriever.errors import ManifestError
from retriever.paths import local_file
from retriever.strict import Strict as _Strict, format_validation_error

Format = Literal["auto", "text", "csv", "jsonl", "parquet"]
_SUFFIX_FORMATS = {".txt": "text", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class Source(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    kind: str = Field(pattern=r"^[a-z_]+$")
    format: Format = "auto"
    column: str = "text"
    template: str = "{}"
    min_chars: int = Field(default=1, ge=0)
    max_chars: int = Field(default=500, ge=1)
    blocked_words: list[str] = []
    limit: int | None = Field(default=None, ge=1, description="read at most this many rows (samples, tests)")
    dataset: str | None = Field(default=None, description="Hugging Face dataset repo; `path` is then inside it")
    revision: str = Field(default="main", description="dataset revision: branch, tag or commit")
    explode: bool = Field(default=False, description="the column holds lists of texts: one row per text")
    transform: Literal["none", "components"] = Field(
        default="none", description="components: split each text on `split_on`, keep fragments seen min_count times, "
                                    "most frequent first")
    split_on: str = ","
    min_count: int = Field(default=1, ge=1)
    rows: int | None = Field(default=None, ge=0, description="rows the source holds (an estimate, for --dry-run)")
    license: str = ""

    @property
    def location(self) -> str:
        """The path, or for a dataset source its hf:// URL."""
        from index_build.remote import dataset_url

        return dataset_url(self.dataset, self.revision, self.path) if self.dataset else self.path

    @field_validator("template")
    @classmethod
    def _one_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError("template must contain exactly one '{}'")
        return v


class Dedup(_Strict):
    near: bool = False


class Manifest(_Strict):
    name: str
    description: str = ""
    license: str = ""
    sources: list[Source] = Field(min_length=1)
    dedup: Dedup = Dedup()
    base_dir: str = ""

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[Source]) -> list[Source]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return v

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json(exclude={"base_dir"}).encode()).hexdigest()[:16]


def resolve_manifest_path(value: str | Path) -> Path:
    """A path, or the name of a manifest shipped in data_manifests/ (e.g. 'components.toml')."""
    p = Path(value).expanduser()
    if p.is_file():
        return p
    shipped = resources.files("data_manifests") / str(value)
    if shipped.is_file():
        return Path(str(shipped))
    raise ManifestError(f"manifest not found: {value}")


def load_manifest(value: str | Path) -> Manifest:
    path = resolve_manifest_path(value)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ManifestError(f"manifest {path} cannot be read ({exc.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = tomllib.loads(text)
    except Exception as exc:  # tomllib and yaml raise their own types
        raise ManifestError(f"manifest {path} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path} must be a table of settings, not {type(data).__name__}")
    data.setdefault("name", path.stem)
    data["base_dir"] = str(path.parent)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"manifest {path} is invalid: {format_validation_error(exc)}") from None


def source_files(source: Source, base_dir: str) -> list[str]:
    """Expand a source's path: pkg:<package>/<file>, a URL (see index_build.remote), a glob, or a plain path
    relative to the manifest."""
    from index_build.remote import expand, is_remote

    if source.dataset or is_remote(source.path):
        return expand(source.location, source.name)
    if source.path.startswith("pkg:"):
        try:
            target = local_file(source.path)
        except ValueError as exc:
            raise ManifestError(f"source {source.name!r}: {exc}") from None
        if not target.is_file():
            raise ManifestError(f"source {source.name!r}: {source.path} does not exist")
        return [str(target)]
    if "://" in source.path:
        raise ManifestError(f"source {source.name!r}: unknown URL scheme in {source.path}")
    pattern = Path(source.path).expanduser()
    if not pattern.is_absolute():
        pattern = Path(base_dir) / pattern
    files = sorted(p for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    if not files:
        raise ManifestError(f"source {source.name!r}: no files match {pattern}")
    return files


def source_format(source: Source, path: str) -> str:
    if source.format != "auto":
        return source.format
    name = path.rsplit("/", 1)[-1].split("?")[0]
    fmt = _SUFFIX_FORMATS.get(Path(name).suffix.lower())
    if fmt is None:
        raise ManifestError(f"source {source.name!r}: cannot tell the format of {name}; set format = ...")
    return fmt
