"""`balance-refill`: a thin CLI. Parse, configure logging (only here), call the library,
return an exit code (0 ok, 1 refused, 2 bad input or configuration)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from . import __version__
from ._store import connect
from .demo import run_demo
from .settings import Settings

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balance-refill",
        description="Keep chat users' credits topped up (LibreChat-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="simulate a few users over 90 days (mock unless MONGODB_URI)"
    )
    demo.add_argument("--days", type=int, default=90)
    demo.add_argument("--seed", type=int, default=7)
    return parser


async def _demo(args: argparse.Namespace) -> int:
    settings = Settings()
    conn = connect(settings.mongodb_uri, "balance_refill_demo" if settings.mongodb_uri else "demo")
    print(f"database: {settings.masked_uri()}")
    try:
        if not conn.mock:  # start from a clean slate on a real server
            await conn.database.drop_collection("balances")
            await conn.database.drop_collection("transactions")
        await run_demo(
            conn.collection("balances"),
            conn.collection("transactions"),
            days=args.days,
            seed=args.seed,
        )
    finally:
        await conn.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        return asyncio.run(_demo(args))
    return EXIT_BAD_INPUT  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
