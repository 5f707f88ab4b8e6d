"""Install and run LibreChat's own balance code (Node) for the interop tests.

`ensure_node_modules()` installs the exact packages of `librechat/package-lock.json`
(`@librechat/data-schemas` 0.0.71, Mongoose, dotenv and their peers) with `npm ci` into a
cache folder: `<repo>/.cache/librechat-node`, or `$BALANCE_REFILL_NODE_CACHE`. It reinstalls
only when the folder is missing or the lock file changed. `python -m tests.interop.node`
does the install alone (for CI) and prints the folder.

`run_bridge(uri, db_name, commands)` runs `librechat/bridge.mjs` once over a list of
commands and returns one result per command (see the top of bridge.mjs for the protocol).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from bson import json_util

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "librechat"
BRIDGE = PACKAGE / "bridge.mjs"
REPO = HERE.parent.parent
CACHE_ENV = "BALANCE_REFILL_NODE_CACHE"
MANIFESTS = ("package.json", "package-lock.json")
STAMP = ".installed-lock-sha256"
BRIDGE_TIMEOUT = 120.0

JSON_OPTIONS = json_util.JSONOptions(
    json_mode=json_util.JSONMode.RELAXED, tz_aware=True, tzinfo=UTC
)


class NodeSetupError(RuntimeError):
    """Node or npm is missing, or the install failed."""


class BridgeError(RuntimeError):
    """The bridge process itself failed (not one of its commands)."""


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return (
        Path(configured).expanduser().resolve()
        if configured
        else REPO / ".cache" / "librechat-node"
    )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NodeSetupError(
            f"`{name}` is not on PATH: the LibreChat interop tests need Node.js 20+ and npm "
            "(they install @librechat/data-schemas from the npm registry)"
        )
    return path


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in MANIFESTS:
        digest.update((PACKAGE / name).read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One installer at a time (two test sessions may share the cache)."""
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_node_modules() -> Path:
    """Install the locked packages into the cache folder if needed; return its node_modules."""
    npm = _tool("npm")
    _tool("node")
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    modules = folder / "node_modules"
    wanted = _fingerprint()
    with _locked(folder):
        stamp = folder / STAMP
        installed = stamp.read_text().strip() if stamp.exists() else None
        if installed == wanted and (modules / "@librechat" / "data-schemas").is_dir():
            return modules
        for name in MANIFESTS:
            shutil.copyfile(PACKAGE / name, folder / name)
        stamp.unlink(missing_ok=True)
        done = subprocess.run(  # noqa: S603 - fixed arguments, npm found on PATH
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise NodeSetupError(
                f"`npm ci` in {folder} failed with exit code {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        stamp.write_text(wanted + "\n")
    return modules


def run_bridge(
    uri: str, db_name: str, commands: Sequence[dict[str, Any]], *, timeout: float = BRIDGE_TIMEOUT
) -> list[dict[str, Any]]:
    """Run LibreChat's code over `commands`; one `{"ok": ..., "result"|"error": ...}` each."""
    modules = ensure_node_modules()
    env = {
        **os.environ,
        "LIBRECHAT_NODE_MODULES": str(modules),
        "LOG_TO_FILE": "false",
        "NODE_ENV": "production",  # LibreChat logs at warn level, not debug
    }
    done = subprocess.run(  # noqa: S603 - fixed arguments, node found on PATH
        [_tool("node"), str(BRIDGE), uri, db_name],
        input=json_util.dumps(list(commands), json_options=JSON_OPTIONS),
        cwd=modules.parent,  # dotenv reads ./.env: the cache folder has none
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(lines) != len(commands):
        raise BridgeError(
            f"bridge.mjs exited {done.returncode} after {len(lines)} of {len(commands)} "
            f"results\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return [json_util.loads(line, json_options=JSON_OPTIONS) for line in lines]


if __name__ == "__main__":
    sys.stdout.write(f"{ensure_node_modules()}\n")
