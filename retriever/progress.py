"""Progress of long work on stderr: a bar on a terminal, plain lines otherwise (logs, CI, `2> file`)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

STEPS = 10  # plain lines: one at every tenth of the work (and at the end)


def progress(items: Iterable[T], total: int, desc: str, unit: str = "img", stream: TextIO | None = None) -> Iterator[T]:
    """``items`` unchanged, reporting progress whenever there is more than one: tqdm on a terminal, else a
    line ``desc: 12/120 img (10%), 3.4 img/s, about 32 s left`` every tenth of the way."""
    stream = stream if stream is not None else sys.stderr
    if total <= 1:
        yield from items
        return
    if _is_tty(stream):
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, file=stream)
        return
    t0, done, next_mark = time.perf_counter(), 0, 1
    for item in items:
        yield item
        done += 1
        if done * STEPS >= next_mark * total or done == total:
            while done * STEPS >= next_mark * total:
                next_mark += 1
            elapsed = max(time.perf_counter() - t0, 1e-9)
            rate = done / elapsed
            left = f", about {(total - done) / rate:.0f} s left" if done < total else f" in {elapsed:.1f} s"
            print(f"{desc}: {done}/{total} {unit} ({100 * done // total}%), {rate:.1f} {unit}/s{left}",
                  file=stream, flush=True)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
