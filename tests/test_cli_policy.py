"""`balance-refill policy push|list|show|diff|activate`, and commands that run under the
stored active policy when no --policy is given (issue 17, section 3). On both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from balance_refill import RefillPolicy, load_policy_file
from balance_refill.cli import Connection

from .test_cli import TWO_TIERS, cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def conn(cli_connection: Connection | None, monkeypatch: pytest.MonkeyPatch) -> Connection | None:
    monkeypatch.delenv("BALANCE_REFILL_POLICY", raising=False)
    monkeypatch.delenv("BALANCE_REFILL_POLICIES_COLLECTION", raising=False)
    return cli_connection


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "tiers": tmp_path / "tiers.yaml",
        "cheap": tmp_path / "cheap.yaml",
        "bad": tmp_path / "bad.yaml",
    }
    paths["tiers"].write_text(TWO_TIERS)
    paths["cheap"].write_text(TWO_TIERS.replace("start_balance: 20000", "start_balance: 777"))
    paths["bad"].write_text("amount: -1\ninterval: 30d\n")
    return paths


def ok(conn: Connection | None, *argv: str) -> Any:
    code, out, err = cli(conn, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_push_activate_list_show_diff(conn: Connection | None, files: dict[str, Path]) -> None:
    """The whole cycle under --json: numbered pushes, activation with its record, the
    list with the active one marked, a version's policy exactly as the file, a diff."""
    pushed = ok(conn, "policy", "push", str(files["tiers"]), "--reason", "launch", "--actor", "ana")
    assert pushed == {"version": 1, "active": False, "file": str(files["tiers"])}
    assert ok(conn, "policy", "push", str(files["cheap"]), "--reason", "cheaper")["version"] == 2
    assert ok(conn, "policy", "activate", "2", "--reason", "go", "--actor", "ben") == {
        "version": 2,
        "active": True,
    }
    listed = ok(conn, "policy", "list")
    assert [(v["version"], v["active"], v["actor"], v["reason"]) for v in listed["versions"]] == [
        (1, False, "ana", "launch"),
        (2, True, listed["versions"][1]["actor"], "cheaper"),
    ]
    assert [(a["version"], a["actor"], a["reason"]) for a in listed["activations"]] == [
        (2, "ben", "go")
    ]
    shown = ok(conn, "policy", "show", "1")
    policy = load_policy_file(files["tiers"])
    assert type(policy).model_validate(shown["policy"]) == policy
    assert (shown["version"], shown["kind"], shown["active"]) == (1, "tiered", False)
    diff = ok(conn, "policy", "diff", "1", "2")
    assert diff["changes"] == [{"path": "tiers.regular.start_balance", "a": 20000, "b": 777}]
    assert ok(conn, "policy", "diff", "2", "2")["changes"] == []


def test_policy_commands_in_text(conn: Connection | None, files: dict[str, Path]) -> None:
    """Without --json: one line per push, activation and change; tables for list and show."""
    code, out, _ = cli(conn, "policy", "push", str(files["tiers"]), "--reason", "launch")
    assert (code, out.strip()) == (
        0,
        f"pushed {files['tiers']} as version 1 (not active yet: balance-refill policy "
        "activate 1 --reason ...)",
    )
    cli(conn, "policy", "push", str(files["cheap"]), "--reason", "cheaper")
    code, out, _ = cli(conn, "policy", "activate", "1", "--reason", "go")
    assert (code, out) == (0, "version 1 is now the active policy\n")
    code, out, _ = cli(conn, "policy", "list")
    assert code == 0
    assert "policy versions" in out
    assert "cheaper" in out
    assert "activations" in out
    code, out, _ = cli(conn, "policy", "show", "1")
    assert code == 0
    assert "version 1 (active)" in out
    assert "regular -> heavy when spent >= 80%" in out
    code, out, _ = cli(conn, "policy", "diff", "1", "2")
    assert (code, out) == (0, "tiers.regular.start_balance: 20000 -> 777\n")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("policy", "show", "9"), 1, "policy version 9 does not exist"),
        (("policy", "diff", "1", "9"), 1, "policy version 9 does not exist"),
        (("policy", "activate", "9", "--reason", "r"), 1, "policy version 9 does not exist"),
        (("policy", "activate", "0", "--reason", "r"), 2, "must be a whole number"),
        (("policy", "activate", "1"), 2, "--reason"),
        (("policy", "push", "BAD", "--reason", "r"), 2, "amount"),
        (("policy", "push", "/nonexistent.yaml", "--reason", "r"), 2, "nonexistent"),
        (("policy", "push", "GOOD", "--reason", " "), 2, "reason"),
    ],
)
def test_policy_errors(
    conn: Connection | None,
    files: dict[str, Path],
    argv: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    """Unknown versions are exit 1, bad input exit 2, one JSON status object each; a
    refused push or activation stores nothing."""
    ok(conn, "policy", "push", str(files["tiers"]), "--reason", "r")
    real = [
        {"BAD": str(files["bad"]), "GOOD": str(files["cheap"])}.get(word, word) for word in argv
    ]
    got, out, err = cli(conn, *real, "--json")
    assert (got, out) == (code, "")
    status = json.loads(err)
    assert status["code"] == code
    assert message in status["error"]
    listed = ok(conn, "policy", "list")
    assert [v["version"] for v in listed["versions"]] == [1]
    assert listed["activations"] == []


def test_commands_use_the_stored_active_policy(
    conn: Connection | None, files: dict[str, Path]
) -> None:
    """With no --policy: before any activation a write is refused naming `policy
    activate`; after it, grant and sweep run under the active version and say so, and
    activating another version changes what they do."""
    code, _, err = cli(conn, "grant", "u1", "5", "--reason", "r", "--create")
    assert code == 2
    assert "policy activate N" in err
    ok(conn, "policy", "push", str(files["tiers"]), "--reason", "r")
    ok(conn, "policy", "push", str(files["cheap"]), "--reason", "r")
    ok(conn, "policy", "activate", "1", "--reason", "r")
    code, out, err = cli(conn, "grant", "u1", "5", "--reason", "r", "--create", "--json")
    assert code == 0, err
    assert json.loads(out)["balance"] == 20_005
    status = json.loads(err)
    assert "using the stored policy, version 1 (no --policy given)" in status["notes"]
    assert status["policy_version"] == 1
    ok(conn, "policy", "activate", "2", "--reason", "r")
    assert ok(conn, "grant", "u2", "5", "--reason", "r", "--create")["balance"] == 782
    assert ok(conn, "show", "u2")["tier"] == "regular"  # a read shows the policy's fields again
    assert ok(conn, "sweep", "--dry-run")["dry_run"] is True


def test_a_file_policy_wins_over_the_stored_one(
    conn: Connection | None, files: dict[str, Path]
) -> None:
    """--policy FILE is used even when a stored version is active, and no note claims
    otherwise."""
    ok(conn, "policy", "push", str(files["cheap"]), "--reason", "r")
    ok(conn, "policy", "activate", "1", "--reason", "r")
    code, out, err = cli(
        conn,
        "grant",
        "u",
        "5",
        "--reason",
        "r",
        "--create",
        "--policy",
        str(files["tiers"]),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["balance"] == 20_005
    assert "stored policy" not in err


def test_the_policies_collection_is_configurable(
    conn: Connection | None, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BALANCE_REFILL_POLICIES_COLLECTION names the collection the versions live in."""
    monkeypatch.setenv("BALANCE_REFILL_POLICIES_COLLECTION", "my_policies")
    ok(conn, "policy", "push", str(files["tiers"]), "--reason", "r")
    assert len(ok(conn, "policy", "list")["versions"]) == 1
    monkeypatch.delenv("BALANCE_REFILL_POLICIES_COLLECTION")
    assert ok(conn, "policy", "list")["versions"] == []


def test_policy_help_lists_the_actions(conn: Connection | None) -> None:
    """`policy --help` names every action; each action's help names what it takes."""
    code, out, _ = cli(conn, "policy", "--help")
    assert code == 0
    for action in ("check", "push", "list", "show", "diff", "activate"):
        assert action in out
    code, out, _ = cli(conn, "policy", "activate", "--help")
    assert code == 0
    assert out.startswith("usage: balance-refill policy activate ")
    assert "--reason TEXT" in out
    assert "roll" in out.lower()


def test_stored_policy_round_trips_through_the_cli(conn: Connection | None, tmp_path: Path) -> None:
    """A single-tier file pushed and shown comes back as the same RefillPolicy."""
    path = tmp_path / "single.yaml"
    path.write_text("amount: 1000\ncalendar: month\ntimezone: Asia/Tokyo\nmode: reset\n")
    ok(conn, "policy", "push", str(path), "--reason", "r")
    shown = ok(conn, "policy", "show", "1")
    assert shown["kind"] == "refill"
    assert RefillPolicy.model_validate(shown["policy"]) == load_policy_file(path)


def test_verbose_logs_the_policy_stores_calls(
    conn: Connection | None, files: dict[str, Path]
) -> None:
    """-v shows the policy store's database calls too, for the policy actions and for a
    command that looks up the active version."""
    code, _, err = cli(conn, "-v", "policy", "push", str(files["tiers"]), "--reason", "r")
    assert code == 0, err
    assert "db: balance_refill_policies.insert_one(" in err
    code, _, err = cli(conn, "-v", "show", "nobody")
    assert code == 1
    assert "db: balance_refill_policies.find_one({'kind': 'active'})" in err
