"""The library as it was at an earlier commit, importable beside the current one.

The paired benchmarks ("before" against "now" in one run, interleaved) import the
`balance_refill` package of `BEFORE` (main when issue 19 was taken up) under another
name: its files are extracted with `git archive` into a directory of their own (no
worktree, nothing changed in the repository) and loaded as `balance_refill_<commit>`;
the core package only imports itself relatively, so both copies live side by side.
Set `BALANCE_REFILL_BENCH_BEFORE` to another commit or branch to compare with that.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

BEFORE = "30adef5"
"""main's commit when issue 19 (speed) was taken up: the "before" of the paired figures."""
ROOT = Path(__file__).resolve().parents[1]


class BeforeUnavailable(RuntimeError):
    """The earlier commit could not be read (no git, or not a checkout of the project)."""


def before_ref() -> str:
    return os.environ.get("BALANCE_REFILL_BENCH_BEFORE", BEFORE)


def _git(*args: str) -> bytes:
    try:
        done = subprocess.run(  # noqa: S603 - fixed git arguments, refs from the developer
            ["git", "-C", str(ROOT), *args],  # noqa: S607 - git from PATH, as a developer runs it
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BeforeUnavailable(f"git {' '.join(args)} failed: {exc}") from exc
    return done.stdout


def load(ref: str | None = None) -> ModuleType:
    """The `balance_refill` package of commit `ref` (default `before_ref()`), imported
    under the name `balance_refill_<commit>`."""
    commit = _git("rev-parse", "--verify", f"{ref or before_ref()}^{{commit}}").decode().strip()
    name = f"balance_refill_{commit[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    target = Path(tempfile.gettempdir()) / f"balance-refill-bench-{commit[:12]}"
    package = target / "balance_refill"
    if not (package / "__init__.py").exists():
        archive = _git("archive", "--format=tar", commit, "balance_refill")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a file location always has one
        raise BeforeUnavailable(f"cannot import {package}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def label(ref: str | None = None) -> str:
    """`main@<short commit>` for the figures."""
    try:
        commit = _git("rev-parse", "--short", f"{ref or before_ref()}^{{commit}}").decode().strip()
    except BeforeUnavailable:
        commit = ref or before_ref()
    return f"main@{commit}"
