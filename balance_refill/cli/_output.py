"""What the CLI prints: Rich tables on a terminal or in text, JSON with `--json`, and
the sweep's progress (a bar on a terminal, periodic plain lines otherwise)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TextIO

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

from balance_refill import BalanceState, SweepReport

ProgressCallback = Callable[[int, int | None], None]
"""Called by the sweep after every batch with (users scanned, candidates expected)."""


def jsonable(value: object) -> object:
    """`value` with datetimes and ObjectIds as strings, ready for `json.dumps`."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def state_dict(state: BalanceState) -> dict[str, object]:
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


def _when(value: object, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return value.strftime(fmt) if isinstance(value, datetime) else str(value)


class Output:
    """Where one command's results go (`stream`) and its progress lines (`err`)."""

    def __init__(self, as_json: bool, stream: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.stream = stream
        self.err = err
        is_tty = hasattr(stream, "isatty") and stream.isatty()
        self.console = Console(file=stream, highlight=False, width=None if is_tty else 160)

    def line(self, text: str) -> None:
        """A line of human output (nothing under --json: the command prints data then)."""
        if not self.as_json:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A one-line notice on stderr (a JSON object `{"note": ...}` under --json)."""
        self.err.write((json.dumps({"note": text}) if self.as_json else f"note: {text}") + "\n")

    def data(self, payload: object, render: Callable[[], None]) -> None:
        if self.as_json:
            self.stream.write(json.dumps(jsonable(payload), indent=2) + "\n")
        else:
            render()

    def state(self, state: BalanceState, title: str) -> None:
        def render() -> None:
            table = Table(title=title, show_header=False)
            for key, value in state_dict(state).items():
                shown = "-" if value is None else _when(value, "%Y-%m-%d %H:%M:%S UTC")
                table.add_row(key, shown)
            self.console.print(table)

        self.data(state_dict(state), render)

    def nothing_refilled(self, user: str, state: BalanceState, reason: str) -> None:
        """`refill-now` that changed nothing: one line saying why (JSON: the state and
        `"not_refilled"` with the reason)."""
        self.data(
            {**state_dict(state), "not_refilled": reason},
            lambda: self.line(f"nothing to refill for {user}: {reason}"),
        )

    def history(self, user: str, rows: Sequence[Mapping[str, object]]) -> None:
        def render() -> None:
            table = Table(title=f"ledger of {user} (newest first)")
            for column in ("when", "context", "amount", "before", "after", "actor", "reason"):
                table.add_column(column)
            for row in rows:
                table.add_row(
                    _when(row.get("createdAt")),
                    *(
                        str(row.get(field, ""))
                        for field in (
                            "context",
                            "rawAmount",
                            "balanceBefore",
                            "balanceAfter",
                            "actor",
                            "reason",
                        )
                    ),
                )
            self.console.print(table)

        self.data(list(rows), render)

    def sweep_report(self, report: SweepReport) -> None:
        def render() -> None:
            title = "sweep (dry run: nothing written)" if report.dry_run else "sweep"
            table = Table(title=title, show_header=False)
            table.add_row("scanned", str(report.scanned))
            table.add_row("candidates read", str(report.read))
            table.add_row("would refill" if report.dry_run else "refilled", str(report.refilled))
            table.add_row("credits granted", str(report.granted))
            for reason, count in report.skipped.items():
                table.add_row(f"skipped: {reason}", str(count))
            for tier, count in sorted(report.tiers.items()):
                table.add_row(f"tier {tier}", str(count))
            table.add_row("pending rows settled", str(report.settled_pending))
            table.add_row("errors", str(report.errors))
            table.add_row("duration", f"{report.duration.total_seconds():.2f}s")
            self.console.print(table)

        self.data(report.as_dict(), render)

    @contextmanager
    def sweep_progress(self) -> Iterator[ProgressCallback]:
        """A progress bar on a terminal (unless `--json`), else plain lines on `err`."""
        if not self.console.is_terminal or self.as_json:
            yield PlainProgress(self.err)
            return
        columns = (
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}/s"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console) as bar:
            task = bar.add_task("sweep", total=None, rate="-")

            def advance(done: int, total: int | None) -> None:
                speed = bar.tasks[0].speed
                bar.update(task, completed=done, total=total, rate=f"{speed:.0f}" if speed else "-")

            yield advance


class PlainProgress:
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
