"""The commands: each takes parsed arguments, calls the library and prints the result."""

from __future__ import annotations

import argparse
import getpass
import logging
import uuid
from collections.abc import Mapping

from rich.table import Table

from balance_refill import (
    BalanceRefiller,
    BalanceState,
    InsufficientCredits,
    UserId,
    UserNotFound,
    load_policy_file,
)
from balance_refill.policy import AnyPolicy, TieredPolicy, as_tiered

from ._connect import Connection
from ._output import Output
from ._parser import EXIT_OK, EXIT_REFUSED, Refused, parse_user
from .settings import Settings

log = logging.getLogger(__name__)


def actor(value: str | None) -> str:
    """The `--actor`, else `cli:<login name>`."""
    if value is not None:
        return value
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


def _with_hint(exc: UserNotFound) -> UserNotFound:
    return UserNotFound(f"{exc} (pass --create to create it with the policy's start_balance)")


def nothing_refilled(policy: AnyPolicy, state: BalanceState) -> str:
    """Why `refill_now` changed nothing, from the user's state and tier: a cap, a top-up
    or reset already at its amount, else LibreChat's own refill still settling."""
    tiers = as_tiered(policy)
    rules = tiers.tiers.get(state.tier) or tiers.tiers[tiers.default_tier]
    balance, cap = state.balance, rules.max_balance
    if cap is not None and balance >= cap:
        return f"cap reached: the balance ({balance}) is at the tier's max_balance ({cap})"
    adaptive = rules.adaptive
    if rules.mode == "top_up" and balance >= (adaptive.min_amount if adaptive else rules.amount):
        amount = (
            f"this period's adaptive amount ({adaptive.min_amount} to {adaptive.max_amount})"
            if adaptive
            else f"the policy's amount ({rules.amount})"
        )
        return (
            f"the balance ({balance}) is already at or above {amount}, and top_up never lowers it"
        )
    if rules.mode == "reset" and adaptive is None and balance == rules.amount:
        return f"the balance already equals the policy's amount ({rules.amount}, reset)"
    return "LibreChat's own refill is settling (pendingRefill is set); try again in a moment"


def _correction_refused(user: str, exc: InsufficientCredits) -> Refused:
    """A negative grant that would go below 0, worded as the correction it is (the
    library raises a spend's refusal, with a next refill time that does not apply)."""
    after = exc.balance - exc.amount
    return Refused(
        f"a correction of -{exc.amount} would take {user}'s balance from {exc.balance} "
        f"to {after}, below 0; nothing changed (pass --allow-negative to allow it)"
    )


POLICY_FIELDS = ("tier", "auto_refill", "next_refill_at")
"""The fields of a state that the policy decides (left out of a read without one)."""


def _decided(state: BalanceState, operation: str) -> None:
    """Log what the library decided (`-vv`)."""
    log.debug(
        "decision: %r refilled=%s granted=%s balance=%s tier=%s auto_refill=%s next_refill_at=%s",
        state.user_id,
        state.refilled,
        state.granted,
        state.balance,
        state.tier,
        state.auto_refill,
        state.next_refill_at.isoformat() if state.next_refill_at else None,
        extra={"operation": operation, "user": state.user_id},
    )


def _operation(args: argparse.Namespace) -> None:
    """Log the operation about to run (`-v`)."""
    shown = {
        key: value
        for key, value in vars(args).items()
        if key in ("amount", "tier", "reason", "actor", "create", "allow_negative", "limit")
        and value not in (None, False)
    }
    log.info(
        "operation: %s %r %s",
        args.command,
        args.user,
        shown or "",
        extra={"operation": args.command, "user": args.user},
    )


def request_id(args: argparse.Namespace, out: Output) -> str:
    """The command's idempotency key: `--request-id`, else a new one. It is shown in the
    result (a table row; under --json a field of the result and always of the status), and
    an error that leaves the outcome unknown (a database error, Ctrl-C) names it, so that
    an operator can retry with it, the write then applying at most once. A refusal
    changed nothing and needs no retry, so its line stays as it was."""
    key: str = args.request_id or f"cli-{uuid.uuid4().hex}"
    out.status.field("request_id", key)
    return key


async def _write(
    args: argparse.Namespace, refiller: BalanceRefiller, user: UserId, key: str
) -> BalanceState:
    """Run the admin write `args.command` names, with idempotency key `key`, and return
    the state it left."""
    cmd, who, reason = args.command, actor(args.actor), args.reason
    if cmd == "grant":
        try:
            return await refiller.grant(
                user,
                args.amount,
                actor=who,
                reason=reason,
                allow_negative=args.allow_negative,
                create=args.create,
                request_id=key,
            )
        except InsufficientCredits as exc:
            if args.amount < 0:
                raise _correction_refused(args.user, exc) from exc
            raise
    if cmd == "set-balance":
        return await refiller.set_balance(
            user, args.amount, actor=who, reason=reason, create=args.create, request_id=key
        )
    if cmd == "set-tier":
        return await refiller.set_tier(
            user, args.tier, actor=who, pinned=args.pinned, reason=reason, request_id=key
        )
    if cmd in ("pause", "resume"):
        return await refiller.set_auto_refill(
            user, cmd == "resume", actor=who, reason=reason, request_id=key
        )
    return await refiller.refill_now(
        user, actor=who, reason=reason, create=args.create, request_id=key
    )


def _title(args: argparse.Namespace) -> str:
    cmd = args.command
    if cmd == "grant":
        return "granted" if args.amount >= 0 else "correction applied"
    if cmd in ("pause", "resume"):
        return "auto refill " + ("resumed" if cmd == "resume" else "paused")
    return {"set-balance": "balance set", "set-tier": "tier set"}.get(cmd, "refilled")


async def admin_command(
    args: argparse.Namespace, refiller: BalanceRefiller, out: Output, *, policy_known: bool = True
) -> int:
    """`show`, `grant`, `set-balance`, `set-tier`, `pause`, `resume`, `refill-now`, `history`.
    `policy_known` False: a read run without a policy (its policy fields are left out)."""
    user = parse_user(args.user, args.id_type)
    cmd = args.command
    _operation(args)
    try:
        if cmd == "show":
            state = await refiller.get_state(user)
            if policy_known:
                _decided(state, cmd)
            out.state(state, "balance", without=() if policy_known else POLICY_FIELDS)
        elif cmd == "history":
            await refiller.get_state(user)  # an unknown user is refused, as by `show`
            out.history(args.user, await refiller.history(user, limit=args.limit))
        else:
            key = request_id(args, out)
            state = await _write(args, refiller, user, key)
            _decided(state, cmd)
            if cmd == "refill-now" and not state.refilled:
                reason = nothing_refilled(refiller.policy, state)
                out.nothing_refilled(args.user, state, reason, request_id=key)
            else:
                out.state(state, _title(args), request_id=key)
    except UserNotFound as exc:
        if getattr(args, "create", None) is False:  # a command that could have created
            raise _with_hint(exc) from exc
        raise
    return EXIT_OK


async def sweep_command(args: argparse.Namespace, refiller: BalanceRefiller, out: Output) -> int:
    """Refill every due user; exit 1 if some users could not be refilled."""
    log.info(
        "operation: sweep active_within=%s batch_size=%s dry_run=%s limit=%s",
        args.active_within,
        args.batch_size,
        args.dry_run,
        args.limit,
        extra={"operation": "sweep"},
    )
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


RULE_COLUMNS = (
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


def librechat_override(args: argparse.Namespace) -> bool | None:
    """--librechat-auto-refill on|off as the override `load_policy_file` takes."""
    choice = getattr(args, "librechat_auto_refill", None)
    return None if choice is None else choice == "on"


def print_rules(out: Output, title: str, tiers: TieredPolicy) -> None:
    """A policy's rules per tier as a table, then its tier rules as lines."""
    table = Table(title=title)
    for column in RULE_COLUMNS:
        table.add_column(column)
    for name, policy in tiers.tiers.items():
        rules = policy.describe()
        adaptive = rules["adaptive"]
        shown = (
            f"{adaptive['min_amount']}..{adaptive['max_amount']} x{adaptive['headroom']} a={adaptive['alpha']}"
            if isinstance(adaptive, Mapping)
            else "-"
        )
        cells = [
            str(rules["threshold_rule" if c == "threshold" else c]) for c in RULE_COLUMNS[1:-1]
        ]
        table.add_row(name, *cells, shown)
    out.console.print(table)
    for rule in tiers.rules:
        out.line(f"rule: {rule.describe()}")


def policy_check_command(args: argparse.Namespace, out: Output) -> int:
    """Validate a policy file and print its rules per tier. A librechat.yaml that would
    refill nobody is shown with refills off and the explanation as a warning."""
    warnings: list[str] = []
    policy = load_policy_file(
        args.file, librechat_auto_refill=librechat_override(args), warnings=warnings
    )
    tiers = as_tiered(policy)
    title = f"{args.file}: valid ({len(tiers.tiers)} tier(s), default {tiers.default_tier!r})"
    for warning in warnings:
        out.note(f"warning: {warning}")
    payload = {**tiers.describe(), "warnings": warnings}
    out.data(payload, lambda: print_rules(out, title, tiers))
    return EXIT_OK


async def demo_command(
    args: argparse.Namespace, settings: Settings, conn: Connection, out: Output
) -> int:
    """The simulation, on `conn` (the embedded mock unless MONGODB_URI is set): a timeline,
    a table and an explanation; under --json, the summary as one JSON object."""
    from .demo import run_demo  # noqa: PLC0415 - the demo loads only when asked for

    out.line(f"database: {settings.masked_uri()}")
    if not conn.mock:  # start from a clean slate on a real server
        await conn.database.drop_collection("balances")
        await conn.database.drop_collection("transactions")
    summary = await run_demo(
        conn.collection("balances"),
        conn.collection("transactions"),
        days=args.days,
        seed=args.seed,
        out=None if out.as_json else out.line,
    )
    out.data({"database": settings.masked_uri(), **summary.as_dict()}, lambda: None)
    return EXIT_OK
