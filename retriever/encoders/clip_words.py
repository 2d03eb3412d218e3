"""CLIP token counts from a table of words, so that counting needs no tokenizer.

The assembler asks for the CLIP token count of every prompt it tries (the 77-token context). open_clip's
``SimpleTokenizer`` takes a quarter of a second to load (its module builds one at import, and reading the
49k BPE merges builds another), most of the time lite spends on a first prompt beyond loading models.

The count is compositional: the tokenizer cleans the text, splits it into words with one regular expression,
and byte-pair-encodes each word on its own. On printable ASCII without ``&`` the cleaning is whitespace and
case only (see ``retriever.encoders.clip_tokens``), and the split is the tokenizer's own pattern with its
letter and digit classes written for ASCII. So a text's count is 2 (start and end tokens) plus the sum of
its words' counts, exactly, whenever every word is in the table. A text with a word not in the table, or
outside printable ASCII, is counted by the tokenizer, and its words are learnt.

The table lives in ``$UNPROMPT_HOME/cache``, one file per BPE vocabulary (its SHA-256 names it), so any
entry in it was counted by the same merges. ``unprompt setup`` fills it with the words of the indexes it
builds; a process saves what it learnt at exit. It is a cache: a missing, unreadable or malformed file is an
empty table, and a file that cannot be written is left alone.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import re
import stat
import threading
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from retriever.files import write_bytes_atomic
from retriever.paths import home

# open_clip's SimpleTokenizer pattern (special tokens, contractions, letters, one digit, other runs) for
# lower-cased printable ASCII, where \p{L} is [a-z] and \p{N} is [0-9]
_WORD = re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_PRINTABLE = re.compile(r"[ -~]*")  # space to tilde: no controls, tabs, newlines, or anything outside ASCII
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def words(text: str) -> list[str] | None:
    """The words the tokenizer byte-pair-encodes one by one, or None where cleaning could do more than
    whitespace and case (non-printable or non-ASCII characters, ``&`` entities)."""
    if "&" in text or not _PRINTABLE.fullmatch(text):
        return None
    return _WORD.findall(" ".join(text.lower().split()))


def bpe_file() -> Path | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / BPE_FILE
    return path if path.is_file() else None


class WordTable:
    """word -> CLIP BPE tokens, loaded from and saved to ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.counts: dict[str, int] = _read(path) if path is not None else {}
        self._learnt = 0
        self._lock = threading.Lock()

    def count(self, text: str) -> int | None:
        """Tokens of ``text``, start and end included, or None when a word is not in the table."""
        found = words(text)
        if found is None:
            return None
        total = 2
        for word in found:
            n = self.counts.get(word)
            if n is None:
                return None
            total += n
        return total

    def learn(self, texts: Iterable[str], encode: Callable[[str], list[int]]) -> int:
        """Count the words of ``texts`` that the table lacks with ``encode`` (the tokenizer's, one word at a
        time); returns how many were added."""
        added = 0
        with self._lock:
            for text in texts:
                for word in words(text) or ():
                    if word not in self.counts:
                        self.counts[word] = len(encode(word))
                        added += 1
            self._learnt += added
        return added

    def save(self) -> None:
        """Merge what this process learnt into the file (atomically; what another process saved meanwhile is
        kept). Errors are ignored: the table is a cache."""
        if self.path is None or not self._learnt:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                merged = {**_read(self.path), **self.counts}
                self._learnt = 0
            write_bytes_atomic(self.path, json.dumps(merged, separators=(",", ":")).encode())
        except OSError:
            pass


MAX_FILE_BYTES = 64 << 20  # the words of tens of millions of captions fit in a few MB


def _read(path: Path) -> dict[str, int]:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:  # a FIFO would block the read
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {w: n for w, n in data.items() if isinstance(w, str) and type(n) is int and 0 < n <= len(w)}  # BPE never makes more tokens than characters


def table_path() -> Path | None:
    """This machine's table for open_clip's BPE vocabulary, or None when open_clip is not installed."""
    bpe = bpe_file()
    if bpe is None:
        return None
    digest = hashlib.sha256(bpe.read_bytes()).hexdigest()[:16]
    return home() / "cache" / f"clip-word-tokens-{digest}.json"


@lru_cache(maxsize=1)
def word_table() -> WordTable:
    """The process's table (loaded on first use; what it learns is saved at exit)."""
    table = WordTable(table_path())
    atexit.register(table.save)
    return table
