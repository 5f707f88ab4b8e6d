"""`balance-refill`: a thin CLI. Parse, configure logging (only here), call the library,
print (Rich tables, or `--json`), and return an exit code:
0 ok, 1 refused (insufficient credits, unknown user, a held lease), 2 bad input or
configuration. Error messages name the bad value; credentials are never printed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from bson import ObjectId
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import __version__
from ._ids import UserId, UserIdMode
from ._store import Connection, connect
from .demo import run_demo
from .errors import (
    BalanceRefillError,
    ContentionError,
    InsufficientCredits,
    SweepLocked,
    UserNotFound,
)
from .policy import AnyPolicy, as_tiered
from .policy_file import PolicyFileError, load_policy_file
from .refiller import BalanceRefiller
from .settings import Settings, mask_uri
from .state import BalanceState

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2
_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
log = logging.getLogger(__name__)


class CliError(Exception):
    """A usage or configuration problem (exit code 2)."""


_USER_IDS: dict[str, UserIdMode] = {"auto": "auto", "objectid": "objectid", "str": "str"}
"""How the refiller stores ids for each --id-type (int ids are kept by every mode)."""


def parse_user(text: str, id_type: str) -> UserId:
    """A user id from the command line: `auto` reads 24 hex digits as an ObjectId
    (LibreChat), anything else as a string; `str`, `int` and `objectid` force a type."""
    if id_type == "str":
        return text
    if id_type == "int":
        try:
            return int(text)
        except ValueError:
            raise CliError(f"user id {text!r} is not an integer (--id-type int)") from None
    if id_type == "objectid" or (id_type == "auto" and _HEX24.match(text)):
        if not _HEX24.match(text):
            raise CliError(f"user id {text!r} is not a 24-digit hex ObjectId (--id-type objectid)")
        return ObjectId(text)
    return text


def _amount_arg(text: str) -> int | float:
    """A number of credits: whole (`1_000`) or fractional (`12.5`), as LibreChat keeps them."""
    cleaned = text.replace("_", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--policy", help="policy YAML (ours or librechat.yaml); env BALANCE_REFILL_POLICY"
    )
    common.add_argument(
        "--database", help="database name (default: from MONGODB_URI, else LibreChat)"
    )
    common.add_argument("--balances-collection", help="default: balances")
    common.add_argument("--transactions-collection", help="default: transactions")
    common.add_argument(
        "--id-type",
        choices=["auto", "objectid", "str", "int"],
        default="auto",
        help="how to read USER: auto = 24 hex digits are an ObjectId, else a string",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging")

    parser = argparse.ArgumentParser(
        prog="balance-refill",
        description="Keep chat users' credits topped up (LibreChat-compatible). "
        "The connection comes from MONGODB_URI (none: an embedded mock).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[common], description=help_)

    demo = add("demo", "simulate a few users over 90 days (mock unless MONGODB_URI)")
    demo.add_argument("--days", type=int, default=90)
    demo.add_argument("--seed", type=int, default=7)

    add("show", "show a user's balance and refill state").add_argument("user")
    for name, help_ in (
        ("grant", "add credits by hand (negative: a correction)"),
        ("set-balance", "set a user's balance"),
    ):
        p = add(name, help_)
        p.add_argument("user")
        p.add_argument("amount", type=_amount_arg)
        p.add_argument("--reason", required=True)
        p.add_argument("--actor", default=None, help="who did it (default: cli:<login>)")
        if name == "grant":
            p.add_argument("--allow-negative", action="store_true")
    p = add("set-tier", "move a user to another tier (effective at the next refill)")
    p.add_argument("user")
    p.add_argument("tier")
    p.add_argument("--actor", default=None)
    pin = p.add_mutually_exclusive_group()
    pin.add_argument(
        "--pin",
        dest="pinned",
        action="store_const",
        const=True,
        default=None,
        help="keep activity rules from moving this user",
    )
    pin.add_argument("--unpin", dest="pinned", action="store_const", const=False)
    for name, help_ in (
        ("pause", "stop automatic refills for a user"),
        ("resume", "resume automatic refills for a user"),
    ):
        p = add(name, help_)
        p.add_argument("user")
        p.add_argument("--actor", default=None)
    p = add("refill-now", "refill a user now, ignoring the period and the threshold")
    p.add_argument("user")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", default=None)
    p = add("history", "a user's ledger rows, newest first")
    p.add_argument("user")
    p.add_argument("--limit", type=int, default=50)
    p = add("sweep", "refill every due user in batches (the cron mode)")
    p.add_argument("--active-within", help="only users seen within this window, e.g. 30d")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--dry-run", action="store_true", help="show what would happen; write nothing")
    p.add_argument("--limit", type=int, default=None, help="scan at most N users")
    policy = add("policy", "policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_sub.add_parser(
        "check", help="validate a policy file and print the rules per tier", parents=[common]
    ).add_argument("file")
    return parser


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _state_dict(state: BalanceState) -> dict[str, Any]:
    return {
        "user": state.user_id,
        "balance": state.balance,
        "tier": state.tier,
        "pinned": state.pinned,
        "auto_refill": state.auto_refill,
        "refilled": state.refilled,
        "granted": state.granted,
        "last_refill": state.last_refill,
        "next_refill_at": state.next_refill_at,
        "spent_since_refill": state.spent_since_refill,
        "last_seen": state.last_seen,
    }


class _Output:
    def __init__(self, as_json: bool, stream: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.stream = stream
        self.err = err
        is_tty = hasattr(stream, "isatty") and stream.isatty()
        self.console = Console(file=stream, highlight=False, width=None if is_tty else 160)

    def data(self, payload: Any, render: Callable[[], None]) -> None:
        if self.as_json:
            self.stream.write(json.dumps(_jsonable(payload), indent=2) + "\n")
        else:
            render()

    def state(self, state: BalanceState, title: str) -> None:
        def render() -> None:
            table = Table(title=title, show_header=False)
            for key, value in _state_dict(state).items():
                shown = (
                    value.strftime("%Y-%m-%d %H:%M:%S UTC")
                    if isinstance(value, datetime)
                    else value
                )
                table.add_row(key, "-" if shown is None else str(shown))
            self.console.print(table)

        self.data(_state_dict(state), render)


def _actor(value: str | None) -> str:
    if value is not None:
        return value
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


def _policy(args: argparse.Namespace, settings: Settings) -> AnyPolicy:
    path = args.policy or settings.policy_file
    if not path:
        raise CliError(
            "this command needs a policy: pass --policy FILE or set BALANCE_REFILL_POLICY"
        )
    return load_policy_file(path)


async def _admin(args: argparse.Namespace, refiller: BalanceRefiller, out: _Output) -> int:
    user = parse_user(args.user, args.id_type)
    cmd = args.command
    if cmd == "show":
        out.state(await refiller.get_state(user), "balance")
    elif cmd == "grant":
        out.state(
            await refiller.grant(
                user,
                args.amount,
                actor=_actor(args.actor),
                reason=args.reason,
                allow_negative=args.allow_negative,
            ),
            "granted",
        )
    elif cmd == "set-balance":
        out.state(
            await refiller.set_balance(
                user, args.amount, actor=_actor(args.actor), reason=args.reason
            ),
            "balance set",
        )
    elif cmd == "set-tier":
        out.state(
            await refiller.set_tier(user, args.tier, actor=_actor(args.actor), pinned=args.pinned),
            "tier set",
        )
    elif cmd in ("pause", "resume"):
        out.state(
            await refiller.set_auto_refill(user, cmd == "resume", actor=_actor(args.actor)),
            "auto refill " + ("resumed" if cmd == "resume" else "paused"),
        )
    elif cmd == "refill-now":
        out.state(
            await refiller.refill_now(user, actor=_actor(args.actor), reason=args.reason),
            "refilled",
        )
    elif cmd == "history":
        rows = await refiller.history(user, limit=args.limit)

        def render() -> None:
            table = Table(title=f"ledger of {args.user} (newest first)")
            for column in ("when", "context", "amount", "before", "after", "actor", "reason"):
                table.add_column(column)
            for row in rows:
                when = row.get("createdAt")
                table.add_row(
                    when.strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, datetime) else str(when),
                    str(row.get("context", "")),
                    str(row.get("rawAmount", "")),
                    str(row.get("balanceBefore", "")),
                    str(row.get("balanceAfter", "")),
                    str(row.get("actor", "")),
                    str(row.get("reason", "")),
                )
            out.console.print(table)

        out.data(rows, render)
    return EXIT_OK


class _PlainProgress:
    """Periodic plain log lines for a sweep when the output is not a terminal."""

    def __init__(self, stream: TextIO, every: float = 5.0) -> None:
        self.stream = stream
        self.every = every
        self.start = time.monotonic()
        self.last = -every

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < self.every and done != total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        total_text = "?" if total is None else str(total)
        eta = f", ETA {max(total - done, 0) / rate:.0f}s" if total and rate > 0 else ""
        self.stream.write(f"sweep: {done}/{total_text} users scanned, {rate:.0f}/s{eta}\n")
        self.stream.flush()


async def _sweep(args: argparse.Namespace, refiller: BalanceRefiller, out: _Output) -> int:
    kwargs: dict[str, Any] = {
        "active_within": args.active_within,
        "batch_size": args.batch_size,
        "dry_run": args.dry_run,
        "limit": args.limit,
    }
    if out.console.is_terminal and not out.as_json:
        columns = (
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}/s"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=out.console) as bar:
            task = bar.add_task("sweep", total=None, rate="-")

            def advance(done: int, total: int | None) -> None:
                speed = bar.tasks[0].speed
                bar.update(task, completed=done, total=total, rate=f"{speed:.0f}" if speed else "-")

            report = await refiller.sweep(progress=advance, **kwargs)
    else:
        report = await refiller.sweep(progress=_PlainProgress(out.err), **kwargs)

    def render() -> None:
        title = "sweep (dry run: nothing written)" if report.dry_run else "sweep"
        table = Table(title=title, show_header=False)
        table.add_row("scanned", str(report.scanned))
        table.add_row("would refill" if report.dry_run else "refilled", str(report.refilled))
        table.add_row("credits granted", str(report.granted))
        for reason, count in report.skipped.items():
            table.add_row(f"skipped: {reason}", str(count))
        for tier, count in sorted(report.tiers.items()):
            table.add_row(f"tier {tier}", str(count))
        table.add_row("pending rows settled", str(report.settled_pending))
        table.add_row("errors", str(report.errors))
        table.add_row("duration", f"{report.duration.total_seconds():.2f}s")
        out.console.print(table)

    out.data(report.as_dict(), render)
    return EXIT_OK if report.ok else EXIT_REFUSED


def _policy_check(args: argparse.Namespace, out: _Output) -> int:
    policy = load_policy_file(args.file)
    tiers = as_tiered(policy)
    described = tiers.describe()

    def render() -> None:
        table = Table(
            title=f"{args.file}: valid ({len(tiers.tiers)} tier(s), default {tiers.default_tier!r})"
        )
        columns = (
            "tier",
            "amount",
            "period",
            "mode",
            "threshold",
            "max_balance",
            "start_balance",
            "auto_refill",
            "adaptive",
        )
        for column in columns:
            table.add_column(column)
        for name, rules in described["tiers"].items():
            adaptive = rules["adaptive"]
            shown = (
                "-"
                if adaptive is None
                else (
                    f"{adaptive['min_amount']}..{adaptive['max_amount']} x{adaptive['headroom']} a={adaptive['alpha']}"
                )
            )
            table.add_row(name, *(str(rules[c]) for c in columns[1:-1]), shown)
        out.console.print(table)
        for rule in described["rules"]:
            out.console.print(f"rule: {rule}")

    out.data(described, render)
    return EXIT_OK


async def _run(
    args: argparse.Namespace, settings: Settings, connection: Connection | None, out: _Output
) -> int:
    if args.command == "policy":
        return _policy_check(args, out)
    owned = connection is None
    if args.command == "demo":
        conn = connection or connect(
            settings.mongodb_uri, "balance_refill_demo" if settings.mongodb_uri else "demo"
        )
        out.console.print(f"database: {settings.masked_uri()}")
        try:
            if not conn.mock:  # start from a clean slate on a real server
                await conn.database.drop_collection("balances")
                await conn.database.drop_collection("transactions")
            await run_demo(
                conn.collection("balances"),
                conn.collection("transactions"),
                days=args.days,
                seed=args.seed,
                out=out.console.print,
            )
        finally:
            if owned:
                await conn.close()
        return EXIT_OK
    policy = _policy(args, settings)
    conn = connection or connect(settings.mongodb_uri, settings.database_name())
    try:
        refiller = BalanceRefiller(
            conn.collection(settings.balances_collection),
            policy,
            ledger=conn.collection(settings.transactions_collection),
            leases=conn.collection(settings.leases_collection),
            user_ids=_USER_IDS.get(getattr(args, "id_type", "auto"), "auto"),
        )
        if args.command == "sweep":
            return await _sweep(args, refiller, out)
        return await _admin(args, refiller, out)
    finally:
        if owned:
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


def main(
    argv: Sequence[str] | None = None,
    *,
    connection: Connection | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the CLI; `connection` lets tests pass an in-memory database."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = _parser().parse_args(argv)
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
        return asyncio.run(_run(args, settings, connection, _Output(args.json, stdout, stderr)))
    except (InsufficientCredits, UserNotFound, SweepLocked, ContentionError) as exc:
        stderr.write(f"refused: {_redact(str(exc), settings)}\n")
        return EXIT_REFUSED
    except (CliError, PolicyFileError, BalanceRefillError, ValueError) as exc:
        stderr.write(f"error: {_redact(str(exc), settings)}\n")
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
