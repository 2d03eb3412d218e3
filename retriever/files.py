"""Writing files so that a crash or a full disk never leaves half a file, and checking outputs before work.

Every file unprompt writes (index files, shards, heads, caches, submissions, reports) goes through
:func:`atomic_write`: a temporary name in the same folder, fsync, then one rename. On any failure
the temporary file is removed and the old file, if any, is left as it was.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from retriever.errors import UnpromptError

TMP_SUFFIX = ".tmp"
# C0 and C1 control characters (NUL, ESC, tab, LF, CR, DEL ...): what a text from a file or a request must not
# carry into a terminal, a line-per-record file or a database
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# a CSV cell starting with one of these runs as a formula in spreadsheets (OWASP "CSV injection")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    """A text cell for a CSV file: one that starts like a formula gets a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def printable(text: "str | os.PathLike[str]") -> str:
    """A path (or a message naming one) fit for any output: the bytes of a file name that are not UTF-8 (the
    lone surrogates ``os.fsdecode`` leaves) become visible ``\\xNN`` escapes, so CSV, TSV, JSON and stderr
    always get valid UTF-8. Every path unprompt's CLI writes out goes through here."""
    s = os.fspath(text)
    try:
        return os.fsencode(s).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to: escape it as it is
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def restore_cell(text: str) -> str:
    """:func:`safe_cell` undone (tables read back unprompt's own CSV files with their original texts)."""
    return text[1:] if text.startswith("'") and text[1:2] and text[1:2] in "".join(FORMULA_PREFIXES) else text


def tmp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path``, ``.<name>.<pid>.tmp`` (a build's garbage collection removes
    leftovers; :func:`remove_stale_temporaries` those of a process that was killed)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM), or cannot tell: leave its file alone
        return True
    return True


def remove_stale_temporaries(path: Path) -> int:
    """Remove the temporaries of ``path`` (``.<name>.<pid>.tmp`` beside it, regular files) whose process no
    longer exists: what a run killed with SIGKILL leaves. Returns how many went; never raises."""
    prefix, own, removed = f".{path.name}.", os.getpid(), 0
    try:
        entries = os.scandir(path.parent)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            pid = entry.name[len(prefix):-len(TMP_SUFFIX)]
            if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX) and pid.isdigit()):
                continue
            if int(pid) == own or _alive(int(pid)):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
    return removed


@contextmanager
def atomic_write(path: str | Path, fsync: bool = True, clean_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename. ``clean_stale``: first
    remove this target's temporaries left by dead processes (one listing of the folder: writers of many small
    files in one folder, such as sidecars, pass False)."""
    path = Path(path)
    tmp = tmp_name(path)
    if clean_stale:
        remove_stale_temporaries(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        tmp.replace(path)
    except OSError as exc:  # a full disk, say: name the file the user asked for, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, clean_stale: bool = True) -> None:
    with atomic_write(path, clean_stale=clean_stale) as tmp:
        tmp.write_bytes(data)


def _writable_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise UnpromptError(f"{what}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise UnpromptError(f"{what}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnpromptError(f"{what}: folder {folder} is not writable")


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output file that could not be written or should not be replaced: a folder,
    a missing folder, or anything that is not a regular file (a device such as /dev/null, a FIFO, a socket, a
    symbolic link: the atomic rename would put a regular file in its place)."""
    p = Path(path).expanduser()
    if p.is_symlink():
        raise UnpromptError(f"{what}: {p} is a symbolic link; give the path of a regular file")
    if p.is_dir():
        raise UnpromptError(f"{what}: {p} is a folder; give a file name")
    if p.exists() and not p.is_file():
        raise UnpromptError(f"{what}: {p} exists and is not a regular file (a device, FIFO or socket); "
                            f"give the path of a regular file or a new one")
    _writable_folder(p.parent if str(p.parent) else Path("."), what)
    return p


def check_distinct_outputs(outputs: dict[str, str | Path | None]) -> None:
    """Refuse one file named for two outputs (the second write would replace the first)."""
    seen: dict[Path, str] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise UnpromptError(f"{seen[key]} and {what} name the same file ({path}); give two different files")
        seen[key] = what


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that is a file, or whose nearest existing parent is not writable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UnpromptError(f"{what}: {p} exists and is not a folder")
    existing = p
    while not existing.exists():
        existing = existing.parent
    _writable_folder(existing, what)
    return p
