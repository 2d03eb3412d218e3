"""The `unprompt` console script's entry point: a module that imports nothing until it is called.

Image decoding runs in worker processes (``retriever/decode_pool.py``), started by forkserver or spawn, and
such a worker first re-runs the main script's module (``multiprocessing.spawn``'s ``_fixup_main_from_path``).
The script pip writes for this entry point imports only this module, so a worker does not import the command
line (``api.cli``: pydantic, the profiles, every command), which cost each worker 0.6 s of CPU on 2 cores.
"""

from __future__ import annotations


def main() -> int:
    from api.cli import main as cli

    return cli()
