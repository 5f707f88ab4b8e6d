"""`balance-refill simulate`: replay usage against a candidate policy and its baseline.

    balance-refill simulate --policy candidate.yaml [--against active|FILE]
        (--from-db [--days 90] | --csv FILE | --synthetic ...) [--out report.html] [--json]

Both policies run over one pass of the events (`balance_refill.simulate`); the command
prints the summary side by side (JSON under `--json`) and, with `--out`, writes the
self-contained HTML report (the `report` extra).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from rich.table import Table

from balance_refill import load_policy_file
from balance_refill.periods import as_utc
from balance_refill.policy import AnyPolicy
from balance_refill.simulate import SimulationReport, Simulator
from balance_refill.usage import (
    HISTORY_NOTE,
    Event,
    Synthetic,
    Tally,
    history_events,
    read_events,
    transaction_pages,
)

from ._connect import Connection, connect
from ._output import Output
from ._parser import COMMAND_HOOKS, EXIT_OK, MAX_DAYS, MAX_SEED, CliError, bounded_int
from ._policies import policy_store, stored_policy
from .settings import Settings

USES = {
    "--json",
    "--verbose",
    "--policy",
    "--database",
    "--balances-collection",
    "--transactions-collection",
}
"""The global options `simulate` reads."""

ACTIVE = "active"


def _fraction(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        return value

    return parse


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_simulate(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `simulate` through the parser's `add(name, help, description, uses=...)`."""
    p = add(
        "simulate",
        "replay usage against a candidate policy, side by side with the baseline",
        "Replay usage against the candidate --policy and a baseline (--against: the "
        "active policy, or a FILE), running the library's own decisions, and print the "
        "figures side by side. Usage comes from this database (--from-db: LibreChat's "
        "transactions of the last --days days, or with --db-source history the spend "
        "history on balance documents, coarser), a CSV or JSON-lines file "
        "(user,at,credits; an empty credits is a login), or a seeded synthetic "
        "population. --out writes a self-contained HTML report with charts (needs the "
        "report extra). Writes nothing to the database.",
        uses=USES,
    )
    p.add_argument(
        "--against",
        metavar="active|FILE",
        default=ACTIVE,
        help="the baseline: the active policy (default: the stored active version, else BALANCE_REFILL_POLICY) or a policy file",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-db", action="store_true", help="usage recorded in this database")
    source.add_argument("--csv", metavar="FILE", help="events from CSV or JSON lines")
    source.add_argument("--synthetic", action="store_true", help="a seeded synthetic population")
    p.add_argument(
        "--days",
        metavar="N",
        type=bounded_int(1, MAX_DAYS),
        default=90,
        help="--from-db: the last N days; --synthetic: N days (default 90)",
    )
    p.add_argument(
        "--db-source",
        choices=["transactions", "history"],
        default="transactions",
        help="--from-db: LibreChat's spend rows (default) or the spend history (coarser)",
    )
    synthetic = p.add_argument_group("synthetic population (--synthetic)")
    synthetic.add_argument("--users", metavar="N", type=bounded_int(1, 10_000_000), default=1_000)
    synthetic.add_argument(
        "--heavy-share", metavar="F", type=_fraction(0, 1), default=0.1, help="0 to 1 (0.1)"
    )
    synthetic.add_argument(
        "--heavy-factor", metavar="F", type=_fraction(1, 1000), default=5.0, help="(5)"
    )
    synthetic.add_argument(
        "--messages-per-day",
        metavar="F",
        type=_fraction(0.001, 10_000),
        default=2.0,
        help="per ordinary user (2)",
    )
    synthetic.add_argument(
        "--cost-median", metavar="F", type=_fraction(0.01, 1e12), default=1_000.0, help="(1000)"
    )
    synthetic.add_argument(
        "--cost-sigma", metavar="F", type=_fraction(0, 5), default=0.8, help="log-normal (0.8)"
    )
    synthetic.add_argument("--seed", metavar="N", type=bounded_int(0, MAX_SEED), default=0)
    synthetic.add_argument(
        "--start", metavar="YYYY-MM-DD", type=_day, default=None, help="first day (today)"
    )
    p.add_argument("--out", metavar="FILE", help="write the HTML report there")


# -- the policies --------------------------------------------------------------------------


def candidate_policy(args: argparse.Namespace) -> AnyPolicy:
    if not args.policy:
        raise CliError("simulate needs the candidate: pass --policy FILE")
    return load_policy_file(args.policy)


async def active_policy(settings: Settings, connection: Connection | None) -> tuple[str, AnyPolicy]:
    """The policy serving users now, and how to name it: the stored active version when
    the database has one (the policy store), else BALANCE_REFILL_POLICY, the file the
    other commands use without --policy; this function is the one place that reads it."""
    if connection is not None or settings.mongodb_uri:
        conn = connection or connect(settings.mongodb_uri, settings.database_name())
        try:
            stored = await stored_policy(policy_store(conn, settings))
        finally:
            if connection is None:
                await conn.close()
        if stored is not None:
            version, policy = stored
            return f"active (stored version {version})", policy
    if not settings.policy_file:
        raise CliError(
            "--against active: no active policy: none is stored (balance-refill policy push, "
            "then policy activate) and BALANCE_REFILL_POLICY is not set; or pass --against FILE"
        )
    return f"active ({settings.policy_file})", load_policy_file(settings.policy_file)


async def baseline_policy(
    args: argparse.Namespace, settings: Settings, connection: Connection | None
) -> tuple[str, AnyPolicy]:
    if args.against == ACTIVE:
        return await active_policy(settings, connection)
    return args.against, load_policy_file(args.against)


# -- the sources -----------------------------------------------------------------------------


def _lines(path: str) -> Iterator[str]:
    try:
        with Path(path).open(encoding="utf-8", newline="") as handle:
            yield from handle
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None


def _file_window(path: str) -> tuple[datetime, datetime, int]:
    """First and last event times of a file, and the count (a first pass, O(1) memory)."""
    first: datetime | None = None
    last: datetime | None = None
    count = 0
    for event in read_events(_lines(path), name=path):
        first = event.at if first is None else min(first, event.at)
        last = event.at if last is None else max(last, event.at)
        count += 1
    if first is None or last is None:
        raise CliError(f"{path} holds no events")
    return first, last, count


def _run_both(runs: tuple[Simulator, Simulator], events: Iterable[Event]) -> None:
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) >= 10_000:
            for sim in runs:
                sim.feed(batch)
            batch = []
    for sim in runs:
        sim.feed(batch)


async def _from_db(
    args: argparse.Namespace,
    *,
    settings: Settings,
    connection: Connection | None,
    out: Output,
    policies: tuple[AnyPolicy, AnyPolicy],
    baseline: AnyPolicy,
) -> tuple[SimulationReport, SimulationReport, list[str]]:
    if connection is None and not settings.mongodb_uri:
        out.note("MONGODB_URI is not set: reading a temporary, empty in-memory database")
    conn = connection or connect(settings.mongodb_uri, settings.database_name())
    end = as_utc(datetime.now(UTC))
    start = end - timedelta(days=args.days)
    runs = (
        Simulator(policies[0], start=start, end=end),
        Simulator(policies[1], start=start, end=end),
    )
    tally = Tally()
    try:
        if args.db_source == "history":
            events = await history_events(
                conn.collection(settings.balances_collection),
                baseline,
                start=start,
                end=end,
                tally=tally,
            )
            _run_both(runs, events)
            notes = [HISTORY_NOTE, f"balance documents: {tally.describe()}"]
        else:
            async for page in transaction_pages(
                conn.collection(settings.transactions_collection),
                start=start,
                end=end,
                tally=tally,
            ):
                for sim in runs:
                    sim.feed(page)
            notes = [
                f"LibreChat transactions, last {args.days} days: {tally.describe()} "
                "(refill and grant rows are not demand)",
                "logins are not recorded in transactions: refills happen at spends",
            ]
    finally:
        if connection is None:
            await conn.close()
    return runs[0].report(), runs[1].report(), notes


def _synthetic(args: argparse.Namespace) -> Synthetic:
    first = args.start or datetime.now(UTC).date()
    return Synthetic(
        users=args.users,
        days=args.days,
        start=datetime.combine(first, time(), tzinfo=UTC),
        heavy_share=args.heavy_share,
        heavy_factor=args.heavy_factor,
        messages_per_day=args.messages_per_day,
        cost_median=args.cost_median,
        cost_sigma=args.cost_sigma,
        seed=args.seed,
    )


# -- the command -----------------------------------------------------------------------------


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def _shown(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


async def simulate_command(
    args: argparse.Namespace, settings: Settings, connection: Connection | None, out: Output
) -> int:
    from balance_refill.report import html_report, summary  # noqa: PLC0415 - after parsing

    candidate = candidate_policy(args)
    baseline_name, baseline = await baseline_policy(args, settings, connection)
    policies = (candidate, baseline)
    if args.from_db:
        cand, base, notes = await _from_db(
            args,
            settings=settings,
            connection=connection,
            out=out,
            policies=policies,
            baseline=baseline,
        )
    elif args.csv:
        first, last, count = _file_window(args.csv)
        runs = (
            Simulator(candidate, start=first, end=last),
            Simulator(baseline, start=first, end=last),
        )
        _run_both(runs, read_events(_lines(args.csv), name=args.csv))
        cand, base = runs[0].report(), runs[1].report()
        notes = [f"{args.csv}: {count} events"]
    else:
        population = _synthetic(args)
        runs = (
            Simulator(candidate, start=population.start, end=population.end),
            Simulator(baseline, start=population.start, end=population.end),
        )
        for day in population.days_of_events():
            for sim in runs:
                sim.feed(day)
        cand, base = runs[0].report(), runs[1].report()
        notes = [
            f"synthetic: {population.users} users over {population.days} days, "
            f"{population.heavy_share:.0%} heavy (x{population.heavy_factor:g}), "
            f"{population.messages_per_day:g} messages a day, cost median "
            f"{population.cost_median:g} (sigma {population.cost_sigma:g}), seed {population.seed}"
        ]
    rows = summary(cand, base)
    if args.out:
        page = html_report(
            cand,
            base,
            candidate_name=args.policy,
            baseline_name=baseline_name,
            notes=notes,
        )
        _write(args.out, page)
        out.note(f"report written to {args.out}")

    def render() -> None:
        table = Table(title=f"simulation: {args.policy} against {baseline_name}")
        for column in ("figure", "baseline", "candidate", "change"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        for row in rows:
            sign = "+" if row.change > 0 else ""
            table.add_row(
                row.figure, _shown(row.baseline), _shown(row.candidate), sign + _shown(row.change)
            )
        out.console.print(table)
        for note in notes:
            out.line(f"- {note}")

    out.data(
        {
            "candidate": {"policy": args.policy, "report": cand.as_json()},
            "baseline": {"policy": baseline_name, "report": base.as_json()},
            "summary": [
                {"figure": r.figure, "baseline": r.baseline, "candidate": r.candidate} for r in rows
            ],
            "notes": notes,
        },
        render,
    )
    return EXIT_OK


COMMAND_HOOKS.append(add_simulate)
