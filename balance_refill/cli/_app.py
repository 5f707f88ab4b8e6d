"""The CLI's driver: parse, configure logging (the only place that does), open the
database, dispatch to a command, and turn errors into exit codes and one-line messages
(under `--json`, part of the one status object on stderr)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from pymongo.errors import PyMongoError

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    ContentionError,
    IdempotencyConflict,
    InsufficientCredits,
    PolicyNotFound,
    RefillPolicy,
    StorageError,
    SweepLocked,
    TieredPolicy,
    UserNotFound,
    load_policy_file,
)

from ._commands import (
    admin_command,
    demo_command,
    librechat_override,
    policy_check_command,
    sweep_command,
)
from ._connect import Collection, Connection, connect
from ._logging import LoggedCollection, configured
from ._output import Output, Status
from ._parser import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    USER_ID_MODES,
    CliError,
    Refused,
    UsageError,
    parse_args,
)
from ._policies import policy_store, policy_store_command, stored_policy
from ._simulate import simulate_command  # also adds `simulate` to the parser
from .settings import Settings, redact, uri_problem

log = logging.getLogger(__name__)

MOCK_NOTE = (
    "MONGODB_URI is not set: using a temporary in-memory database; "
    "nothing is saved when this command ends"
)

_REFUSED = (
    InsufficientCredits,
    UserNotFound,
    SweepLocked,
    ContentionError,
    PolicyNotFound,
    Refused,
)


# Where a driver's message turns into a dump of its topology: cut it there.
_NOISE = (", Timeout: ", " (configured timeouts:", ", Topology Description: ")


READS = frozenset({"show", "history"})
"""Commands that only read: they run without a policy (its fields are then left out)."""

NO_POLICY_NOTE = (
    "no policy given: tier, auto_refill and next_refill_at depend on it and are not shown "
    "(pass --policy FILE or set BALANCE_REFILL_POLICY)"
)

_ANY_READER = RefillPolicy(amount=1, interval="30d")
"""The policy a read runs under when none is given; nothing it decides is shown."""


async def _policy(
    args: argparse.Namespace, settings: Settings, conn: Connection, out: Output
) -> RefillPolicy | TieredPolicy | None:
    """The policy file from --policy or BALANCE_REFILL_POLICY; else the active version in
    the policy store; else None for a read, and a refusal for any other command."""
    path = args.policy or settings.policy_file
    if path:
        return load_policy_file(path, librechat_auto_refill=librechat_override(args))
    stored = await stored_policy(policy_store(conn, settings, verbose=args.verbose))
    if stored is not None:
        version, policy = stored
        out.note(f"using the stored policy, version {version} (no --policy given)")
        out.status.field("policy_version", version)
        log.info("policy: stored version %d", version, extra={"policy_version": version})
        return policy
    if args.command in READS:
        return None
    raise CliError(
        "this command needs a policy: pass --policy FILE, set BALANCE_REFILL_POLICY, "
        "or activate a stored version (balance-refill policy push FILE, policy activate N)"
    )


def _collections(conn: Connection, settings: Settings, verbose: int) -> dict[str, Collection]:
    """The refiller's collections, wrapped to log each call under -v."""
    names = {
        "balances": settings.balances_collection,
        "ledger": settings.transactions_collection,
        "leases": settings.leases_collection,
    }
    found = {role: conn.collection(name) for role, name in names.items()}
    if verbose:
        return {role: cast("Collection", LoggedCollection(c)) for role, c in found.items()}
    return found


async def _run(
    args: argparse.Namespace, settings: Settings, connection: Connection | None, out: Output
) -> int:
    if args.command == "policy" and args.policy_command == "check":
        return policy_check_command(args, out)
    if args.command == "simulate":
        return await simulate_command(args, settings, connection, out)
    if args.command == "demo":
        database = "balance_refill_demo" if settings.mongodb_uri else "demo"
    else:
        database = settings.database_name()
    if connection is None and not settings.mongodb_uri:
        out.note(MOCK_NOTE)
    conn = connection or connect(settings.mongodb_uri, database)
    try:
        if args.command == "demo":
            return await demo_command(args, settings, conn, out)
        if args.command == "policy":
            return await policy_store_command(args, conn, settings, out)
        policy = await _policy(args, settings, conn, out)
        if policy is None:
            out.note(NO_POLICY_NOTE)
        collections = _collections(conn, settings, args.verbose)
        refiller = BalanceRefiller(
            collections["balances"],
            policy or _ANY_READER,
            ledger=collections["ledger"],
            leases=collections["leases"],
            user_ids=USER_ID_MODES.get(args.id_type, "auto"),
        )
        if args.command == "sweep":
            return await sweep_command(args, refiller, out)
        return await admin_command(args, refiller, out, policy_known=policy is not None)
    finally:
        if connection is None:  # ours to close
            await conn.close()


def _one_line(text: str) -> str:
    """The first line of a message, without a driver's topology dump."""
    line = text.strip().split("\n", 1)[0]
    for marker in _NOISE:
        line = line.split(marker, 1)[0]
    return line


def _usage_error(exc: UsageError, status: Status) -> int:
    prog = exc.parser.prog
    if status.as_json:
        return status.finish(EXIT_BAD_INPUT, f"{prog}: {exc.message}")
    status.err.write(exc.parser.format_usage())
    status.err.write(f"{prog}: error: {exc.message}\n")
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
        return _usage_error(exc, Status("--json" in words, stderr))
    except SystemExit as exc:  # argparse printed help or the version already
        return EXIT_OK if exc.code in (0, None) else EXIT_BAD_INPUT
    status = Status(args.json, stderr)
    with configured(args.verbose, status.log_line):
        return _run_logged(args, connection, stdout, status)


def _check_uri(settings: Settings) -> None:
    """Refuse a malformed MONGODB_URI at once (before any connection or DNS lookup)."""
    problem = uri_problem(settings.mongodb_uri)
    if problem is not None:
        raise CliError(problem)


def _run_logged(
    args: argparse.Namespace, connection: Connection | None, stdout: TextIO, status: Status
) -> int:
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
        _check_uri(settings)
        if args.command == "serve":  # uvicorn runs its own event loop
            return _serve(args, settings, status.err)
        out = Output(args.json, stdout, status)
        return status.finish(asyncio.run(_run(args, settings, connection, out)))
    except IdempotencyConflict as exc:  # before BalanceRefillError, its root
        code, error = EXIT_CONFLICT, str(exc)
    except _REFUSED as exc:
        code, error = EXIT_REFUSED, str(exc)
    except StorageError as exc:  # the write may have been applied: say how to retry it
        code, error = EXIT_BAD_INPUT, _one_line(str(exc)) + _retry_hint(args, status)
    except (CliError, BalanceRefillError, ValueError) as exc:
        code, error = EXIT_BAD_INPUT, str(exc)
    except PyMongoError as exc:  # a driver error the library did not wrap (the demo's own calls)
        where = settings.masked_uri() if settings is not None else "the database"
        code, error = EXIT_BAD_INPUT, f"{where}: {type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        code, error = EXIT_INTERRUPTED, "interrupted" + _retry_hint(args, status)
    uri = settings.mongodb_uri if settings is not None else None
    return status.finish(code, redact(_one_line(error), uri), refused=code == EXIT_REFUSED)


def _retry_hint(args: argparse.Namespace, status: Status) -> str:
    """After a failure that leaves an admin write's outcome unknown: how to retry it."""
    key = status.fields.get("request_id")
    if key is None:
        return ""
    return (
        f" (the {args.command} may or may not have been applied: retry it with "
        f"--request-id {key} to apply it at most once)"
    )
