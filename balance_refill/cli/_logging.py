"""The CLI's logging (the only place in the package that configures any): `-v` shows the
operations and every database call, `-vv` adds the decisions (the updates written, the
documents returned, the library's DEBUG lines).

Records go to one handler on the `balance_refill` logger, installed for the length of a
command and removed after it; the root logger and other libraries' loggers (pymongo's)
are left alone. Database calls are logged by `LoggedCollection`, a wrapper the CLI puts
around the collections it hands to the library, so the library itself stays unchanged.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pymongo.errors import InvalidOperation

ROOT = "balance_refill"
CALLS = "balance_refill.cli.db"
"""The logger of the database calls (INFO: the call; DEBUG: its update and result)."""

log = logging.getLogger(__name__)

_SHOWN = 300  # characters of an argument or a result before it is cut


def level(verbose: int) -> int:
    """0: warnings only; 1 (`-v`): operations and database calls; 2+ (`-vv`): decisions."""
    return (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]


class _Sink(logging.Handler):
    """Hands each formatted record to `emit_line` (a plain line, or an entry of the
    `--json` stderr object)."""

    def __init__(self, emit_line: Callable[[logging.LogRecord, str], None]) -> None:
        super().__init__()
        self.emit_line = emit_line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.emit_line(record, self.format(record))
        except Exception:  # logging must never break a command (handleError reports it)
            self.handleError(record)


@contextmanager
def configured(verbose: int, emit_line: Callable[[logging.LogRecord, str], None]) -> Iterator[None]:
    """Route the package's records at `level(verbose)` to `emit_line` while the block runs,
    and restore the logger as it was afterwards (the CLI also runs inside host processes
    and tests)."""
    logger = logging.getLogger(ROOT)
    handler = _Sink(emit_line)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level(verbose))
    logger.propagate = False  # one copy of each line, even if the host logs to stderr too
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def shown(value: object) -> str:
    """A short rendering of a call's argument or result for the log."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class LoggedCollection:
    """A collection whose calls are logged on `CALLS`: at INFO the method, the collection,
    the filter and the time it took; at DEBUG also the update (the decision as written)
    and what came back. Everything else passes through to the wrapped collection."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._log = logging.getLogger(CALLS)

    @property
    def name(self) -> str:
        return str(self._inner.name)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if attr.startswith("_") or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = value(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._timed(attr, args, kwargs, result, started)
            self._logged(attr, args, kwargs, None, None)  # a cursor: read when iterated
            return result

        return call

    async def _timed(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        pending: Any,
        started: float,
    ) -> Any:
        try:
            result = await pending
        except Exception as exc:
            self._logged(method, args, kwargs, started, f"raised {type(exc).__name__}")
            raise
        self._logged(method, args, kwargs, started, result)
        return result

    def _logged(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float | None,
        result: object,
    ) -> None:
        took = f" ({(time.perf_counter() - started) * 1000:.1f} ms)" if started is not None else ""
        first = shown(args[0]) if args else ""
        self._log.info("db: %s.%s(%s)%s", self.name, method, first, took)
        if self._log.isEnabledFor(logging.DEBUG):
            rest = [shown(a) for a in args[1:]] + [f"{k}={shown(v)}" for k, v in kwargs.items()]
            if rest:
                self._log.debug("db: %s.%s ... %s", self.name, method, ", ".join(rest))
            if started is not None:
                self._log.debug("db: %s.%s -> %s", self.name, method, shown(_plain(result)))


def _plain(result: object) -> object:
    """A driver result (InsertOneResult, UpdateResult, ...) as its counts, else as is."""
    for fields in (("matched_count", "modified_count", "upserted_id"), ("inserted_id",)):
        if all(hasattr(result, f) for f in fields):
            try:
                return {f: getattr(result, f) for f in fields}
            except InvalidOperation:  # an unacknowledged write has no counts
                return type(result).__name__
    return result
