"""`--request-id` on the CLI's admin writes (issue 21): a given or generated key that is
printed, a retry with it after an error applies at most once, and a key reused with other
arguments is its own one-line error with exit code 3. On both backends."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from balance_refill.cli import Connection, _app, main
from balance_refill.testing import Call, CallLog, RecordingCollection

from .test_cli import TWO_TIERS

WRITES = [
    ("grant", "u", "100", "--reason", "r"),
    ("set-balance", "u", "100", "--reason", "r"),
    ("set-tier", "u", "heavy"),
    ("pause", "u"),
    ("resume", "u"),
    ("refill-now", "u", "--reason", "r"),
]


@pytest.fixture
def conn(cli_connection: Connection | None) -> Connection | None:
    return cli_connection


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(TWO_TIERS)
    return path


class Cli:
    def __init__(self, conn: Connection | None, policy: Path) -> None:
        self.conn = conn
        self.policy = policy

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            [*argv, "--policy", str(self.policy)], connection=self.conn, stdout=out, stderr=err
        )
        return code, out.getvalue(), err.getvalue()

    def balance(self, user: str = "u") -> Any:
        code, out, err = self("show", user, "--json")
        assert code == 0, err
        return json.loads(out)["balance"]


@pytest.fixture
def cli(conn: Connection | None, policy_file: Path) -> Cli:
    run = Cli(conn, policy_file)
    code, _, err = run("grant", "u", "1", "--reason", "seed", "--create", "--request-id", "seed")
    assert code == 0, err
    return run


@pytest.mark.parametrize("argv", WRITES)
def test_a_generated_key_is_shown(cli: Cli, argv: tuple[str, ...]) -> None:
    """Without --request-id each admin write makes a key and shows it: a row of its
    table; under --json, a field of the result and of the status."""
    code, out, err = cli(*argv)
    assert code == 0, err
    if argv[0] != "refill-now":  # a refill that adds nothing is one line, not a table
        assert re.search(r"request_id +│ cli-[0-9a-f]{32} ", out)
    code, out, err = cli(*argv, "--json")
    assert code == 0, err
    status = json.loads(err)
    assert re.fullmatch(r"cli-[0-9a-f]{32}", status["request_id"])
    assert json.loads(out)["request_id"] == status["request_id"]


def test_a_refusal_stays_one_line(cli: Cli) -> None:
    """A refusal changed nothing, so its line names no key to retry with; the --json
    status still carries the key."""
    code, _, err = cli("grant", "nobody", "5", "--reason", "r")
    assert code == 1
    assert err.count("\n") == 1
    assert "request-id" not in err
    code, _, err = cli("grant", "nobody", "5", "--reason", "r", "--json")
    assert code == 1
    assert json.loads(err)["request_id"].startswith("cli-")


@pytest.mark.parametrize("argv", WRITES)
def test_the_same_key_applies_once(cli: Cli, argv: tuple[str, ...]) -> None:
    """Sending one write twice with one --request-id changes the user once: the second
    call answers with the state of the first, and writes no second ledger row."""
    code, out, err = cli(*argv, "--request-id", "op-1", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["request_id"] == "op-1"
    assert "notes" not in json.loads(err)  # a given key is not announced
    _, rows, _ = cli("history", "u", "--json")
    code, out, err = cli(*argv, "--request-id", "op-1", "--json")
    assert code == 0, err
    assert json.loads(out)["balance"] == first["balance"]
    _, again, _ = cli("history", "u", "--json")
    assert again == rows


@pytest.mark.parametrize(
    ("argv", "other"),
    [
        (WRITES[0], ("grant", "u", "200", "--reason", "r")),
        (WRITES[1], ("set-balance", "u", "7", "--reason", "r")),
        (WRITES[2], ("set-tier", "u", "regular")),
        (WRITES[3], ("resume", "u")),
    ],
)
def test_a_key_reused_with_other_arguments_is_exit_3(
    cli: Cli, argv: tuple[str, ...], other: tuple[str, ...]
) -> None:
    """The same key with other arguments: one line naming the key, exit 3 (its own
    code, in --help's exit codes), nothing changed; one JSON status under --json."""
    assert cli(*argv, "--request-id", "k")[0] == 0
    before = cli.balance()
    code, out, err = cli(*other, "--request-id", "k")
    assert (code, out) == (3, "")
    assert err.startswith("error: request id 'k' was already used for a ")
    assert err.count("\n") == 1
    code, out, err = cli(*other, "--request-id", "k", "--json")
    assert (code, out) == (3, "")
    status = json.loads(err)
    assert (status["code"], status["request_id"]) == (3, "k")
    assert cli.balance() == before
    code, out, _ = cli("--help")
    assert "3 the --request-id was already used with other arguments" in out


@pytest.mark.parametrize("key", ["", " k", "k ", "x" * 257])
def test_a_bad_key_is_refused(cli: Cli, key: str) -> None:
    """An empty key, one with surrounding whitespace or one over 256 characters: exit 2,
    naming the flag, nothing changed."""
    before = cli.balance()
    code, _, err = cli("grant", "u", "5", "--reason", "r", "--request-id", key)
    assert code == 2
    assert "--request-id" in err
    assert cli.balance() == before


def test_retry_after_a_failure_applies_once(cli: Cli) -> None:
    """A grant whose ledger write fails after the balance was changed exits 2, yet hands
    out its key; retrying with that key completes it without a second grant."""
    log = CallLog()

    def fail_ledger_once(call: Call, index: int) -> BaseException | None:
        if call.collection == "transactions" and call.method.startswith("insert"):
            log.fail_after = None
            return OperationFailure("injected: the reply was lost", code=8000)
        return None

    log.fail_after = fail_ledger_once
    original = _app._collections

    def faulty(*args: Any) -> dict[str, Any]:
        return {role: RecordingCollection(c, log) for role, c in original(*args).items()}

    before = cli.balance()
    with pytest.MonkeyPatch.context() as patch:  # undone alone: the backend's env stays
        patch.setattr(_app, "_collections", faulty)
        code, out, err = cli("grant", "u", "100", "--reason", "r", "--json")
    assert (code, out) == (2, "")
    status = json.loads(err)
    key = status["request_id"]
    assert status["error"].startswith("insert into transactions failed: OperationFailure")
    assert "injected" in status["error"]
    assert status["error"].endswith(
        f"(the grant may or may not have been applied: retry it with --request-id {key} "
        "to apply it at most once)"
    )
    code, out, err = cli("grant", "u", "100", "--reason", "r", "--request-id", key, "--json")
    assert code == 0, err
    assert json.loads(out)["balance"] == before + 100
    assert cli.balance() == before + 100
    _, rows, _ = cli("history", "u", "--json")
    assert [r["rawAmount"] for r in json.loads(rows) if r["context"] == "admin"] == [100, 1]
