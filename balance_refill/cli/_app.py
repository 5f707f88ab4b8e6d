"""The CLI's driver: parse, configure logging (the only place that does), open the
database, dispatch to a command, and turn errors into exit codes and one-line messages
(a JSON object on stderr under `--json`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from pymongo.errors import PyMongoError

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    ContentionError,
    InsufficientCredits,
    RefillPolicy,
    SweepLocked,
    TieredPolicy,
    UserNotFound,
    load_policy_file,
)

from ._commands import admin_command, demo_command, policy_check_command, sweep_command
from ._connect import Connection, connect
from ._output import Output
from ._parser import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REFUSED,
    USER_ID_MODES,
    CliError,
    UsageError,
    parse_args,
)
from ._simulate import simulate_command  # also adds `simulate` to the parser
from .settings import Settings, redact

MOCK_NOTE = (
    "MONGODB_URI is not set: using a temporary in-memory database; "
    "nothing is saved when this command ends"
)

_REFUSED = (InsufficientCredits, UserNotFound, SweepLocked, ContentionError)

# Where a driver's message turns into a dump of its topology: cut it there.
_NOISE = (", Timeout: ", " (configured timeouts:", ", Topology Description: ")


def _policy(args: argparse.Namespace, settings: Settings) -> RefillPolicy | TieredPolicy:
    path = args.policy or settings.policy_file
    if not path:
        raise CliError(
            "this command needs a policy: pass --policy FILE or set BALANCE_REFILL_POLICY"
        )
    return load_policy_file(path)


async def _run(
    args: argparse.Namespace, settings: Settings, connection: Connection | None, out: Output
) -> int:
    if args.command == "policy":
        return policy_check_command(args, out)
    if args.command == "simulate":
        return await simulate_command(args, settings, connection, out)
    if args.command == "demo":
        database = "balance_refill_demo" if settings.mongodb_uri else "demo"
        policy = None
    else:
        database = settings.database_name()
        policy = _policy(args, settings)
    if connection is None and not settings.mongodb_uri:
        out.note(MOCK_NOTE)
    conn = connection or connect(settings.mongodb_uri, database)
    try:
        if policy is None:
            return await demo_command(args, settings, conn, out)
        refiller = BalanceRefiller(
            conn.collection(settings.balances_collection),
            policy,
            ledger=conn.collection(settings.transactions_collection),
            leases=conn.collection(settings.leases_collection),
            user_ids=USER_ID_MODES.get(args.id_type, "auto"),
        )
        if args.command == "sweep":
            return await sweep_command(args, refiller, out)
        return await admin_command(args, refiller, out)
    finally:
        if connection is None:  # ours to close
            await conn.close()


def _one_line(text: str) -> str:
    """The first line of a message, without a driver's topology dump."""
    line = text.strip().split("\n", 1)[0]
    for marker in _NOISE:
        line = line.split(marker, 1)[0]
    return line


def _fail(stderr: TextIO, as_json: bool, code: int, message: str) -> int:
    """Report a failure: one line on stderr (a JSON object under --json); return `code`."""
    if as_json:
        stderr.write(json.dumps({"error": message, "code": code}) + "\n")
    else:
        kind = "refused" if code == EXIT_REFUSED else "error"
        stderr.write(f"{kind}: {message}\n")
    return code


def _usage_error(exc: UsageError, stderr: TextIO, as_json: bool) -> int:
    prog = exc.parser.prog
    if as_json:
        return _fail(stderr, True, EXIT_BAD_INPUT, f"{prog}: {exc.message}")
    stderr.write(exc.parser.format_usage())
    stderr.write(f"{prog}: error: {exc.message}\n")
    return EXIT_BAD_INPUT


def _serve(args: argparse.Namespace, settings: Settings, stderr: TextIO) -> int:
    try:
        from balance_refill.web.serve import serve  # noqa: PLC0415 - the web extra, on demand
    except ImportError as exc:
        stderr.write(
            f"serve needs the web extra: pip install 'balance_refill[web]' ({exc.name} is missing)\n"
        )
        return EXIT_BAD_INPUT
    return serve(
        host=args.host,
        port=args.port,
        insecure_local=args.insecure_local,
        uri=settings.mongodb_uri,
        database=settings.database_name(),
        policy=args.policy or settings.policy_file,
        balances_collection=settings.balances_collection,
        transactions_collection=settings.transactions_collection,
        out=stderr,
    )


def run_cli(
    argv: Sequence[str] | None, connection: Connection | None, stdout: TextIO, stderr: TextIO
) -> int:
    """`balance_refill.cli.main` once the CLI extra is known to be installed."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parse_args(words)
    except UsageError as exc:
        return _usage_error(exc, stderr, "--json" in words)
    except SystemExit as exc:  # argparse printed help or the version already
        return EXIT_OK if exc.code in (0, None) else EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=stderr,
    )
    settings: Settings | None = None
    code: int
    try:
        overrides = {
            key: value
            for key, value in (
                ("database", getattr(args, "database", None)),
                ("balances_collection", getattr(args, "balances_collection", None)),
                ("transactions_collection", getattr(args, "transactions_collection", None)),
            )
            if value is not None
        }
        settings = Settings(**overrides)
        if args.command == "serve":  # uvicorn runs its own event loop
            return _serve(args, settings, stderr)
        out = Output(args.json, stdout, stderr)
        return asyncio.run(_run(args, settings, connection, out))
    except _REFUSED as exc:
        code, error = EXIT_REFUSED, str(exc)
    except (CliError, BalanceRefillError, ValueError) as exc:
        code, error = EXIT_BAD_INPUT, str(exc)
    except PyMongoError as exc:  # a driver error the library did not wrap (the demo's own calls)
        where = settings.masked_uri() if settings is not None else "the database"
        code, error = EXIT_BAD_INPUT, f"{where}: {type(exc).__name__}: {exc}"
    uri = settings.mongodb_uri if settings is not None else None
    return _fail(stderr, args.json, code, redact(_one_line(error), uri))
