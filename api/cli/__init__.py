"""The `unprompt` command line: one module per command group, each registering its own subcommands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from typing import Sequence

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retriever.threads import calm_blas_before_numpy  # noqa: E402 - stdlib only

calm_blas_before_numpy()

from api.cli import doctor, feedback, generate, indexes, predict, scoring, serve, sources, train  # noqa: E402
from api.cli.common import Formatter, err, open_standard_streams, positive_int  # noqa: E402
from retriever import __version__  # noqa: E402
from retriever.errors import UnpromptError, UnpromptWarning  # noqa: E402
from retriever.profile import DEFAULT_PROFILE, PROFILE_ENV, builtin_profiles  # noqa: E402
from retriever.threads import THREADS_ENV, configure_environment, max_threads, threads_problem  # noqa: E402

EPILOG = """\
examples:
  unprompt setup                              build the lite component index (once)
  unprompt predict photo.jpg                  print a prompt for an image
  unprompt predict a.png b.png --json         JSON lines: prompt, embedding, candidates, timings
  unprompt build-index data_manifests/components.toml --out ./my-index
  unprompt eval data_manifests/examples/eval.csv   per-stage scores and an HTML report
  unprompt score --truth truth.csv --predictions submission.csv
  unprompt serve --port 8000                  HTTP API, web page at /, docs at /docs

Profiles: {profiles} (default {default}; set --profile or ${env}).
Indexes and caches live in $UNPROMPT_HOME (default ~/.cache/unprompt).
"""
GROUPS = (predict, indexes, sources, train, generate, scoring, serve, feedback, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unprompt",
        description="Recover the prompt that made an image (Stable Diffusion), by retrieval over "
                    "captions and prompt components.",
        epilog=EPILOG.format(profiles=", ".join(builtin_profiles()), default=DEFAULT_PROFILE, env=PROFILE_ENV),
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"unprompt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    for command in sub.choices.values():
        _add_common_options(command)
    return parser


def _add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help=f"CPU threads for the models, 1 to {max_threads()} (default: ${THREADS_ENV}, else the CPUs "
                        "this process may use: its affinity mask and cgroup quota)")
    p.add_argument("--verbose", action="store_true", help="say on standard error how the CPU threads were split")


def thread_count(value: str) -> int:
    """The --threads type: a whole number in the range retriever.threads accepts (refused by argparse, rc 2)."""
    n = positive_int(value)
    problem = threads_problem(n)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return n


thread_count.__name__ = "whole number"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, UnpromptWarning):
        print(f"unprompt: warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C, so that atomic writes remove their temporary files."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; SIGTERM is handled while it runs (then the previous handler is back)."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None = None) -> int:
    open_standard_streams()
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        plan = configure_environment(getattr(args, "threads", None))  # before torch or faiss loads OpenMP
        if getattr(args, "verbose", False):
            print(f"unprompt: {plan.describe()}", file=sys.stderr)
        return args.func(args)
    except UnpromptError as exc:
        err(str(exc))
        return 2
    except OSError as exc:  # a full disk, a folder that vanished: the message, not a traceback
        err(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except Terminated:
        err("terminated")
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
