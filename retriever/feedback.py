"""Feedback: what users corrected, kept in one SQLite file (WAL) under $UNPROMPT_HOME, and exported for the
next build: a pairs table for ``train-regressor --pairs`` (rows whose image was kept) and a text source with
its manifest for ``build-index --append``.

Images are stored only when the operator enables it (``keep_images``); then under ``feedback/images/`` named
by their SHA-256, which must match the hash the client sent. Without them a row holds the hash, the prompt the
service gave, the corrected prompt, an optional 1-5 rating, the profile and the time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from retriever.errors import UnpromptError
from retriever.files import CONTROL_CHARS, atomic_write, write_bytes_atomic
from retriever.paths import home

DB_NAME = "feedback.sqlite3"
MAX_PROMPT_CHARS = 2000
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = re.compile(r"^\.[a-z0-9]{2,5}$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_sha256 TEXT NOT NULL,
    prompt TEXT NOT NULL,
    corrected_prompt TEXT NOT NULL,
    rating INTEGER,
    profile TEXT NOT NULL DEFAULT '',
    image_file TEXT,
    created TEXT NOT NULL
)"""


class FeedbackError(UnpromptError):
    pass


@dataclass(frozen=True)
class Feedback:
    image_sha256: str
    prompt: str
    corrected_prompt: str
    rating: int | None = None
    profile: str = ""

    def checked(self) -> "Feedback":
        """The same feedback, trimmed; a FeedbackError saying what is wrong otherwise."""
        for name in ("image_sha256", "prompt", "corrected_prompt"):
            _check_text(name, getattr(self, name))
        sha = self.image_sha256.strip().lower()
        if not SHA256.match(sha):
            raise FeedbackError("image_sha256 must be the 64 hex digits of the image's SHA-256")
        corrected = " ".join(self.corrected_prompt.split())
        if not corrected:
            raise FeedbackError("corrected_prompt is empty")
        if len(corrected) > MAX_PROMPT_CHARS or len(self.prompt) > MAX_PROMPT_CHARS:
            raise FeedbackError(f"prompts are limited to {MAX_PROMPT_CHARS} characters")
        if self.rating is not None and (isinstance(self.rating, bool) or self.rating not in range(1, 6)):
            raise FeedbackError("rating must be a whole number from 1 to 5")
        return Feedback(sha, " ".join(self.prompt.split()), corrected, self.rating, self.profile)


def _check_text(name: str, value: object) -> None:
    """A text field must be a string SQLite can store and the exported one-prompt-a-line text file can hold:
    valid Unicode (no lone surrogates) and no control characters but whitespace (which trimming collapses)."""
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FeedbackError(f"{name} is not valid Unicode (a lone surrogate)") from None
    if CONTROL_CHARS.search(" ".join(value.split())):  # whitespace (tab, LF, CR ...) collapsed first
        raise FeedbackError(f"{name} holds a control character (NUL, escape ...)")


def store_dir() -> Path:
    return home() / "feedback"


class FeedbackStore:
    """One SQLite file in WAL mode: writers (the service's threads) never block the exporter's reads."""

    def __init__(self, path: Path | None = None, keep_images: bool = False) -> None:
        self.path = path or store_dir() / DB_NAME
        self.keep_images = keep_images
        self._lock = threading.Lock()  # one writer at a time inside this process (SQLite serialises processes)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(SCHEMA)
        return conn

    def add(self, feedback: Feedback, image: bytes | None = None, suffix: str = ".png") -> int:
        """Store one row (and its image, when kept and given); the row id."""
        fb = feedback.checked()
        image_file = None
        if image is not None and hashlib.sha256(image).hexdigest() != fb.image_sha256:  # kept or not
            raise FeedbackError("the image sent does not match image_sha256")
        if image is not None and self.keep_images:
            images = self.path.parent / "images"
            images.mkdir(parents=True, exist_ok=True)
            image_file = f"images/{fb.image_sha256}{suffix if SUFFIX.match(suffix) else '.img'}"
            if not (self.path.parent / image_file).exists():
                write_bytes_atomic(self.path.parent / image_file, image, clean_stale=False)  # one per image
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with self._lock, closing(self._connect()) as conn, conn:
            cur = conn.execute(
                "INSERT INTO feedback (image_sha256, prompt, corrected_prompt, rating, profile, image_file, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fb.image_sha256, fb.prompt, fb.corrected_prompt, fb.rating, fb.profile, image_file, created))
            return int(cur.lastrowid)

    def rows(self, min_rating: int | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            query = "SELECT * FROM feedback" + (" WHERE rating IS NULL OR rating >= ?" if min_rating else "") + " ORDER BY id"
            return [dict(r) for r in conn.execute(query, (min_rating,) if min_rating else ())]


@dataclass
class Export:
    pairs: Path
    pairs_rows: int
    texts: Path
    manifest: Path
    text_rows: int


def export(store: FeedbackStore, out: Path, min_rating: int | None = None) -> Export:
    """Write ``pairs.csv`` (image,prompt: kept images with their corrected prompts, paths relative to ``out``),
    ``corrected_prompts.txt`` (one corrected prompt a line, distinct) and ``feedback.toml`` (a manifest naming
    it, kind caption), each atomically. The feedback rows are not changed."""
    import os

    import polars as pl

    rows = store.rows(min_rating)
    if not rows:
        raise FeedbackError(f"no feedback in {store.path}" + (f" rated {min_rating} or more" if min_rating else ""))
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(os.path.relpath(store.path.parent / r["image_file"], out), r["corrected_prompt"])
             for r in rows if r["image_file"] and (store.path.parent / r["image_file"]).is_file()]
    with atomic_write(out / "pairs.csv") as tmp:
        pl.DataFrame({"image": [p for p, _ in pairs], "prompt": [t for _, t in pairs]},
                     schema={"image": pl.String, "prompt": pl.String}).write_csv(tmp)
    texts = list(dict.fromkeys(r["corrected_prompt"] for r in rows))
    write_bytes_atomic(out / "corrected_prompts.txt", ("\n".join(texts) + "\n").encode())
    write_bytes_atomic(out / "feedback.toml", (
        "# Corrected prompts from `unprompt feedback export`: append them with\n"
        "#   unprompt build-index feedback.toml --append --out INDEX_DIR\n"
        'name = "feedback"\n\n[[sources]]\nname = "feedback"\npath = "corrected_prompts.txt"\nkind = "caption"\n'
        'license = "written by this service\'s users"\n').encode())
    return Export(out / "pairs.csv", len(pairs), out / "corrected_prompts.txt", out / "feedback.toml", len(texts))
