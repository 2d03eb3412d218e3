"""What every command shares: the help layout, the --profile option, argument types and error printing."""

from __future__ import annotations

import argparse
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


def err(msg: str) -> None:
    print(f"unprompt: error: {msg}", file=sys.stderr)


def _whole(value: str, least: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {n}")
    return n


def positive_int(value: str) -> int:
    return _whole(value, 1)


def non_negative_int(value: str) -> int:
    return _whole(value, 0)


def positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return x


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
