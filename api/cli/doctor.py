"""`unprompt doctor`: one line per check, ok, warn or fail, with a fix; exit 0 when the profile can serve."""

from __future__ import annotations

import argparse
import sys

from api.cli.common import command, port_number


def run(args: argparse.Namespace) -> int:
    from retriever.doctor import run_checks

    failed = warned = 0
    for check in run_checks(args.profile, checksums=args.checksums, host=args.host, port=args.port):
        print(check.line(), flush=True)
        failed += check.status == "fail"
        warned += check.status == "warn"
    verdict = "cannot serve" if failed else "can serve"
    print(f"{verdict}: {failed} failed, {warned} warning(s)", file=sys.stderr)
    return 1 if failed else 0


def register(sub) -> None:
    p = command(sub, "doctor", run)
    p.add_argument("--checksums", action="store_true", help="SHA-256 every index file (slow on big indexes)")
    p.add_argument("--host", default=None, help="address the service would bind (default: UNPROMPT_HOST or 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=None,
                   help="port the service would bind, 0 to 65535 (default: UNPROMPT_PORT or 8000)")
