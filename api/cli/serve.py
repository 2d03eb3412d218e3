"""`unprompt serve`: the HTTP service under uvicorn."""

from __future__ import annotations

import argparse
import errno
import signal
import socket

from api.cli.common import command, port_number
from retriever.errors import UnpromptError

STARTUP_FAILURE = 3  # uvicorn's status when the app did not start (its lifespan failed)


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


def listen(host: str, port: int) -> socket.socket:
    """The bound listening socket (as uvicorn binds one: SO_REUSEADDR), or a clear error: a port in use, an
    address this machine does not have, a host that does not resolve."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UnpromptError(f"cannot listen on {host}:{port}: the host does not resolve ({exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise UnpromptError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.connections import uvicorn_options
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    settings = settings_from(args)
    sock = listen(settings.host, settings.port)  # a port in use is refused before anything loads
    with sock:
        # load before the server starts, so a missing index or weights is a clear error, not a failed start-up
        interrogator = Interrogator.from_profile(load_profile(settings.profile), checksums=settings.verify_checksums)
        shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        shown = f"[{shown}]" if ":" in shown else shown
        print(f"unprompt: serving profile {interrogator.profile.name} at http://{shown}:{sock.getsockname()[1]}/ "
              f"(API docs at /docs; Ctrl+C stops)", flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(settings, interrogator), host=settings.host,
                                               port=settings.port, log_level="warning", access_log=False,
                                               **uvicorn_options(settings)))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn's graceful stop, then the signal's own exit
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
    return 0 if server.started else STARTUP_FAILURE


def register(sub) -> None:
    p = command(sub, "serve", run)
    from api.settings import Settings

    fields = Settings.model_fields
    p.add_argument("--host", default=None, help=f"address to bind (default {fields['host'].default})")
    p.add_argument("--port", type=port_number, default=None, help=f"port (default {fields['port'].default})")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (no micro-batching)")
