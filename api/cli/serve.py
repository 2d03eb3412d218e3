"""`unprompt serve`: the HTTP service under uvicorn."""

from __future__ import annotations

import argparse
import signal

from api.cli.common import command, port_number
from retriever.errors import UnpromptError


def settings_from(args: argparse.Namespace):
    """Settings from UNPROMPT_* and the flags; a bad value is a clear error before anything loads."""
    from pydantic import ValidationError

    from api.settings import Settings

    overrides = {k: v for k, v in {"profile": args.profile, "host": args.host, "port": args.port}.items() if v is not None}
    if args.no_batching:
        overrides["batching"] = False
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise UnpromptError(f"bad service settings: {problems}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.connections import uvicorn_options
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    settings = settings_from(args)
    # load before the server starts, so a missing index or weights is a clear error, not a failed start-up
    interrogator = Interrogator.from_profile(load_profile(settings.profile), checksums=settings.verify_checksums)
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"unprompt: serving profile {interrogator.profile.name} at http://{shown}:{settings.port}/ "
          f"(API docs at /docs; Ctrl+C stops)", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn's graceful stop, then the signal's own exit (as before)
    uvicorn.run(create_app(settings, interrogator), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, **uvicorn_options(settings))
    return 0


def register(sub) -> None:
    p = command(sub, "serve", run)
    from api.settings import Settings

    fields = Settings.model_fields
    p.add_argument("--host", default=None, help=f"address to bind (default {fields['host'].default})")
    p.add_argument("--port", type=port_number, default=None, help=f"port (default {fields['port'].default})")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (no micro-batching)")
