"""Start and stop the mongoeco wire server the suite runs on, from the suite's own Python.

mongoeco needs Python 3.13+, the suite runs on 3.11+, so the server runs in a separate
environment (`server.py` in a child process). That environment is, in order:

1. `BALANCE_REFILL_WIRE_PYTHON`: a Python with mongoeco installed (used as it is);
2. `<repo>/.venv-wire`, created when missing from a Python 3.13+ found as
   `PYENV_VERSION=3.13.0 python3.13`, `python3.13` on PATH, or
   `~/.pyenv/versions/3.13*/bin/python3`, with `pip install -r tests/wire/requirements.txt`.

`start_wire_server()` returns a running `WireServer` (`.uri`, `.stop()`); it raises
`WireUnavailable` with the reason when no server can be started. The server runs in its
own process group; `stop()` closes its stdin, then sends SIGTERM, then SIGKILL to the
group, and every server still running at interpreter exit is stopped the same way.

    python -m tests.wire.launcher --check   # build the environment, start, ping, stop
    python -m tests.wire.launcher --serve   # print the URI and serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import glob
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVER = HERE / "server.py"
REQUIREMENTS = HERE / "requirements.txt"
VENV = REPO / ".venv-wire"
PYTHON_ENV = "BALANCE_REFILL_WIRE_PYTHON"
MIN_PYTHON = (3, 13)

_PROBE = (
    "import sys, importlib.metadata as m\n"
    "try:\n    v = m.version('mongoeco')\nexcept m.PackageNotFoundError:\n    v = None\n"
    "import importlib.util as u\n"
    "if u.find_spec('bson') is None:\n    v = None  # mongoeco without its [wire] extra\n"
    "print(__import__('json').dumps({'executable': sys.executable, "
    "'version': list(sys.version_info[:2]), 'mongoeco': v}))\n"
)


class WireUnavailable(RuntimeError):
    """No wire server could be started; the message says why and what to do."""


@dataclass(frozen=True)
class WirePython:
    """A Python 3.13+ interpreter with mongoeco installed."""

    executable: str
    version: tuple[int, int]
    mongoeco: str


@dataclass(eq=False)  # compared and hashed by identity
class WireServer:
    """A running mongoeco wire server (a child process in its own process group)."""

    host: str
    port: int
    python: WirePython
    process: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def mongoeco_version(self) -> str:
        return self.python.mongoeco

    def describe(self) -> str:
        return f"mongoeco {self.python.mongoeco} at {self.host}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """Close the server's stdin (it stops), then if it has not stopped send SIGTERM,
        then SIGKILL, to its process group; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        _RUNNING.discard(self)
        proc = self.process
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()  # the server stops at end of stdin
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)  # its own group: start_new_session=True
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        for stream in (proc.stdout,):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> WireServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_RUNNING: set[WireServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=2.0)


# -- finding Python 3.13 and mongoeco ---------------------------------------------------


def _probe(executable: str, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """What `executable` is (real path, version, mongoeco version), or None if it fails."""
    try:
        done = subprocess.run(  # noqa: S603 - our own probe script
            [executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    try:
        found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return found


def _mongoeco_range() -> str:
    """The version range of mongoeco that requirements.txt pins, e.g. '>=4.11.0,<4.12'."""
    for line in REQUIREMENTS.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement.lower().startswith("mongoeco"):
            return requirement[len("mongoeco") :].removeprefix("[wire]").strip()
    return ""


def _in_range(version: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pragma: no cover - packaging comes with pytest
        return True
    return SpecifierSet(spec).contains(version, prereleases=True)


def _interpreter_candidates() -> list[tuple[str, dict[str, str] | None]]:
    """Ways to run a Python 3.13+, most specific first."""
    pyenv_env = {**os.environ, "PYENV_VERSION": "3.13.0"}
    candidates: list[tuple[str, dict[str, str] | None]] = [
        ("python3.13", pyenv_env),
        ("python3.13", None),
    ]
    home = Path.home()
    for pattern in ("3.13*/bin/python3", "3.1[4-9]*/bin/python3"):
        for path in sorted(glob.glob(str(home / ".pyenv" / "versions" / pattern))):
            candidates.append((path, None))
    return candidates


def find_base_python() -> str:
    """The real path of a Python 3.13+ to build `.venv-wire` from."""
    tried = []
    for executable, env in _interpreter_candidates():
        found = _probe(executable, env)
        if found is not None and tuple(found["version"]) >= MIN_PYTHON:
            return str(found["executable"])
        tried.append(executable if env is None else f"PYENV_VERSION=3.13.0 {executable}")
    raise WireUnavailable(
        "no Python 3.13+ found to run mongoeco (tried: "
        + ", ".join(tried)
        + f"); install one, or set {PYTHON_ENV} to a Python with mongoeco installed"
    )


def _checked(executable: str, origin: str) -> WirePython:
    found = _probe(executable)
    if found is None:
        raise WireUnavailable(f"{origin}: {executable} does not run")
    if tuple(found["version"]) < MIN_PYTHON:
        raise WireUnavailable(
            f"{origin}: {executable} is Python {'.'.join(map(str, found['version']))}, "
            "mongoeco needs 3.13+"
        )
    spec = _mongoeco_range()
    if found["mongoeco"] is None:
        raise WireUnavailable(
            f"{origin}: mongoeco[wire] is not installed in {executable} "
            f"(pip install -r {REQUIREMENTS.relative_to(REPO)})"
        )
    if not _in_range(found["mongoeco"], spec):
        raise WireUnavailable(
            f"{origin}: mongoeco {found['mongoeco']} in {executable} is outside the range "
            f"this suite was checked with ({spec}, tests/wire/requirements.txt)"
        )
    return WirePython(
        str(executable), (found["version"][0], found["version"][1]), found["mongoeco"]
    )


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _run_quiet(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise WireUnavailable(f"{what} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def ensure_environment() -> WirePython:
    """The Python to run the server with, building `.venv-wire` when needed."""
    explicit = os.environ.get(PYTHON_ENV)
    if explicit:
        return _checked(explicit, PYTHON_ENV)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    lock_path = REPO / ".venv-wire.lock"
    with lock_path.open("w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = _venv_python()
        found = _probe(str(python)) if python.exists() else None
        spec = _mongoeco_range()
        if found is None or tuple(found["version"]) < MIN_PYTHON:
            base = find_base_python()
            _run_quiet([base, "-m", "venv", "--clear", str(VENV)], f"creating {VENV}")
            found = None
        if found is None or found["mongoeco"] is None or not _in_range(found["mongoeco"], spec):
            _run_quiet(
                [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                f"installing {REQUIREMENTS.relative_to(REPO)} into {VENV}",
            )
        return _checked(str(python), str(VENV))


# -- starting and stopping ---------------------------------------------------------------


def _read_line(stream: IO[bytes], proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """The first line the server prints, or b'' if it exits or the deadline passes."""
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b""
            if not sel.select(timeout=min(remaining, 0.2)):
                if proc.poll() is not None:
                    return b""
                continue
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                return b""
            buffer += chunk
    return buffer.split(b"\n", 1)[0]


def _read_port(server: WireServer, deadline: float, timeout: float) -> int:
    """The port the server prints first; WireUnavailable if it prints anything else."""
    proc = server.process
    assert proc.stdout is not None
    line = _read_line(proc.stdout, proc, deadline).strip()
    if line.isdigit():
        return int(line)
    code = proc.poll()
    why = f"exited with {code}" if code is not None else f"printed {line!r}"
    raise WireUnavailable(
        f"the mongoeco server ({server.python.executable} {SERVER.name}) {why} instead of "
        f"its port within {timeout:.0f}s; its log:\n{server.log_tail()}"
    )


def _ping(uri: str, deadline: float) -> None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    last: Exception | None = None
    while time.monotonic() < deadline:
        client: Any = MongoClient(uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            last = exc
            time.sleep(0.1)
        else:
            return
        finally:
            client.close()
    raise WireUnavailable(f"the wire server at {uri} does not answer ping: {last}")


def start_wire_server(
    python: WirePython | None = None, *, host: str = "127.0.0.1", timeout: float = 60.0
) -> WireServer:
    """Start a mongoeco wire server on a free port and wait until it answers `ping`."""
    python = python or ensure_environment()
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, removed by stop()
        prefix="mongoeco-wire-", suffix=".log", delete=False
    )
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own server script
            [python.executable, "-u", str(SERVER), "--host", host, "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # its own process group: stopped as a whole
            cwd=str(HERE),
        )
    finally:
        log.close()
    server = WireServer(host, 0, python, proc, Path(log.name))
    _RUNNING.add(server)
    deadline = time.monotonic() + timeout
    try:
        server.port = _read_port(server, deadline, timeout)
        _ping(server.uri, deadline)
    except BaseException:
        server.stop(timeout=2.0)
        raise
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the suite's mongoeco wire server.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="start, ping and stop a server")
    mode.add_argument("--serve", action="store_true", help="print the URI, serve until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        server = start_wire_server()
    except WireUnavailable as exc:
        print(f"wire server unavailable: {exc}", file=sys.stderr)
        return 1
    with server:
        if args.check:
            print(f"ok: {server.describe()} ({server.python.executable})")
            return 0
        print(server.uri, flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
