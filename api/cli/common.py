"""What every command shares: the help layout, the --profile option, argument types and error printing."""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import tomllib
from functools import lru_cache
from importlib import resources
from typing import Callable

from retriever.profile import DEFAULT_PROFILE, PROFILE_ENV

Handler = Callable[[argparse.Namespace], int]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; shows a default only where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


_CONTROL = {i: f"\\x{i:02x}" for i in range(32) if chr(i) not in "\t"} | {10: "\\n", 13: "\\r"}


def one_line(text: str) -> str:
    """Control characters (a file name's newline, say) escaped, and bytes that are not UTF-8 too
    (retriever.files.printable): one message stays one valid line."""
    from retriever.files import printable

    return printable(text).translate(_CONTROL)


class ClosedOutput:
    """Stands for a standard stream that was closed when unprompt started (``1>&-``): Python leaves None there,
    and writing to it is one clear error (an OSError the entry point reports), not an AttributeError."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, f"{self.name} is closed; redirect it or give --out FILE")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def open_standard_streams() -> None:
    """Put a :class:`ClosedOutput` where stdout is closed, and send messages to nowhere where stderr is."""
    if sys.stdout is None:
        sys.stdout = ClosedOutput("standard output")  # type: ignore[assignment]
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def require_stdout() -> None:
    """Refuse, before any work, to print results to a standard output that is closed."""
    if isinstance(sys.stdout, ClosedOutput):
        from retriever.errors import UnpromptError

        raise UnpromptError("standard output is closed; redirect it or give --out FILE")


def err(msg: str) -> None:
    print(f"unprompt: error: {one_line(msg)}", file=sys.stderr)


def bounded_int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` to ``hi`` (no upper bound when None)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {n}")
        if hi is not None and n > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, not {n}")
        return n

    parse.__name__ = "whole number"
    return parse


positive_int = bounded_int(1)
non_negative_int = bounded_int(0)
port_number = bounded_int(0, 65535)  # 0: any free port


def bounded_float(lo: float, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number above (or from) ``lo`` and up to ``hi``; never nan or inf."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {value}")
        if (x <= lo if lo_open else x < lo) or (hi is not None and x > hi):
            bound = f"above {lo:g}" if lo_open else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}" + (f" and at most {hi:g}" if hi is not None else "")
                                             + f", not {value}")
        return x

    parse.__name__ = "number"
    return parse


positive_float = bounded_float(0, lo_open=True)


@lru_cache(maxsize=1)
def help_texts() -> dict[str, dict]:
    return tomllib.loads((resources.files("api.cli") / "help.toml").read_text(encoding="utf-8"))


def command(sub, name: str, func: Handler, profile: bool = True) -> argparse.ArgumentParser:
    """A subcommand with its summary, description and examples from help.toml, and (usually) --profile."""
    text = help_texts()[name]
    p = sub.add_parser(name, help=text["summary"], description=text["description"], formatter_class=Formatter,
                       epilog="examples:\n" + "\n".join(f"  {e}" for e in text["examples"]))
    if profile:
        p.add_argument("--profile", default=None,
                       help=f"built-in profile name or path to a .toml file (default: ${PROFILE_ENV} or {DEFAULT_PROFILE})")
    p.set_defaults(func=func)
    return p
