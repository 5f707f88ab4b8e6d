"""`balance-refill simulate`, in-process on the test backend: every source, the baseline
(`--against active|FILE`), the side-by-side table, `--json`, `--out` and bad input."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import RefillPolicy
from balance_refill.cli import Connection
from balance_refill.simulate import simulate
from balance_refill.usage import Synthetic

from .test_cli import cli

CANDIDATE = "amount: 800\ninterval: 7d\nstart_balance: 1000\n"
BASELINE = "amount: 1000\ninterval: 30d\nstart_balance: 1000\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "candidate.yaml").write_text(CANDIDATE)
    (tmp_path / "baseline.yaml").write_text(BASELINE)
    return {"candidate": tmp_path / "candidate.yaml", "baseline": tmp_path / "baseline.yaml"}


SYNTHETIC = ("--synthetic", "--users", "40", "--days", "20", "--start", "2026-03-01", "--seed", "3")


def test_synthetic_json_is_the_library_report(
    cli_connection: Connection | None, files: dict[str, Path]
) -> None:
    """`--synthetic --json` prints both runs as `simulate` reports them for the same
    seeded population, with the summary side by side."""
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), *SYNTHETIC, "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    population = Synthetic(users=40, days=20, start=datetime(2026, 3, 1, tzinfo=UTC), seed=3)
    for key, text in (("candidate", CANDIDATE), ("baseline", BASELINE)):
        amount = int(text.split()[1])
        interval = text.split()[3]
        policy = RefillPolicy(amount=amount, interval=interval, start_balance=1_000)
        expected = simulate(policy, population, start=population.start, end=population.end)
        assert data[key]["report"]["totals"] == expected.as_json()["totals"]
        assert len(data[key]["report"]["users"]) == 40
    figures = {row["figure"]: row for row in data["summary"]}
    assert figures["refills"]["candidate"] == data["candidate"]["report"]["totals"]["refills"]
    assert figures["refills"]["baseline"] == data["baseline"]["report"]["totals"]["refills"]
    assert (
        data["candidate"]["report"]["totals"]["refills"]
        > data["baseline"]["report"]["totals"]["refills"]
    )


def test_the_table_compares_side_by_side(
    cli_connection: Connection | None, files: dict[str, Path]
) -> None:
    """Without --json a table lists each figure for baseline and candidate, and the change."""
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), *SYNTHETIC,
    )  # fmt: skip
    assert code == 0, err
    for text in ("figure", "baseline", "candidate", "change", "credits granted", "users refused"):
        assert text in out
    assert "synthetic: 40 users over 20 days" in out


def test_against_active_reads_the_active_policy(
    cli_connection: Connection | None, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--against active` (the default) is the policy the CLI serves with
    (BALANCE_REFILL_POLICY); without one it is a clear error, exit 2."""
    monkeypatch.delenv("BALANCE_REFILL_POLICY", raising=False)
    code, _, err = cli(cli_connection, "simulate", "--policy", str(files["candidate"]), *SYNTHETIC)
    assert code == 2
    assert "no active policy" in err
    monkeypatch.setenv("BALANCE_REFILL_POLICY", str(files["baseline"]))
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]), *SYNTHETIC, "--json"
    )
    assert code == 0, err
    explicit = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), *SYNTHETIC, "--json",
    )  # fmt: skip
    assert (
        json.loads(out)["baseline"]["report"]["totals"]
        == json.loads(explicit[1])["baseline"]["report"]["totals"]
    )
    assert json.loads(out)["baseline"]["policy"].startswith("active (")


def test_csv_source_and_its_errors(
    cli_connection: Connection | None, files: dict[str, Path], tmp_path: Path
) -> None:
    """`--csv` reads CSV (or JSON lines) events; a bad line is exit 2 naming the line."""
    events = tmp_path / "events.csv"
    events.write_text(
        "user,at,credits\n"
        "ann,2026-03-01T00:00:00Z,600\n"
        "ann,2026-03-01T01:00:00Z,600\n"
        "ann,2026-03-09T00:00:00Z,600\n"
        "bob,2026-03-09T00:00:00Z,\n"
    )
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), "--csv", str(events), "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert (
        data["baseline"]["report"]["totals"]["refused"] == 2
    )  # 1,000 covers one 600 spend a month
    assert data["candidate"]["report"]["totals"]["refused"] == 1  # a weekly refill covers the third
    assert data["candidate"]["report"]["users"]["ann"]["refills"] == 1
    events.write_text("user,at,credits\nann,2026-03-01T00:00:00Z,NaN\n")
    code, _, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), "--csv", str(events),
    )  # fmt: skip
    assert code == 2
    assert "line 2" in err
    code, _, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), "--csv", str(tmp_path / "missing.csv"),
    )  # fmt: skip
    assert code == 2
    assert "cannot read" in err


def test_from_db_replays_librechat_transactions(
    cli_connection: Connection | None, db: Any, files: dict[str, Path]
) -> None:
    """`--from-db` replays the spend rows of the last --days days; refill and grant rows
    are not demand, and the notes say what was read."""
    now = datetime.now(UTC)
    user = ObjectId()
    rows: list[dict[str, Any]] = [
        {"user": user, "tokenType": "prompt", "tokenValue": -400.5, "rawAmount": -160.2,
         "context": "message", "createdAt": now - timedelta(days=d, hours=1)}
        for d in (12, 5, 4, 3)
    ]  # fmt: skip
    rows.append(
        {
            "user": user,
            "tokenType": "completion",
            "tokenValue": float("nan"),
            "createdAt": now - timedelta(days=2),
        }
    )
    rows.append(
        {
            "user": user,
            "tokenType": "credits",
            "context": "autoRefill",
            "tokenValue": 1000,
            "createdAt": now - timedelta(days=2),
        }
    )
    rows.append(
        {
            "user": user,
            "tokenType": "prompt",
            "tokenValue": -5,
            "createdAt": now - timedelta(days=40),
        }
    )

    async def seed() -> None:  # in the CLI's kind of loop: on a server, a client of its own
        await db["transactions"].insert_many(rows)

    asyncio.run(seed())
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), "--from-db", "--days", "30", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["candidate"]["report"]["totals"]["demands"] == 4
    assert (
        data["baseline"]["report"]["totals"]["refused"] == 2
    )  # 1,000 then 599.5 then refused twice
    assert "4 of 5 rows used" in data["notes"][0]
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), "--from-db", "--db-source", "history", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "approximate" in json.loads(out)["notes"][0]


def test_out_writes_the_html_report(
    cli_connection: Connection | None, files: dict[str, Path], tmp_path: Path
) -> None:
    """`--out` writes the self-contained report (charts inline, no script)."""
    target = tmp_path / "report.html"
    code, _, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), *SYNTHETIC, "--out", str(target),
    )  # fmt: skip
    assert code == 0, err
    page = target.read_text()
    assert page.count("<svg") == 4
    assert "<script" not in page
    assert f"report written to {target}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("simulate", "--synthetic"), "needs the candidate"),
        (("simulate", "--policy", "{candidate}"), "one of the arguments --from-db --csv --synthetic is required"),
        (("simulate", "--policy", "{candidate}", "--csv", "x", "--synthetic"), "not allowed with"),
        (("simulate", "--policy", "{candidate}", "--synthetic", "--heavy-share", "2"), "must be from 0 to 1"),
        (("simulate", "--policy", "{candidate}", "--synthetic", "--start", "May"), "not a date"),
        (("simulate", "--policy", "{candidate}", "--against", "/nonexistent.yaml", "--synthetic"), "nonexistent"),
    ],
)  # fmt: skip
def test_bad_invocations_are_exit_2(
    cli_connection: Connection | None, files: dict[str, Path], argv: tuple[str, ...], message: str
) -> None:
    """Missing candidate, no or two sources, out-of-range settings, an unreadable baseline."""
    args = [a.format(candidate=files["candidate"]) for a in argv]
    code, _, err = cli(cli_connection, *args)
    assert code == 2
    assert message in err


def test_against_active_prefers_the_stored_active_version(
    cli_connection: Connection | None, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a policy pushed and activated in the store, `--against active` replays the
    stored version (even when BALANCE_REFILL_POLICY names another file)."""
    monkeypatch.setenv("BALANCE_REFILL_POLICY", str(files["candidate"]))
    code, _, err = cli(cli_connection, "policy", "push", str(files["baseline"]), "--reason", "r")
    assert code == 0, err
    code, _, err = cli(cli_connection, "policy", "activate", "1", "--reason", "r")
    assert code == 0, err
    code, out, err = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]), *SYNTHETIC, "--json"
    )
    assert code == 0, err
    explicit = cli(
        cli_connection, "simulate", "--policy", str(files["candidate"]),
        "--against", str(files["baseline"]), *SYNTHETIC, "--json",
    )  # fmt: skip
    data = json.loads(out)
    assert data["baseline"]["policy"] == "active (stored version 1)"
    assert (
        data["baseline"]["report"]["totals"]
        == json.loads(explicit[1])["baseline"]["report"]["totals"]
    )
