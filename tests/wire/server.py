"""A mongoeco wire-protocol server for the test suite (run under Python 3.13+).

Started by `launcher.py` (which runs on the suite's own Python) as a script:

    python3.13 tests/wire/server.py [--host 127.0.0.1] [--port 0]

It serves an in-memory MongoDB (mongoeco's MemoryEngine) on `host:port` (port 0: a free
one), prints the port it listens on as the first line of stdout, and serves until its
stdin closes (so it stops when the process that started it dies) or it receives SIGTERM
or SIGINT. Before serving it applies `compat.apply()` (this folder's `compat.py`, the
compatibility patches Node drivers need), when that module exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import threading


def _apply_compat() -> None:
    """Apply this folder's compatibility patches, if the module is there."""
    if importlib.util.find_spec("compat") is None:
        return
    # this script's own folder is on sys.path (not on mypy's: hence no `from compat import`)
    importlib.import_module("compat").apply()


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once stdin reaches end of file (the parent closed it, or died)."""
    with contextlib.suppress(OSError, ValueError):
        while sys.stdin.buffer.read(4096):
            pass
    with contextlib.suppress(RuntimeError):  # the loop may be closed already
        loop.call_soon_threadsafe(stop.set)


async def serve(host: str, port: int) -> None:
    from mongoeco.engines import MemoryEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host=host, port=port)
    address = await server.start()
    try:
        sys.stdout.write(f"{address.port}\n")
        sys.stdout.flush()
        # Anything printed later goes to stderr (the log): nobody reads the pipe any more.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if importlib.util.find_spec("bson") is None:  # else every reply fails, silently
        sys.exit("mongoeco's wire server needs pymongo's bson: pip install 'mongoeco[wire]'")
    _apply_compat()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
