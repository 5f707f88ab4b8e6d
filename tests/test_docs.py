"""The README's and the documentation site's code, the examples and the demo run here, so
they cannot rot.

Conventions in the Markdown (README.md and docs/**/*.md), each an HTML comment on the line
before a fenced block, hidden on GitHub and on the site:

* a ```python block runs as written (its top-level `test_*` functions are then called);
* `<!-- fragment: REASON -->`: the block is only compiled, for the reason given;
* `<!-- check: NAME -->`: after running, the block's namespace goes to `CHECKS[NAME]`,
  which drives it (the web apps are served and called);
* `<!-- pending: WHAT -->`: the block (Python or commands) needs work that is not on this
  branch yet; it must fail here (strict xfail), so that it is noticed once it lands.

Every `balance-refill` (or `python -m balance_refill`) command in a ```bash block, and the
commands in the systemd unit and the CronJob, is parsed with the CLI's own parser and run
in-process on the test backend (the `serve` command, which would not return, is parsed
only). The CLI reference table lists every subcommand, and every flag it shows exists.
"""

from __future__ import annotations

import asyncio
import configparser
import inspect
import io
import linecache
import re
import runpy
import shlex
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from balance_refill.cli import main
from balance_refill.cli._parser import build_parser, parse_args

from .wire import backend

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
MARKER = re.compile(r"<!--\s*(fragment|check|pending):\s*(.*?)\s*-->\s*\n\s*\n?$", re.DOTALL)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
PYTHON = {"python", "py", "python3", "pycon"}
SHELL = {"bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int
    lang: str
    code: str
    marker: str | None = None  # fragment, check or pending
    note: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    """The fenced blocks of a page, each with the marker on the line before it."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        marker = MARKER.search(before[-400:])
        line = before.count("\n") + 1
        yield Block(
            str(path.relative_to(ROOT)),
            line,
            match[1].lower(),
            match[2],
            marker[1] if marker else None,
            marker[2] if marker else "",
        )


ALL = [b for page in PAGES for b in blocks(page)]
PY = [b for b in ALL if b.lang in PYTHON]


def param(block: Block, *values: object) -> Any:
    marks = []
    if block.marker == "pending":
        marks.append(pytest.mark.xfail(strict=True, reason=f"pending: {block.note}"))
    return pytest.param(block, *values, id=block.where, marks=marks)


# -- Python ----------------------------------------------------------------------------


def test_pages_have_python_examples() -> None:
    """The README and the site hold runnable examples (the collection below is not empty)."""
    assert [b for b in PY if b.page == "README.md" and b.marker is None]
    assert len({b.page for b in PY}) >= 5


def test_fragments_say_why() -> None:
    """A block that is not run says why, and still compiles."""
    for block in PY:
        if block.marker == "fragment":
            assert len(block.note) >= 10, f"{block.where}: a fragment needs a reason"
            compile(block.code, block.where, "exec")


@pytest.mark.parametrize("block", [param(b) for b in PY if b.marker != "fragment"])
def test_python_blocks_run(
    block: Block, own_clients: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Python block of the README and the site runs as written (on a server backend,
    with its clients on that server); a `check` block is then driven by its checker."""
    if block.marker == "check":
        host_clients(monkeypatch)
    namespace: dict[str, Any] = {"__name__": "docs"}
    name = f"{ROOT / block.page} (block at line {block.line})"
    linecache.cache[name] = (len(block.code), None, block.code.splitlines(True), name)
    exec(compile(block.code, name, "exec"), namespace)  # noqa: S102 - our own pages
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            result = value()
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))
    if block.marker == "check":
        assert block.note in CHECKS, f"{block.where}: no checker named {block.note!r}"
        asyncio.run(_awaited(CHECKS[block.note](namespace)))


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


# -- the web hosts, served and called ---------------------------------------------------


def host_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host code opens `pymongo.AsyncMongoClient(os.environ["MONGODB_URI"])`: on the mock
    backend that client is the in-memory mock; on a server, `own_clients` routed it."""
    if not backend.is_mock():
        return
    from mongomock_motor import AsyncMongoMockClient

    class MockClient:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._client: Any = AsyncMongoMockClient(tz_aware=True)

        def __getitem__(self, name: str) -> Any:
            return self._client[name]

        async def close(self) -> None:
            self._client.close()

    monkeypatch.setenv("MONGODB_URI", "mongodb://docs.invalid/LibreChat")
    monkeypatch.setattr("pymongo.AsyncMongoClient", MockClient)


async def check_fastapi(ns: dict[str, Any]) -> None:
    import httpx

    app = ns["app"]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
    ):
        await _exercise(
            lambda path, body, headers: http.post(path, json=body, headers=headers),
            lambda response: (response.status_code, response.json()),
        )


async def check_aiohttp(ns: dict[str, Any]) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(ns["app"])) as http:

        async def post(path: str, body: Any, headers: dict[str, str]) -> Any:
            response = await http.post(path, json=body, headers=headers)
            return response.status, await response.json()

        await _exercise(post, lambda pair: pair)


async def _exercise(post: Callable[..., Awaitable[Any]], read: Callable[[Any], Any]) -> None:
    """Login, a message of 10 words (200 credits), its retry, then one too many: 402."""
    user = "64f0c0ffee00000000000d0c"
    status, body = read(await post(f"/users/{user}/login", None, {}))
    assert (status, body["balance"]) == (200, 1_000)
    prompt = {"prompt": " ".join(["word"] * 10)}
    for _ in range(2):  # the retry is charged once
        status, body = read(
            await post(f"/users/{user}/messages", prompt, {"Idempotency-Key": "k1"})
        )
        assert (status, body["balance"]) == (200, 800)
    big = {"prompt": " ".join(["word"] * 45)}  # 900 credits: refused, with the next refill
    status, body = read(await post(f"/users/{user}/messages", big, {"Idempotency-Key": "k2"}))
    assert status == 402
    assert (body["balance"], body["needed"]) == (800, 900)
    assert body["next_refill_at"]


CHECKS: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
    "fastapi": check_fastapi,
    "aiohttp": check_aiohttp,
}


# -- commands --------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    block: Block
    argv: tuple[str, ...]


def shell_lines(block: Block) -> Iterator[str]:
    """Logical lines: continuations joined, comments dropped (a crontab line loses its
    five schedule fields)."""
    for raw in block.code.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line.split(None, 5)[5] if block.lang == "crontab" else line


def command_args(words: list[str]) -> list[str] | None:
    """The arguments of a `balance-refill` or `python -m balance_refill` command, after
    any leading `VAR=value` and `sudo -u USER`; None for another command."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    if words[:1] == ["sudo"]:
        words = words[3:] if words[1:2] == ["-u"] else words[1:]
    if not words:
        return None
    name = words[0].rsplit("/", 1)[-1]
    if name == "balance-refill":
        return words[1:]
    if name.startswith("python") and words[1:3] == ["-m", "balance_refill"]:
        return words[3:]
    return None


def commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, split at `&&`, `|`, `;` and redirections,
    comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in lexer:
        if set(token) <= set("&|;<>()"):
            yield words
            words = []
        else:
            words.append(token)
    yield words


def invocations() -> Iterator[Invocation]:
    for block in ALL:
        if block.lang in SHELL or block.lang == "crontab":
            for line in shell_lines(block):
                for words in commands(line):
                    args = command_args(words)
                    if args is not None:
                        yield Invocation(block, tuple(args))
        elif block.lang == "ini" and "ExecStart=" in block.code:
            unit = configparser.ConfigParser(strict=False, interpolation=None)
            unit.read_string(block.code)
            args = command_args(shlex.split(unit["Service"]["ExecStart"]))
            assert args is not None, block.where
            yield Invocation(block, tuple(args))
        elif block.lang == "yaml" and "kind: CronJob" in block.code:
            import yaml

            job = yaml.safe_load(block.code)
            spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            args = command_args(list(spec["containers"][0]["args"]))
            assert args is not None, block.where
            yield Invocation(block, tuple(args))


INVOCATIONS = list(invocations())


def test_pages_show_commands() -> None:
    """The README and the site show commands, and the checks below see them."""
    commands = {i.argv[0] for i in INVOCATIONS if i.argv}
    assert {"demo", "sweep", "grant", "show", "policy", "serve"} <= commands


@pytest.mark.parametrize(("block", "call"), [param(i.block, i) for i in INVOCATIONS])
def test_commands_run(
    block: Block,
    call: Invocation,
    own_clients: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Each command shown parses with the CLI's own parser (its flags exist) and runs:
    exit 0, or 1 for a refusal on the test backend's empty database, never a usage error.
    The policy is the example policy (BALANCE_REFILL_POLICY, as an operator sets it), and
    so is a policy file named by a path that exists only on the operator's machine. It runs
    in a temporary folder (a report it writes stays out of the repository), with paths of
    the repository's files made absolute."""
    monkeypatch.chdir(tmp_path)
    example = str(ROOT / "examples" / "policy.yaml")
    monkeypatch.setenv("BALANCE_REFILL_POLICY", example)
    monkeypatch.delenv("BALANCE_REFILL_ADMIN_TOKEN", raising=False)
    argv = [
        example
        if a.endswith("policy.yaml") and not (ROOT / a).exists()
        else str(ROOT / a)
        if not a.startswith("-") and "/" in a and (ROOT / a).exists()
        else a
        for a in call.argv
    ]
    parse_args(argv)  # a usage error raises
    if argv[0] == "serve":
        return  # it would serve until stopped
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    assert code in (0, 1), f"{block.where}: {' '.join(argv)} -> {code}: {err.getvalue()}"
    assert "usage:" not in err.getvalue()


def test_cli_reference_matches_the_parser() -> None:
    """docs/operating.md's command table names every subcommand, and each flag it shows
    is one that subcommand accepts (its --help)."""
    text = (DOCS / "operating.md").read_text()
    section = text.split("## The CLI reference", 1)[1]
    rows = re.findall(r"^\| `([^`]+)`", section, flags=re.MULTILINE)
    parser = build_parser()
    shown: set[str] = set()
    for row in rows:
        words = row.split()
        name = " ".join(words[:2]) if words[0] == "policy" else words[0]
        assert name in parser.commands, f"no such command: {name}"
        shown.add(name)
        accepted = {o for a in parser.commands[name]._actions for o in a.option_strings}
        for flag in re.findall(r"--[a-z][a-z-]*", row):
            assert flag in accepted, f"`{name}` has no {flag} (its --help)"
    groups = {name.split()[0] for name in parser.commands if " " in name}  # `policy`
    assert shown == set(parser.commands) - groups, "commands missing from the reference"


# -- the quickstart, the examples and the deployment files -----------------------------


def test_readme_quickstart_commands() -> None:
    """The README's two quickstart commands are the ones CI and the demo use, within its
    first 30 lines; the README stays short."""
    text = (ROOT / "README.md").read_text()
    demo = "python3 -m venv .venv && .venv/bin/pip install '.[cli]' && .venv/bin/python -m balance_refill demo"
    tests = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
    head = "\n".join(text.splitlines()[:30])
    assert demo in head
    assert tests in head
    assert tests in (ROOT / ".ci" / "run").read_text()
    assert len(text.splitlines()) <= 210


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
    """The systemd units and the CronJob say what the docs say they do."""
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


def test_operating_guide_sets_everything_up() -> None:
    """The systemd walk-through creates the user and the venv with the `cli` extra, and
    installs the repository's units; the CronJob's image installs the `cli` extra; the
    units shown are the example files' (the same ExecStart and timer)."""
    text = (DOCS / "operating.md").read_text()
    systemd = text.split("### A systemd timer", 1)[1].split("### ", 1)[0]
    for step in (
        "useradd --system",
        "python3 -m venv /opt/balance-refill/.venv",
        "/opt/balance-refill/.venv/bin/pip install '/opt/balance-refill/src[cli]'",
        "systemctl enable --now balance-refill-sweep.timer",
    ):
        assert step in systemd, step
    kubernetes = text.split("### A Kubernetes CronJob", 1)[1].split("## ", 1)[0]
    assert "pip install --no-cache-dir '/src[cli]'" in kubernetes
    units = [b for b in blocks(DOCS / "operating.md") if b.lang == "ini"]
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read(ROOT / "examples" / "systemd" / "balance-refill-sweep.service")
    timer = (ROOT / "examples" / "systemd" / "balance-refill-sweep.timer").read_text()
    assert any(service["Service"]["ExecStart"] in b.code for b in units)
    assert any(b.code.strip() in timer for b in units if "[Timer]" in b.code)


def test_policy_example_is_the_example_file() -> None:
    """docs/policies.md's two-tier policy is examples/policy.yaml, and it is valid."""
    from balance_refill.policy_file import load_policy_file, load_policy_text

    (block,) = [b for b in blocks(DOCS / "policies.md") if b.code.startswith("default_tier:")]
    assert load_policy_text(block.code) == load_policy_file(ROOT / "examples" / "policy.yaml")


def test_public_api_is_sorted_and_importable() -> None:
    """`__all__` is sorted, every name in it exists, and the version comes from metadata."""
    from importlib.metadata import version

    import balance_refill

    assert balance_refill.__all__ == sorted(balance_refill.__all__)
    assert all(hasattr(balance_refill, name) for name in balance_refill.__all__)
    assert balance_refill.__version__ == version("balance_refill")


def test_site_pages_are_in_the_navigation() -> None:
    """Every page under docs/ is in mkdocs.yml's navigation, and every page named exists
    (`mkdocs build --strict` in CI checks links and the API reference besides)."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: Any) -> Iterator[str]:
        for entry in nav:
            for value in entry.values():
                yield from pages(value) if isinstance(value, list) else [value]

    named = set(pages(config["nav"]))
    present = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert named == present


def test_changelog_has_a_release_and_keeps_the_format() -> None:
    """CHANGELOG.md: an Unreleased section, then 0.1.0 as the initial release; only
    Keep a Changelog's section names; the version is pyproject's."""
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert versions[0] == "Unreleased"
    assert "0.1.0" in versions
    assert re.search(r"^## \[0\.1\.0\] \u2013 Initial release$", text, flags=re.MULTILINE)
    kinds = set(re.findall(r"^### (.+)$", text, flags=re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert 'version = "0.1.0"' in (ROOT / "pyproject.toml").read_text()
