"""The CLI's driver: parse, configure logging (the only place that does), open the
database, dispatch to a command, and turn errors into exit codes and one-line messages."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import TextIO

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
    build_parser,
)
from .settings import Settings, mask_uri


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
    if args.command == "demo":
        database = "balance_refill_demo" if settings.mongodb_uri else "demo"
        policy = None
    else:
        database = settings.database_name()
        policy = _policy(args, settings)
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


def _redact(text: str, settings: Settings | None) -> str:
    """Remove any credential of the configured URI from a message."""
    if settings is not None and settings.mongodb_uri:
        uri = settings.mongodb_uri
        text = text.replace(uri, mask_uri(uri))
        match = re.match(r"^[a-z+]+://[^:/@]*:([^@]+)@", uri)
        if match and match[1]:
            text = text.replace(match[1], "***")
    return text


def run_cli(
    argv: Sequence[str] | None, connection: Connection | None, stdout: TextIO, stderr: TextIO
) -> int:
    """`balance_refill.cli.main` once the CLI extra is known to be installed."""
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage, help or the version already
        return EXIT_OK if exc.code == 0 else EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=stderr,
    )
    settings: Settings | None = None
    try:
        overrides = {
            key: value
            for key, value in (
                ("database", args.database),
                ("balances_collection", args.balances_collection),
                ("transactions_collection", args.transactions_collection),
            )
            if value is not None
        }
        settings = Settings(**overrides)
        return asyncio.run(_run(args, settings, connection, Output(args.json, stdout, stderr)))
    except (InsufficientCredits, UserNotFound, SweepLocked, ContentionError) as exc:
        stderr.write(f"refused: {_redact(str(exc), settings)}\n")
        return EXIT_REFUSED
    except (CliError, BalanceRefillError, ValueError) as exc:
        stderr.write(f"error: {_redact(str(exc), settings)}\n")
        return EXIT_BAD_INPUT
