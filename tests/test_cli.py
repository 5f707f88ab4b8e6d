"""The `balance-refill` CLI, in-process against the test backend: output, JSON, exit codes."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from balance_refill.cli import EXTRA_HINT, Connection, main

TWO_TIERS = """\
default_tier: regular
tiers:
  regular:
    amount: 10000
    interval: 30d
    start_balance: 20000
  heavy:
    amount: 50000
    calendar: month
    timezone: Europe/Paris
    adaptive: {min_amount: 20000, max_amount: 80000, headroom: 1.2}
rules:
  - {from_tier: regular, to_tier: heavy, min_usage: 0.8, periods: 2, of_last: 3}
  - {from_tier: heavy, to_tier: regular, max_usage: 0.1, periods: 3, of_last: 3}
"""

LIBRECHAT = """\
version: 1.2.1
endpoints: {}
balance:
  enabled: true
  startBalance: 20000
  autoRefillEnabled: true
  refillIntervalValue: 30
  refillIntervalUnit: days
  refillAmount: 10000
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(TWO_TIERS)
    return path


@pytest.fixture
def conn(cli_connection: Connection | None) -> Connection | None:
    return cli_connection


class Run:
    def __init__(self, conn: Connection | None, policy: Path) -> None:
        self.conn = conn
        self.policy = policy

    def __call__(self, *argv: str, policy: bool = True) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = [*argv, "--policy", str(self.policy)] if policy else list(argv)
        code = main(args, connection=self.conn, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def run(conn: Connection | None, policy_file: Path) -> Run:
    return Run(conn, policy_file)


def test_policy_check_prints_rules_per_tier(run: Run, policy_file: Path) -> None:
    code, out, _ = run("policy", "check", str(policy_file), policy=False)
    assert code == 0
    assert "regular" in out
    assert "heavy" in out
    assert "every calendar month (Europe/Paris)" in out
    assert "regular -> heavy when spent >= 80%" in out
    data = run.json("policy", "check", str(policy_file))
    assert data["tiers"]["heavy"]["adaptive"]["max_amount"] == 80_000


def test_policy_check_librechat_yaml(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "librechat.yaml"
    path.write_text(LIBRECHAT)
    data = run.json("policy", "check", str(path))
    assert data["tiers"]["default"] | {"period": "30d"} == data["tiers"]["default"]
    assert (data["tiers"]["default"]["mode"], data["tiers"]["default"]["threshold"]) == ("add", 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("amount: -1\ninterval: 30d\n", "amount"),
        ("amount: 5\ninterval: 30y\n", "interval"),
        ("default_tier: x\ntiers: {a: {amount: 1, interval: 1d}}\n", "default_tier"),
        ("[1, 2", "not valid YAML"),
        ("- just a list\n", "mapping"),
        ("version: 1\n", "balance"),
    ],
)
def test_policy_check_rejects_with_exit_2(
    run: Run, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run("policy", "check", str(path), policy=False)
    assert code == 2
    assert message in err


def test_admin_flow_and_history(run: Run) -> None:
    user = str(ObjectId())
    assert (
        run.json("grant", user, "500", "--reason", "welcome", "--actor", "ops")["balance"] == 20_500
    )
    assert (
        run.json("set-balance", user, "100", "--reason", "fix", "--actor", "ops")["balance"] == 100
    )
    assert run.json("set-tier", user, "heavy", "--actor", "ops", "--pin")["pinned"] is True
    assert run.json("pause", user, "--actor", "ops")["auto_refill"] is False
    assert run.json("resume", user, "--actor", "ops")["auto_refill"] is True
    refilled = run.json("refill-now", user, "--reason", "goodwill", "--actor", "ops")
    assert refilled["refilled"] is True
    shown = run.json("show", user)
    # refill-now is the next refill: heavy's adaptive amount applies (EWMA of (0,) from 50000, x1.2)
    assert (shown["tier"], shown["balance"]) == ("heavy", 30_000)
    history = run.json("history", user, "--limit", "10")
    assert [r["context"] for r in history] == [
        "refillNow",
        "setAutoRefill",
        "setAutoRefill",
        "setTier",
        "setBalance",
        "admin",
    ]
    code, out, _ = run("history", user)
    assert code == 0
    assert "goodwill" in out


def test_ids_stored_with_their_types(run: Run, db: Any) -> None:
    """24 hex digits are an ObjectId (LibreChat); --id-type str/int for other layouts."""
    hex_id = "64f0c0ffee0000000000beef"
    run.json("grant", hex_id, "1", "--reason", "r")
    run.json("grant", hex_id, "1", "--reason", "r", "--id-type", "str")
    run.json("grant", "42", "1", "--reason", "r", "--id-type", "int")
    run.json("grant", "alice", "1", "--reason", "r")

    async def kinds() -> set[str]:
        return {type(d["user"]).__name__ async for d in db["balances"].find()}

    assert asyncio.run(kinds()) == {"ObjectId", "str", "int"}


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("show", "nobody"), 1, "no balance document"),
        (("grant", "u", "-999999", "--reason", "r"), 1, "refused"),
        (("grant", "u", "abc", "--reason", "r"), 2, "not a number"),
        (("grant", "u", "5", "--reason", "r", "--actor", ""), 2, "actor"),
        (("set-tier", "u", "platinum"), 2, "platinum"),
        (("show", "u", "--id-type", "objectid"), 2, "'u' is not a 24-digit hex ObjectId"),
        (("history", "u", "--limit", "0"), 2, "limit"),
        (("frobnicate",), 2, ""),
    ],
)
def test_exit_codes(run: Run, argv: tuple[str, ...], code: int, message: str) -> None:
    """0 ok, 1 refused, 2 bad input; the message names the bad value."""
    run.json("grant", "u", "1", "--reason", "seed")
    got, _, err = run(*argv)
    assert got == code
    assert message in err


def test_missing_policy_is_a_configuration_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BALANCE_REFILL_POLICY", raising=False)
    code, _, err = run("show", "u", policy=False)
    assert code == 2
    assert "--policy" in err


def test_policy_from_environment(
    run: Run, policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALANCE_REFILL_POLICY", str(policy_file))
    code, _, err = run("grant", "u", "5", "--reason", "r", policy=False)
    assert code == 0, err


# pymongo's monitor can leave a refused socket for the garbage collector; collect it here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("host", ["127.0.0.1:1", "no-such-host.invalid"])
def test_password_never_printed(
    monkeypatch: pytest.MonkeyPatch, policy_file: Path, host: str
) -> None:
    """With a URI holding a password, neither output nor errors show it."""
    secret = "hunter2-very-secret"  # noqa: S105 - a fake password the test hunts for
    monkeypatch.setenv(
        "MONGODB_URI",
        f"mongodb://admin:{secret}@{host}/LibreChat?serverSelectionTimeoutMS=50&connectTimeoutMS=50",
    )
    out, err = io.StringIO(), io.StringIO()
    code = main(["show", "u", "--policy", str(policy_file)], stdout=out, stderr=err)
    assert code == 2
    assert secret not in out.getvalue() + err.getvalue()
    assert "error:" in err.getvalue()
    gc.collect()


def test_demo_subcommand(run: Run) -> None:
    code, out, _ = run("demo", "--days", "35", policy=False)
    assert code == 0
    assert "refilled at login" in out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _seed_due(db: Any, n: int) -> None:
    from datetime import UTC, datetime

    async def seed() -> None:
        await db["balances"].insert_many(
            [
                {
                    "user": f"s{i}",
                    "tokenCredits": 0,
                    "lastRefill": datetime(2000, 1, 1, tzinfo=UTC),
                    "lastSeen": datetime(2025, 12, 31, tzinfo=UTC),
                }
                for i in range(n)
            ]
        )

    asyncio.run(seed())


def test_sweep_dry_run_then_real(run: Run, db: Any) -> None:
    _seed_due(db, 12)
    dry = run.json("sweep", "--dry-run", "--batch-size", "5")
    assert (dry["dry_run"], dry["refilled"], dry["batches"]) == (True, 12, 3)
    code, out, err = run("sweep", "--batch-size", "5", "--active-within", "36000d")
    assert code == 0, err
    assert "refilled" in out
    assert "12" in out
    assert "users scanned" in err  # plain progress lines when not a terminal
    again = run.json("sweep")
    assert again["refilled"] == 0


def test_sweep_progress_bar_on_a_terminal(
    conn: Connection | None, policy_file: Path, db: Any
) -> None:
    _seed_due(db, 7)
    out, err = _Tty(), io.StringIO()
    assert (
        main(
            ["sweep", "--batch-size", "3", "--policy", str(policy_file)],
            connection=conn,
            stdout=out,
            stderr=err,
        )
        == 0
    )
    assert "7/7" in out.getvalue()
    assert err.getvalue() == ""


def test_sweep_lease_held_exits_1(run: Run, db: Any) -> None:
    from datetime import UTC, datetime

    async def hold() -> None:
        await db["balance_refill_leases"].insert_one(
            {
                "_id": "sweep:balances",
                "holder": "other-host:42",
                "expiresAt": datetime(2999, 1, 1, tzinfo=UTC),
            }
        )

    asyncio.run(hold())
    code, _, err = run("sweep")
    assert code == 1
    assert "other-host:42" in err


def test_sweep_failed_users_exit_nonzero(
    run: Run, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user whose refill the server rejects makes the sweep exit non-zero."""
    from pymongo.errors import BulkWriteError

    _seed_due(db, 3)

    async def failing_bulk(self: Any, requests: Any, ordered: bool = True, **kwargs: Any) -> Any:
        raise BulkWriteError(
            {
                "nMatched": 0,
                "writeErrors": [
                    {"index": i, "code": 2, "errmsg": "bad"} for i in range(len(requests))
                ],
            }
        )

    # The class of the test database's collections: the mock's, or pymongo's on a server.
    monkeypatch.setattr(type(db["balances"]), "bulk_write", failing_bulk)
    code, out, _ = run("sweep", "--json")
    assert code == 1
    assert json.loads(out)["errors"] == 3


def test_bad_sweep_arguments(run: Run) -> None:
    code, _, err = run("sweep", "--active-within", "whenever")
    assert code == 2
    assert "whenever" in err


@pytest.mark.parametrize("module", ["rich", "yaml", "pydantic_settings", "mongomock_motor"])
def test_without_the_cli_extra_main_prints_one_line(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a module of the `cli` extra, `main` prints one line naming the extra, exit 2."""
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` sees when absent
    out, err = io.StringIO(), io.StringIO()
    assert main(["demo"], stdout=out, stderr=err) == 2
    assert err.getvalue() == EXTRA_HINT + "\n"
    assert "pip install 'balance_refill[cli]'" in EXTRA_HINT
    assert out.getvalue() == ""


def test_python_m_without_the_cli_extra() -> None:
    """`python -m balance_refill demo` on a core install: the hint, exit 2, no traceback."""
    hide = "; ".join(
        f"sys.modules[{name!r}] = None"
        for name in ("rich", "yaml", "pydantic_settings", "mongomock_motor")
    )
    code = (
        f"import runpy, sys; {hide}; sys.argv = ['balance_refill', 'demo']; "
        "runpy.run_module('balance_refill', run_name='__main__', alter_sys=True)"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (2, "", EXTRA_HINT + "\n")
