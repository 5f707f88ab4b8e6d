"""What the CLI prints: Rich tables on a terminal or in text, JSON with `--json`, and
the sweep's progress (a bar on a terminal, periodic plain lines otherwise).

Under `--json` each stream carries exactly one JSON object: stdout the command's result
(nothing when it failed), stderr the status (`Status`): the exit code, then `error`,
`notes` and `log` when there are any, written once when the command ends."""

from __future__ import annotations

import json
import logging
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

STRUCTURED = ("operation", "user", "policy_version")
"""The structured fields (`extra=`) a log record may carry, kept under --json."""

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


class Status:
    """What a command says on stderr besides its result: notes, log lines, fields such as
    a generated request id, and the final error. As plain lines when they happen; under
    `--json`, gathered into one object written by `finish`."""

    def __init__(self, as_json: bool, err: TextIO) -> None:
        self.as_json = as_json
        self.err = err
        self.notes: list[str] = []
        self.log: list[dict[str, object]] = []
        self.fields: dict[str, object] = {}

    def note(self, text: str) -> None:
        if self.as_json:
            self.notes.append(text)
        else:
            self.err.write(f"note: {text}\n")

    def field(self, key: str, value: object) -> None:
        """A value the caller may need even after a failure (under --json only)."""
        self.fields[key] = value

    def log_line(self, record: logging.LogRecord, line: str) -> None:
        if self.as_json:
            entry: dict[str, object] = {
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
            for key in STRUCTURED:  # the `extra=` fields a record carries
                if key in record.__dict__:
                    entry[key] = jsonable(record.__dict__[key])
            self.log.append(entry)
        else:
            self.err.write(line + "\n")
            self.err.flush()

    def finish(self, code: int, error: str | None = None, *, refused: bool = False) -> int:
        """Write the error (a line), or under --json the one status object; return `code`."""
        if self.as_json:
            payload: dict[str, object] = {"code": code}
            if error is not None:
                payload = {"error": error, "code": code}
            if self.notes:
                payload["notes"] = self.notes
            if self.log:
                payload["log"] = self.log
            payload.update((key, jsonable(value)) for key, value in self.fields.items())
            self.err.write(json.dumps(payload) + "\n")
        elif error is not None:
            self.err.write(f"{'refused' if refused else 'error'}: {error}\n")
        return code


class Output:
    """Where one command's results go (`stream`), and its notes and progress (`status`)."""

    def __init__(self, as_json: bool, stream: TextIO, status: Status) -> None:
        self.as_json = as_json
        self.stream = stream
        self.status = status
        self.err = status.err
        is_tty = hasattr(stream, "isatty") and stream.isatty()
        self.console = Console(file=stream, highlight=False, width=None if is_tty else 160)

    def line(self, text: str) -> None:
        """A line of human output (nothing under --json: the command prints data then)."""
        if not self.as_json:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A one-line notice on stderr (under --json, an entry of the status's `notes`)."""
        self.status.note(text)

    def data(self, payload: object, render: Callable[[], None]) -> None:
        if self.as_json:
            self.stream.write(json.dumps(jsonable(payload), indent=2) + "\n")
        else:
            render()

    def state(
        self,
        state: BalanceState,
        title: str,
        *,
        without: Sequence[str] = (),
        request_id: str | None = None,
    ) -> None:
        """A state as a table (JSON: an object); the fields in `without` are unknown
        (shown as `-`, JSON null); `request_id`, the write's idempotency key, is a row."""
        fields = {k: None if k in without else v for k, v in state_dict(state).items()}
        if request_id is not None:
            fields["request_id"] = request_id

        def render() -> None:
            table = Table(title=title, show_header=False)
            for key, value in fields.items():
                shown = "-" if value is None else _when(value, "%Y-%m-%d %H:%M:%S UTC")
                table.add_row(key, shown)
            self.console.print(table)

        self.data(fields, render)

    def nothing_refilled(
        self, user: str, state: BalanceState, reason: str, *, request_id: str | None = None
    ) -> None:
        """`refill-now` that changed nothing: one line saying why (JSON: the state and
        `"not_refilled"` with the reason)."""
        key = {} if request_id is None else {"request_id": request_id}
        self.data(
            {**state_dict(state), "not_refilled": reason, **key},
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
        """A progress bar on a terminal, plain lines on `err` otherwise; none under
        `--json` (stderr holds one object then; `-v` logs the sweep's progress into it)."""
        if self.as_json:
            yield lambda done, total: None
            return
        if not self.console.is_terminal:
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
