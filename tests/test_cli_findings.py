"""The CLI findings of issue 15: one JSON object per stream, reads without a policy,
`-v`/`-vv`, a malformed URI at once, a negative grant as a correction, whitespace ids,
and deployment examples that install the `cli` extra."""

from __future__ import annotations

import configparser
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from balance_refill.cli import Connection

from .test_cli import TWO_TIERS, cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(TWO_TIERS)
    return path


@pytest.fixture
def conn(cli_connection: Connection | None) -> Connection | None:
    return cli_connection


def seed(conn: Connection | None, policy_file: Path, user: str = "alice") -> None:
    code, _, err = cli(
        conn, "grant", user, "1", "--reason", "seed", "--create", "--policy", str(policy_file)
    )
    assert code == 0, err


# -- one JSON object per stream -------------------------------------------------------


def test_json_show_without_a_server_writes_one_object_to_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--json show alice` with no server: stderr is one JSON object (the note and the
    error together), stdout is empty."""
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("BALANCE_REFILL_POLICY", raising=False)
    code, out, err = cli(None, "--json", "show", "alice")
    assert (code, out) == (1, "")
    status = json.loads(err)
    assert status["code"] == 1
    assert status["error"] == "user 'alice' has no balance document"
    assert any("in-memory database" in note for note in status["notes"])


@pytest.mark.parametrize(
    "argv",
    [
        ("show", "alice"),
        ("-v", "grant", "alice", "5", "--reason", "r"),
        ("-vv", "sweep", "--batch-size", "1"),
        ("history", "alice"),
    ],
)
def test_json_success_is_one_object_per_stream(
    conn: Connection | None, policy_file: Path, argv: tuple[str, ...]
) -> None:
    """On success stdout holds the result and stderr the status (code 0; log lines of
    -v and the sweep's progress inside it, not as lines of their own)."""
    seed(conn, policy_file)
    seed(conn, policy_file, "bob")
    code, out, err = cli(conn, *argv, "--json", "--policy", str(policy_file))
    assert code == 0, err
    json.loads(out)
    status = json.loads(err)
    assert status["code"] == 0
    if "-v" in argv or "-vv" in argv:
        operation = argv[1]
        assert {"level": "INFO", "operation": operation} | status["log"][0] == status["log"][0]


# -- reads need no policy ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "history"])
def test_reads_need_no_policy(
    conn: Connection | None,
    policy_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """`show` and `history` run without a policy; what the policy decides is left out
    (null) and a note says so; a write still needs one (exit 2)."""
    seed(conn, policy_file)
    monkeypatch.delenv("BALANCE_REFILL_POLICY", raising=False)
    code, out, err = cli(conn, command, "alice", "--json")
    assert code == 0, err
    data = json.loads(out)
    if command == "show":
        assert data["balance"] == 20_001
        assert (data["tier"], data["auto_refill"], data["next_refill_at"]) == (None, None, None)
        assert any("no policy given" in note for note in json.loads(err)["notes"])
    else:
        assert [row["context"] for row in data] == ["admin"]
    code, _, err = cli(conn, "grant", "alice", "5", "--reason", "r")
    assert code == 2
    assert "needs a policy" in err


# -- -v and -vv ---------------------------------------------------------------------------


def test_verbose_shows_operations_and_database_calls(
    conn: Connection | None, policy_file: Path
) -> None:
    """-v: the operation and each database call; -vv adds the decisions (the update
    written, what came back, the resulting state); no -v: none of it."""
    seed(conn, policy_file)
    policy = ("--policy", str(policy_file))
    _, _, quiet = cli(conn, "grant", "alice", "5", "--reason", "r", *policy)
    assert "db:" not in quiet
    code, _, err = cli(conn, "-v", "grant", "alice", "5", "--reason", "r", *policy)
    assert code == 0, err
    assert "operation: grant 'alice'" in err
    assert re.search(r"db: balances\.find_one_and_update\(.*\) \(\d+\.\d ms\)", err)
    assert "db: transactions.insert_one(" in err
    assert "decision:" not in err
    assert "'$set'" not in err
    code, _, err = cli(conn, "-vv", "grant", "alice", "5", "--reason", "r", *policy)
    assert code == 0, err
    assert "decision: 'alice' refilled=False granted=" in err
    assert "'$set': {'tokenCredits': 20016" in err
    assert "db: balances.find_one_and_update -> {" in err


def test_logging_is_restored_after_a_command(conn: Connection | None, policy_file: Path) -> None:
    """The CLI's handler lives only as long as the command: a host's logging is untouched."""
    logger = logging.getLogger("balance_refill")
    before = (list(logger.handlers), logger.level, logger.propagate)
    seed(conn, policy_file)
    cli(conn, "-vv", "show", "alice", "--policy", str(policy_file))
    assert (list(logger.handlers), logger.level, logger.propagate) == before


# -- a malformed URI ---------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["notauri", "localhost:27017", "user:pw@host/db"])
def test_malformed_uri_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch, policy_file: Path, uri: str
) -> None:
    """A MONGODB_URI without a scheme is refused as malformed before any connection
    (no DNS lookup, no server selection wait), without repeating its text."""

    def no_connection(*args: object) -> Any:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr("balance_refill.cli._app.connect", no_connection)
    monkeypatch.setenv("MONGODB_URI", uri)
    code, out, err = cli(None, "show", "alice", "--policy", str(policy_file))
    assert (code, out) == (2, "")
    assert err.startswith("error: MONGODB_URI is malformed: it has no scheme")
    assert "pw" not in err
    assert err.count("\n") == 1


# -- a negative grant ------------------------------------------------------------------------


def test_negative_grant_is_refused_as_a_correction(
    conn: Connection | None, policy_file: Path
) -> None:
    """`grant alice -50000` below 0 is described as a correction (no spend wording, no
    next refill time), exit 1, nothing changed; an allowed one is titled a correction."""
    seed(conn, policy_file)
    policy = ("--policy", str(policy_file))
    code, out, err = cli(conn, "grant", "alice", "-50000", "--reason", "fix", *policy)
    assert (code, out) == (1, "")
    assert err == (
        "refused: a correction of -50000 would take alice's balance from 20001 to -29999, "
        "below 0; nothing changed (pass --allow-negative to allow it)\n"
    )
    assert "next refill" not in err
    _, out, _ = cli(conn, "show", "alice", "--json", *policy)
    assert json.loads(out)["balance"] == 20_001
    code, out, err = cli(conn, "grant", "alice", "-1", "--reason", "fix", *policy)
    assert code == 0, err
    assert "correction applied" in out


# -- whitespace ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "id_type"),
    [(" u ", "auto"), ("u ", "str"), ("\tu", "auto"), (" 5", "int"), ("   ", "auto")],
)
def test_ids_with_surrounding_whitespace_are_refused(
    conn: Connection | None, policy_file: Path, user: str, id_type: str
) -> None:
    """`" u "` is not silently another user than `"u"`: exit 2, a clear message, and
    nothing written."""
    code, out, err = cli(
        conn,
        "grant",
        user,
        "5",
        "--reason",
        "r",
        "--create",
        "--id-type",
        id_type,
        "--policy",
        str(policy_file),
    )
    assert (code, out) == (2, "")
    assert "whitespace" in err
    assert err.count("\n") == 1
    code, _, _ = cli(conn, "show", user.strip() or "u", "--id-type", id_type)
    assert code == 1  # no such user was created


# -- deployment examples ----------------------------------------------------------------------


def test_kubernetes_image_installs_the_cli_extra() -> None:
    """The CronJob's image is built by a Dockerfile that installs the `cli` extra, which
    brings the `balance-refill` command the job runs."""
    job = (ROOT / "examples" / "kubernetes" / "cronjob.yaml").read_text()
    assert "examples/kubernetes/Dockerfile" in job
    dockerfile = (ROOT / "examples" / "kubernetes" / "Dockerfile").read_text()
    (install,) = re.findall(r"^RUN pip install .*$", dockerfile, flags=re.MULTILINE)
    assert "[cli]" in install


def test_systemd_unit_says_how_to_create_its_user_and_venv() -> None:
    """The unit's header creates the `User=` it names and the venv its `ExecStart` runs,
    with the `cli` extra."""
    path = ROOT / "examples" / "systemd" / "balance-refill-sweep.service"
    text = path.read_text()
    service = configparser.ConfigParser(strict=False)
    service.read(path)
    user = service["Service"]["User"]
    venv = service["Service"]["ExecStart"].split("/bin/balance-refill", 1)[0]
    assert re.search(rf"useradd --system .*\b{re.escape(user)}$", text, flags=re.MULTILINE)
    assert f"python3 -m venv {venv}" in text
    assert re.search(rf"{re.escape(venv)}/bin/pip install '.*\[cli\]'", text)


# -- a librechat.yaml never turns the library's refills off unseen (issue 15, item 2) -----

LIBRECHAT_OFF = """\
version: 1.2.1
balance:
  enabled: true
  startBalance: 20000
  autoRefillEnabled: false
  refillIntervalValue: 30
  refillIntervalUnit: days
  refillAmount: 10000
"""


def test_sweep_with_a_librechat_yaml_that_refills_nobody_fails_in_one_line(
    conn: Connection | None, tmp_path: Path
) -> None:
    """`sweep --policy librechat.yaml` with LibreChat's refill off: exit 2, one line that
    names the trap and the fix; with `--librechat-auto-refill on` the sweep runs."""
    path = tmp_path / "librechat.yaml"
    path.write_text(LIBRECHAT_OFF)
    code, _, err = cli(conn, "sweep", "--policy", str(path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "would refill nobody" in err
    assert "--librechat-auto-refill" in err
    code, _, err = cli(conn, "sweep", "--policy", str(path), "--librechat-auto-refill", "on")
    assert code == 0, err


def test_policy_check_warns_about_a_librechat_yaml_that_refills_nobody(tmp_path: Path) -> None:
    """`policy check` shows the file with auto refill off and the trap as a warning, in
    text and under --json."""
    path = tmp_path / "librechat.yaml"
    path.write_text(LIBRECHAT_OFF)
    code, out, err = cli(None, "policy", "check", str(path))
    assert code == 0, err
    assert "warning:" in err
    assert "would refill nobody" in err
    code, out, err = cli(None, "--json", "policy", "check", str(path))
    payload = json.loads(out)
    assert payload["tiers"]["default"]["auto_refill"] is False
    assert "would refill nobody" in payload["warnings"][0]


def test_policy_check_says_what_a_reset_threshold_means(tmp_path: Path) -> None:
    """A `reset` without a threshold is shown as resetting every due user."""
    path = tmp_path / "reset.yaml"
    path.write_text("amount: 1000\ncalendar: month\nmode: reset\n")
    code, out, err = cli(None, "policy", "check", str(path))
    assert code == 0, err
    assert "every due user is reset" in re.sub(r"\s+", " ", out)
