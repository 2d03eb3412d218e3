"""The index directory format, in one place: its schema (the build record), file names, the writer that
stages files and commits them, and the checks a reader makes. ``retriever.index`` reads and searches;
``index_build.build`` only orchestrates.

Layout of an index directory::

    build.json                  the record; written last, by one rename, so it is the commit point
    build-<build_id>.json       an append's previous generation, kept whole (its files too) for a rollback
    index-<build_id>.faiss      FAISS index, inner product over unit vectors
    meta-<build_id>.arrow       one row per vector: text, kind, source (Arrow IPC; format 1 wrote parquet)
    vectors-<build_id>.npy      optional float16 copy of the vectors (exact rescoring, rerank cache)
    rerank-<model>-<build_id>.npy   optional float16 text vectors of another model (a stored rerank cache)
    .shards/, .texts/           the build's resumable work: embedding shards and staged texts

Rows are grouped by kind; ``kinds`` in the record gives each kind's [start, end) row range, so a search
can be limited to one kind without a second index. Loading checks sizes against the record (seconds at
any size); ``unprompt verify`` checks every SHA-256 (minutes at tens of millions of rows).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator, Literal

from pydantic import BaseModel, ValidationError

from retriever.errors import IndexIntegrityError
from retriever.files import TMP_SUFFIX, atomic_write, write_bytes_atomic

RECORD_NAME = "build.json"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
FILE_ROLES = ("index", "meta", "vectors", "rerank")


class FileEntry(BaseModel):
    path: str
    bytes: int
    sha256: str


class SourceEntry(BaseModel):
    name: str
    kind: str
    content_hash: str
    count: int


class BuildRecord(BaseModel):
    format: int = FORMAT_VERSION
    build_id: str
    name: str
    model_id: str
    dim: int
    count: int
    factory: str
    exact: bool = True
    metric: Literal["ip"] = "ip"
    rerank_caches: dict[str, str] = {}  # model id -> role in `files` of a float16 (count, dim') array
    kinds: dict[str, tuple[int, int]]
    files: dict[str, FileEntry]
    sources: list[SourceEntry]
    manifest_hash: str = ""
    timings_s: dict[str, float] = {}
    versions: dict[str, str] = {}  # faiss (the library's own version) and each installed faiss wheel, torch, ...
    gpus: int = 0  # GPUs faiss saw when it built the index (0: a CPU build: fast-scan codes, CPU k-means)
    created: str = ""
    parent: str = ""  # an append: the build id of the generation it extends (kept for `build-index --rollback`)
    appended: list[str] = []  # an append: the sources it added (names)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_record(directory: Path) -> BuildRecord:
    path = directory / RECORD_NAME
    if not path.is_file():
        raise IndexIntegrityError(
            f"no index at {directory} (missing {RECORD_NAME}); build it with `unprompt setup` "
            "or `unprompt build-index MANIFEST --out DIR`"
        )
    try:
        record = BuildRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"index record {path} is corrupt: {str(exc).splitlines()[0]}") from None
    if record.format not in READABLE_FORMATS:
        raise IndexIntegrityError(f"index {directory} has format {record.format}; this unprompt reads "
                                  f"{', '.join(map(str, READABLE_FORMATS))}: rebuild it with `unprompt setup`")
    return record


def file_path(directory: Path, role: str, entry: FileEntry) -> Path:
    """Where a recorded file is: inside ``directory``. A path that is absolute or climbs out of it (``..``, a
    drive, a backslash) is refused: a build must hold its own files, or verify would vouch for another's."""
    pure = PurePosixPath(entry.path)
    if (not entry.path or pure.is_absolute() or PureWindowsPath(entry.path).anchor or "\\" in entry.path
            or ".." in pure.parts):
        raise IndexIntegrityError(f"index {directory}: {role} file {entry.path!r} is not inside the index folder "
                                  "(the build record names a path that is absolute or leaves it); rebuild the index")
    return directory / pure


def verify_files(directory: Path, record: BuildRecord, checksums: bool = True) -> None:
    """Sizes always, SHA-256 when ``checksums``: a mismatch means a truncated, corrupt or mixed index. Every
    file must lie inside ``directory`` (``file_path``); every loader (load, verify, reload, rollback) comes here."""
    for role, entry in record.files.items():
        path = file_path(directory, role, entry)
        if not path.is_file():
            raise IndexIntegrityError(f"index {directory}: {role} file {entry.path} is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise IndexIntegrityError(
                f"index {directory}: {role} file {entry.path} has {size} bytes, the build record says {entry.bytes} "
                "(truncated or replaced); rebuild the index"
            )
        if checksums and sha256_file(path) != entry.sha256:
            raise IndexIntegrityError(
                f"index {directory}: {role} file {entry.path} fails its SHA-256 check (corrupt); rebuild the index"
            )


class IndexWriter:
    """Writes one build's files under their final names (each atomically), then commits them all at once."""

    def __init__(self, out: Path, build_id: str) -> None:
        self.out, self.build_id = out, build_id
        self.files: dict[str, FileEntry] = {}

    def name(self, role: str, suffix: str) -> str:
        return f"{role}-{self.build_id}{suffix}"

    @contextmanager
    def file(self, role: str, suffix: str) -> Iterator[Path]:
        """Yield a temporary path to write the ``role`` file; it is renamed and checksummed on success."""
        name = self.name(role, suffix)
        with atomic_write(self.out / name) as tmp:
            yield tmp
        self.files[role] = FileEntry(path=name, bytes=(self.out / name).stat().st_size,
                                     sha256=sha256_file(self.out / name))

    def commit(self, record: BuildRecord, keep_dirs: dict[str, set[str]], keep_parent: BuildRecord | None = None
               ) -> BuildRecord:
        """Write build.json (the commit point), then drop other builds' files, leftovers of killed builds, and
        work folders (``keep_dirs``: work folder -> the entries still in use) that no longer serve.
        ``keep_parent``: an append's previous generation, whose record is saved as ``build-<id>.json`` before
        the commit and whose files are kept, so ``rollback`` can return to it (one generation back)."""
        record = record.model_copy(update={"files": self.files, "build_id": self.build_id})
        keep = {self.build_id}
        if keep_parent is not None:
            keep.add(keep_parent.build_id)
            write_bytes_atomic(self.out / generation_name(keep_parent.build_id),
                               keep_parent.model_dump_json(indent=2).encode())
        write_bytes_atomic(self.out / RECORD_NAME, record.model_dump_json(indent=2).encode())
        for path in self.out.iterdir():
            stale = (path.name.split("-", 1)[0] in FILE_ROLES + ("build",) and path.name != RECORD_NAME
                     and not any(b in path.name for b in keep))
            leftover = path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
            if path.is_file() and (stale or leftover):
                path.unlink(missing_ok=True)
        for folder, wanted in keep_dirs.items():
            if (self.out / folder).is_dir():
                for entry in (self.out / folder).iterdir():
                    if entry.name in wanted:
                        continue
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        return record


def generation_name(build_id: str) -> str:
    return f"build-{build_id}.json"


def rollback(directory: Path) -> tuple[BuildRecord, BuildRecord]:
    """Return an appended index to the generation it extended: (the record left, the record restored). The
    previous record is checked (its files present at their recorded sizes) and made build.json by one rename."""
    current = read_record(directory)
    if not current.parent:
        raise IndexIntegrityError(f"index {directory}: build {current.build_id} is not an append; there is no "
                                  "previous generation to return to")
    saved = directory / generation_name(current.parent)
    if not saved.is_file():
        raise IndexIntegrityError(f"index {directory}: the previous generation {current.parent} is gone "
                                  f"({saved.name} missing); rebuild instead")
    try:
        previous = BuildRecord.model_validate_json(saved.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"index record {saved} is corrupt: {str(exc).splitlines()[0]}") from None
    verify_files(directory, previous, checksums=False)
    write_bytes_atomic(directory / RECORD_NAME, saved.read_bytes())
    return current, previous
