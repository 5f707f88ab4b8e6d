"""The kill-and-cut run of issue 21 on the wire backend: worker processes on the real
driver killed with SIGKILL mid-call, a proxy cutting connections (most after the server
applied the request), then an independent checker of the final database and the logs.

`BALANCE_REFILL_KILLCUT=long` selects the longer profile (tests/killcut/run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .killcut.run import profile_from_env, run
from .wire import backend

SUMMARY: list[str] = []  # one line per run, printed in the terminal summary


@pytest.mark.skipif(
    not backend.is_wire(),
    reason="kills real processes on the real driver through a proxy to one wire server: "
    "runs on the wire backend (BALANCE_REFILL_TEST_BACKEND=wire)",
)
async def test_kills_and_cuts_leave_every_balance_exact(tmp_path: Path) -> None:
    """Under SIGKILLs and cut connections, every invariant holds: 0 violations."""
    result = await run(profile_from_env(), backend.uri(), tmp_path)
    SUMMARY.append(result.summary())
    report = result.report
    assert result.kills > 0
    assert result.proxy.cuts_after_apply > 0
    assert report.balance_equations == report.users
    assert report.violations == [], "\n".join(report.violations[:50])
