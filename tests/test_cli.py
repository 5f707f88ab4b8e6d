"""The `balance-refill` CLI, in-process against the test backend: output, JSON, exit codes."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
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


def cli(conn: Connection | None, *argv: str) -> tuple[int, str, str]:
    """Run the CLI on `conn` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), connection=conn, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class Run:
    def __init__(self, conn: Connection | None, policy: Path) -> None:
        self.conn = conn
        self.policy = policy

    def __call__(self, *argv: str, policy: bool = True) -> tuple[int, str, str]:
        return cli(self.conn, *argv, *(("--policy", str(self.policy)) if policy else ()))

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
    granted = run.json("grant", user, "500", "--reason", "welcome", "--actor", "ops", "--create")
    assert granted["balance"] == 20_500
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
    run.json("grant", hex_id, "1", "--reason", "r", "--create")
    run.json("grant", hex_id, "1", "--reason", "r", "--id-type", "str", "--create")
    run.json("grant", "42", "1", "--reason", "r", "--id-type", "int", "--create")
    run.json("grant", "alice", "1", "--reason", "r", "--create")

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
    run.json("grant", "u", "1", "--reason", "seed", "--create")
    got, _, err = run(*argv)
    assert got == code
    assert message in err


def test_missing_policy_is_a_configuration_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that writes needs a policy (exit 2, naming --policy); reads do not."""
    monkeypatch.delenv("BALANCE_REFILL_POLICY", raising=False)
    code, _, err = run("grant", "u", "5", "--reason", "r", policy=False)
    assert code == 2
    assert "--policy" in err


def test_policy_from_environment(
    run: Run, policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALANCE_REFILL_POLICY", str(policy_file))
    code, _, err = run("grant", "u", "5", "--reason", "r", "--create", policy=False)
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


# -- issue 11: what a new user trips on ----------------------------------------------------


def _count(db: Any, collection: str) -> int:
    async def count() -> int:
        return int(await db[collection].count_documents({}))

    return asyncio.run(count())


@pytest.mark.parametrize(
    "argv",
    [
        ("grant", "typo-user", "5", "--reason", "r"),
        ("set-balance", "typo-user", "5", "--reason", "r"),
        ("refill-now", "typo-user", "--reason", "r"),
    ],
)
def test_admin_commands_refuse_unknown_users_without_create(
    run: Run, db: Any, argv: tuple[str, ...]
) -> None:
    """An unknown user is one line, exit 1, nothing written; `--create` creates them."""
    code, out, err = run(*argv)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "no balance document" in err
    assert "--create" in err
    assert _count(db, "balances") == _count(db, "transactions") == 0
    code, _, err = run(*argv, "--create")
    assert code == 0, err
    assert _count(db, "balances") == 1


def test_history_of_an_unknown_user_exits_1_like_show(run: Run) -> None:
    """`history` of a user with no balance document is refused, as `show` is."""
    for command in ("show", "history"):
        code, out, err = run(command, "nobody")
        assert (code, out) == (1, "")
        assert err == "refused: user 'nobody' has no balance document\n"


ADD_WITH_CAP = "amount: 1000\ninterval: 30d\nmode: add\nmax_balance: 5000\nstart_balance: 5000\n"


@pytest.mark.parametrize(
    ("policy_text", "pending", "why"),
    [
        (TWO_TIERS, False, "already at or above the policy's amount (10000)"),
        (ADD_WITH_CAP, False, "cap reached"),
        (TWO_TIERS, True, "LibreChat's own refill is settling"),
    ],
)
def test_refill_now_that_adds_nothing_says_why(
    conn: Connection | None, tmp_path: Path, db: Any, policy_text: str, pending: bool, why: str
) -> None:
    """`refill-now` that would change nothing writes nothing, says why in one line, exit 0."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text)
    run = Run(conn, path)
    run.json("grant", "u", "1", "--reason", "seed", "--create")
    if pending:  # below the amount, so only LibreChat's marker stands in the way
        run.json("set-balance", "u", "0", "--reason", "spent")

        async def mark() -> None:
            await db["balances"].update_one({"user": "u"}, {"$set": {"pendingRefill": 1}})

        asyncio.run(mark())
    rows = _count(db, "transactions")
    code, out, err = run("refill-now", "u", "--reason", "goodwill")
    assert code == 0, err
    assert out.count("\n") == 1
    assert out.startswith("nothing to refill for u: ")
    assert why in out
    data = run.json("refill-now", "u", "--reason", "goodwill")
    assert data["refilled"] is False
    assert why in data["not_refilled"]
    assert _count(db, "transactions") == rows


def test_demo_on_an_unreachable_server_is_one_line() -> None:
    """The README's failing command: one line on stderr, password masked, exit 2."""
    env = {
        **os.environ,
        "MONGODB_URI": "mongodb://admin:s3cretpw@127.0.0.1:1/?serverSelectionTimeoutMS=500",
    }
    done = subprocess.run(
        [sys.executable, "-m", "balance_refill", "demo", "--days", "1"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: mongodb://admin:***@127.0.0.1:1/")
    assert "ServerSelectionTimeoutError" in done.stderr
    assert "s3cretpw" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("mongodb://admin:s3cretpw@127.0.0.1:notaport/", "Port contains non-digit characters"),
        ("mongodb://admin:s3c@retpw@localhost/", "must be escaped according to RFC 3986"),
        ("http://admin:s3cretpw@localhost/", "URI must begin with 'mongodb://'"),
    ],
)
@pytest.mark.parametrize("command", [("show", "u"), ("demo", "--days", "1")])
def test_malformed_uri_gives_the_drivers_reason(
    monkeypatch: pytest.MonkeyPatch,
    policy_file: Path,
    uri: str,
    reason: str,
    command: tuple[str, ...],
) -> None:
    """A malformed MONGODB_URI: one line with the driver's reason, the password masked."""
    monkeypatch.setenv("MONGODB_URI", uri)
    monkeypatch.setenv("BALANCE_REFILL_POLICY", str(policy_file))
    out, err = io.StringIO(), io.StringIO()
    assert main(list(command), stdout=out, stderr=err) == 2
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("error: cannot use MONGODB_URI: ")
    assert reason in err.getvalue()
    assert "retpw" not in out.getvalue() + err.getvalue()


def test_demo_json_is_a_summary(run: Run) -> None:
    """`demo --json` prints one JSON object: totals, users, timeline, explanation."""
    code, out, err = run("demo", "--days", "32", "--json", policy=False)
    assert code == 0, err
    data = json.loads(out)
    assert data["days"] == 32
    assert data["messages"] > data["refused"] > 0
    assert [u["user"] for u in data["users"]] == ["ana", "ben", "cyd", "dan"]
    assert (data["timeline"][0]["day"], data["timeline"][0]["date"]) == (0, "2026-01-01")
    assert any("refilled at login" in e["event"] for e in data["timeline"])
    assert data["explanation"]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("show", "nobody"), 1),
        (("set-tier", "nobody", "platinum"), 2),
        (("grant", "u", "abc", "--reason", "r"), 2),
        (("demo", "--days", "0"), 2),
        (("show", "u", "--bogus"), 2),
    ],
)
def test_errors_under_json_are_json_on_stderr(run: Run, argv: tuple[str, ...], code: int) -> None:
    """Under --json an error is one JSON object on stderr, `{"error": ..., "code": ...}`
    (and an admin write's `request_id`)."""
    got, out, err = run(*argv, "--json")
    assert (got, out) == (code, "")
    assert err.count("\n") == 1
    payload = json.loads(err)
    assert set(payload) - {"request_id"} == {"error", "code"}
    assert payload["code"] == code
    assert payload["error"]


@pytest.mark.parametrize(
    "argv",
    [
        ("-v", "show", "u"),
        ("show", "u", "-v"),
        ("--json", "show", "u"),
        ("show", "--json", "u"),
        ("--id-type", "str", "show", "u"),
        ("--transactions-collection", "transactions", "history", "u"),
        ("history", "u", "--balances-collection", "balances"),
    ],
)
def test_global_flags_before_or_after_the_command(
    conn: Connection | None, policy_file: Path, argv: tuple[str, ...]
) -> None:
    """`-v`, `--json`, `--policy`, `--id-type` and the database flags go on either side."""
    run = Run(conn, policy_file)
    run.json("grant", "u", "1", "--reason", "seed", "--create")
    out, err = io.StringIO(), io.StringIO()
    code = main(["--policy", str(policy_file), *argv], connection=conn, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert "u" in out.getvalue()
    if "--json" in argv:
        assert json.loads(out.getvalue())["user"] == "u"


def test_bad_flag_after_a_command_prints_that_commands_usage(run: Run) -> None:
    code, out, err = run("grant", "u", "5", "--reason", "r", "--bogus")
    assert (code, out) == (2, "")
    assert err.startswith("usage: balance-refill grant ")
    assert "balance-refill grant: error: unrecognized arguments: --bogus" in err
    code, _, err = run("demo", "--days", "x", policy=False)
    assert code == 2
    assert err.startswith("usage: balance-refill demo ")


@pytest.mark.parametrize(
    ("text", "message", "absent"),
    [
        ("amount: -5\ninterval: 30d\n", "amount: should be greater than 0, got -5", "threshold"),
        ("amount: 5\ninterval: 30d\nmax_balance: 2\n", ": max_balance (2) is below", "policy:"),
        ("amount: 5\ninterval: 30y\n", "interval: cannot read interval '30y'", "Value error"),
        ("amount: 5\ninterval: 3d\nmode: bogus\n", "mode: should be 'top_up'", "Input should"),
        ("amount: 5\ninterval: 3d\nsurprise: 1\n", "surprise: is not a known setting", "Extra"),
    ],
)
def test_policy_errors_are_plain_sentences(
    run: Run, tmp_path: Path, text: str, message: str, absent: str
) -> None:
    """No pydantic prefixes, and no error for a field the file does not have."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run("policy", "check", str(path), policy=False)
    assert code == 2
    assert err.count("\n") == 1
    assert message in err
    assert absent not in err
    assert "Value error" not in err


def test_without_mongodb_uri_the_cli_says_nothing_is_saved(
    policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without MONGODB_URI: one note on stderr (under --json, in the one status object),
    stdout clean."""
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setenv("BALANCE_REFILL_POLICY", str(policy_file))
    out, err = io.StringIO(), io.StringIO()
    assert main(["grant", "bob", "100", "--reason", "r", "--create"], stdout=out, stderr=err) == 0
    assert err.getvalue().count("in-memory database") == 1
    assert "nothing is saved" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main(["show", "bob", "--json"], stdout=out, stderr=err) == 1
    assert out.getvalue() == ""
    status = json.loads(err.getvalue())
    (note,) = status.pop("notes")
    assert "in-memory database" in note
    assert status == {"error": "user 'bob' has no balance document", "code": 1}


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (("--days", "-5"), "--days"),
        (("--days", "0"), "--days"),
        (("--days", "3651"), "--days"),
        (("--seed", "-1"), "--seed"),
        (("--seed", str(2**32)), "--seed"),
    ],
)
def test_demo_refuses_nonsense(run: Run, argv: tuple[str, ...], flag: str) -> None:
    code, out, err = run("demo", *argv, policy=False)
    assert (code, out) == (2, "")
    assert f"argument {flag}: must be a whole number from" in err


def test_demo_dates_have_the_year_and_the_figures_are_explained(run: Run) -> None:
    code, out, _ = run("demo", "--days", "32", policy=False)
    assert code == 0
    assert "day  0  Thu 2026-01-01  ana signs up with 20000" in out
    assert "next refill 2026-" in out
    assert "eve" not in out.split("state at the end")[1].split("messages")[0]  # not yet signed up
    assert "Why " in out
    assert "messages were refused" in out
    assert "ben: asked for about" in out
    assert "dan: refills paused" in out
    assert "Next refills" in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("demo", ["--days N", "1 to 3650", "--seed N", "balance_refill_demo", "--json"]),
        ("show", ["user", "exit 1", "--id-type"]),
        ("grant", ["--create", "--allow-negative", "--reason TEXT", "--actor NAME"]),
        ("set-balance", ["--create", "--reason TEXT"]),
        ("set-tier", ["--pin", "--unpin", "next refill"]),
        ("pause", ["refill-now still works", "exit 1"]),
        ("resume", ["exit 1"]),
        ("refill-now", ["--create", "exit 0", "max_balance", "settling"]),
        ("history", ["--limit N", "1 to 1000", "exit 1"]),
        ("sweep", ["--dry-run", "--batch-size N", "--active-within WINDOW", "--limit N"]),
        ("policy check", ["file", "exit 2"]),
    ],
)
def test_every_subcommand_help(run: Run, command: str, expected: list[str]) -> None:
    """Each `--help` names the command and what it takes; options a command does not use
    (the demo's --policy) are accepted but not listed."""
    code, out, _ = run(*command.split(), "--help", policy=False)
    assert code == 0
    assert out.startswith(f"usage: balance-refill {command} ")
    for text in expected:
        assert text in out, text
    if command in ("demo", "policy check"):
        assert "--policy" not in out
        assert "--id-type" not in out


def test_serve_refuses_to_start_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` without BALANCE_REFILL_ADMIN_TOKEN refuses to start (exit 2), naming the fix;
    --insecure-local only binds to 127.0.0.1."""
    monkeypatch.delenv("BALANCE_REFILL_ADMIN_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2  # noqa: S104 - the refusal is the point
    assert "BALANCE_REFILL_ADMIN_TOKEN" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--insecure-local"]) == 2  # noqa: S104
    assert "127.0.0.1" in capsys.readouterr().err
