"""The commands: each takes parsed arguments, calls the library and prints the result."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Mapping

from rich.table import Table

from balance_refill import BalanceRefiller, load_policy_file
from balance_refill.policy import as_tiered

from ._connect import Connection
from ._output import Output
from ._parser import EXIT_OK, EXIT_REFUSED, parse_user
from .settings import Settings


def actor(value: str | None) -> str:
    """The `--actor`, else `cli:<login name>`."""
    if value is not None:
        return value
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


async def admin_command(args: argparse.Namespace, refiller: BalanceRefiller, out: Output) -> int:
    """`show`, `grant`, `set-balance`, `set-tier`, `pause`, `resume`, `refill-now`, `history`."""
    user = parse_user(args.user, args.id_type)
    cmd = args.command
    if cmd == "show":
        out.state(await refiller.get_state(user), "balance")
    elif cmd == "grant":
        state = await refiller.grant(
            user,
            args.amount,
            actor=actor(args.actor),
            reason=args.reason,
            allow_negative=args.allow_negative,
        )
        out.state(state, "granted")
    elif cmd == "set-balance":
        state = await refiller.set_balance(
            user, args.amount, actor=actor(args.actor), reason=args.reason
        )
        out.state(state, "balance set")
    elif cmd == "set-tier":
        state = await refiller.set_tier(
            user, args.tier, actor=actor(args.actor), pinned=args.pinned
        )
        out.state(state, "tier set")
    elif cmd in ("pause", "resume"):
        resume = cmd == "resume"
        state = await refiller.set_auto_refill(user, resume, actor=actor(args.actor))
        out.state(state, "auto refill " + ("resumed" if resume else "paused"))
    elif cmd == "refill-now":
        state = await refiller.refill_now(user, actor=actor(args.actor), reason=args.reason)
        out.state(state, "refilled")
    elif cmd == "history":
        out.history(args.user, await refiller.history(user, limit=args.limit))
    return EXIT_OK


async def sweep_command(args: argparse.Namespace, refiller: BalanceRefiller, out: Output) -> int:
    """Refill every due user; exit 1 if some users could not be refilled."""
    with out.sweep_progress() as progress:
        report = await refiller.sweep(
            active_within=args.active_within,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            limit=args.limit,
            progress=progress,
        )
    out.sweep_report(report)
    return EXIT_OK if report.ok else EXIT_REFUSED


def policy_check_command(args: argparse.Namespace, out: Output) -> int:
    """Validate a policy file and print its rules per tier."""
    tiers = as_tiered(load_policy_file(args.file))
    described = tiers.describe()
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

    def render() -> None:
        table = Table(
            title=f"{args.file}: valid ({len(tiers.tiers)} tier(s), default {tiers.default_tier!r})"
        )
        for column in columns:
            table.add_column(column)
        for name, policy in tiers.tiers.items():
            rules = policy.describe()
            adaptive = rules["adaptive"]
            shown = (
                f"{adaptive['min_amount']}..{adaptive['max_amount']} x{adaptive['headroom']} a={adaptive['alpha']}"
                if isinstance(adaptive, Mapping)
                else "-"
            )
            table.add_row(name, *(str(rules[c]) for c in columns[1:-1]), shown)
        out.console.print(table)
        for rule in tiers.rules:
            out.line(f"rule: {rule.describe()}")

    out.data(described, render)
    return EXIT_OK


async def demo_command(
    args: argparse.Namespace, settings: Settings, conn: Connection, out: Output
) -> int:
    """The 90-day simulation, on `conn` (the embedded mock unless MONGODB_URI is set)."""
    from .demo import run_demo  # noqa: PLC0415 - the demo loads only when asked for

    out.line(f"database: {settings.masked_uri()}")
    if not conn.mock:  # start from a clean slate on a real server
        await conn.database.drop_collection("balances")
        await conn.database.drop_collection("transactions")
    await run_demo(
        conn.collection("balances"),
        conn.collection("transactions"),
        days=args.days,
        seed=args.seed,
        out=out.line,
    )
    return EXIT_OK
