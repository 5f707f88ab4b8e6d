"""`balance-refill`: the command-line tool, shipped as the `cli` extra.

    pip install 'balance_refill[cli]'

It parses, configures logging (the only place that does), calls the library, prints
Rich tables (or `--json`: one JSON object per stream) and returns an exit code: 0 ok,
1 refused (insufficient credits, unknown user, unknown policy version, a held lease,
users a sweep could not refill), 2 bad input or configuration, 3 a `--request-id`
reused with other arguments, 130 interrupted. Error messages name the bad value;
credentials are never printed.

Without the extra (rich, pyyaml, pydantic-settings, mongomock-motor), `main` prints a
one-line hint naming it and returns 2. `Connection` and `connect` need only the core.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from typing import TextIO

from ._connect import Client, Collection, Connection, Database, connect

EXTRA_MODULES = ("rich", "yaml", "pydantic_settings", "mongomock_motor")
"""The modules the `cli` extra brings (the top-level import names)."""

EXTRA_HINT = "balance-refill needs the CLI extra: pip install 'balance_refill[cli]'"


def missing_extra() -> str | None:
    """The first module of the `cli` extra that cannot be imported, or None."""
    for name in EXTRA_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a broken install, or None in sys.modules
            return name
    return None


def main(
    argv: Sequence[str] | None = None,
    *,
    connection: Connection | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the CLI with `argv` (default: `sys.argv[1:]`) and return its exit code.

    `connection` hands in an open database (see `Connection`): the CLI then uses it
    instead of `MONGODB_URI` and leaves it open. `stdout` and `stderr` default to the
    process's streams.
    """
    err = stderr or sys.stderr
    if missing_extra() is None:
        try:
            from ._app import run_cli  # noqa: PLC0415 - needs the extra, checked just above
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] not in EXTRA_MODULES:
                raise
        else:
            return run_cli(argv, connection, stdout or sys.stdout, err)
    err.write(EXTRA_HINT + "\n")
    return 2


__all__ = [
    "EXTRA_HINT",
    "Client",
    "Collection",
    "Connection",
    "Database",
    "connect",
    "main",
]
