"""The README's code, the examples and the demo run here, so they cannot rot."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

from balance_refill.cli import main

from .wire import backend

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_python_examples() -> None:
    assert readme_blocks()


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_python_blocks_run(index: int, own_clients: None) -> None:
    """Each ```python block in the README runs as written (on a server backend, with its
    client on that server)."""
    code = readme_blocks()[index]
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README


def test_readme_quickstart_commands() -> None:
    """The README's two quickstart commands are the ones CI and the demo use."""
    text = (ROOT / "README.md").read_text()
    demo = "python3 -m venv .venv && .venv/bin/pip install '.[cli]' && .venv/bin/python -m balance_refill demo"
    tests = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
    assert demo in text
    assert tests in text
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_chat_backend_example_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, own_clients: None
) -> None:
    monkeypatch.setattr(sys, "argv", ["chat_backend.py"])
    runpy.run_path(str(ROOT / "examples" / "chat_backend.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "retry of m0 charged again? False" in out
    assert "Not enough credits" in out


def test_demo_runs_on_the_mock(capsys: pytest.CaptureFixture[str], own_clients: None) -> None:
    """`python -m balance_refill demo` needs no server and prints a timeline (on a server
    backend, it runs there)."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert ("embedded mock" if backend.is_mock() else "database: mongodb") in out
    assert "runs dry" in out
    assert "refilled at login" in out
    assert "refills paused" in out
    summary = re.search(r"(\d+) refills, (\d+) ledger rows", out)
    assert summary
    assert summary[1] != "0"
    assert int(summary[2]) == int(summary[1]) + 1  # every refill's row, and the pause's row


def test_deployment_examples() -> None:
    """The systemd units and the CronJob say what the README says they do."""
    import configparser

    import yaml

    from balance_refill.policy import TieredPolicy
    from balance_refill.policy_file import load_policy_file

    timer = configparser.ConfigParser()
    timer.read(ROOT / "examples" / "systemd" / "balance-refill-sweep.timer")
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["OnCalendar"].startswith("*-*-01 ")  # monthly
    service = configparser.ConfigParser(strict=False)
    service.read(ROOT / "examples" / "systemd" / "balance-refill-sweep.service")
    assert service["Service"]["Type"] == "oneshot"
    assert "balance-refill sweep" in service["Service"]["ExecStart"]
    job = yaml.safe_load((ROOT / "examples" / "kubernetes" / "cronjob.yaml").read_text())
    assert job["kind"] == "CronJob"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["balance-refill", "sweep"]
    assert isinstance(load_policy_file(ROOT / "examples" / "policy.yaml"), TieredPolicy)


def test_readme_policy_example_is_the_example_file() -> None:
    """The README's two-tier policy is examples/policy.yaml, and it is valid."""
    from balance_refill.policy_file import load_policy_file, load_policy_text

    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(default_tier:.*?)```", text, flags=re.DOTALL)
    assert load_policy_text(block) == load_policy_file(ROOT / "examples" / "policy.yaml")


def test_public_api_is_sorted_and_importable() -> None:
    """`__all__` is sorted, every name in it exists, and the version comes from metadata."""
    from importlib.metadata import version

    import balance_refill

    assert balance_refill.__all__ == sorted(balance_refill.__all__)
    assert all(hasattr(balance_refill, name) for name in balance_refill.__all__)
    assert balance_refill.__version__ == version("balance_refill")
