"""Mutation testing of the pure modules: `python -m tests.mutation` (see tests/MUTATION.md).

Runs mutmut (configured in pyproject.toml, `[tool.mutmut]`) from a fresh `mutants/` folder,
then prints, per module, how many mutants the tests killed, and every survivor with its
line and the change it made. Exit status 1 when a module scores under `--target`.

    python -m tests.mutation              # fresh run, then the table
    python -m tests.mutation --keep       # reuse mutants/ (mutmut re-runs what changed)
    python -m tests.mutation --report     # only the table, from the last run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("periods", "decide", "_schema", "_ledger")
"""The pure modules mutated (pyproject.toml's `only_mutate` names the same files)."""

# mutmut's exit codes of a mutant's test run (mutmut/stats.py): 1 and 3 fail a test, the
# timeouts ran forever; both count as killed. 0 survived; 5 and 33 found no test.
KILLED = {1, 3, 36, 24, -24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
HUNK = re.compile(r"^@@ -(\d+)")


@dataclass
class Score:
    """What happened to one module's mutants."""

    killed: int = 0
    survived: list[str] = field(default_factory=list)
    other: list[tuple[str, object]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.killed + len(self.survived) + len(self.other)

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0


def mutmut(*args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `python -m mutmut ARGS` in the repository root."""
    return subprocess.run(  # noqa: S603 - this interpreter's mutmut, fixed arguments
        [sys.executable, "-m", "mutmut", *args],
        cwd=ROOT,
        check=False,
        text=True,
        capture_output=quiet,
    )


def scores() -> dict[str, Score]:
    """Each module's mutants, read from the results mutmut keeps beside them."""
    result: dict[str, Score] = {}
    for module in MODULES:
        meta = ROOT / "mutants" / "balance_refill" / f"{module}.py.meta"
        score = result[module] = Score()
        if not meta.exists():
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in sorted(codes.items(), key=lambda item: natural(item[0])):
            if code in KILLED:
                score.killed += 1
            elif code in SURVIVED:
                score.survived.append(name)
            else:
                score.other.append((name, "no test" if code in NO_TESTS else code))
    return result


def natural(name: str) -> tuple[str, int]:
    """Sort `..._mutmut_10` after `..._mutmut_9`."""
    stem, _, number = name.rpartition("_")
    return stem, int(number) if number.isdigit() else 0


def function_line(module: str, mutant: str) -> int:
    """The line of the `def` of the function a mutant changes, in the original module."""
    function = mutant.rsplit(".", maxsplit=1)[-1].rsplit("__mutmut_", 1)[0]
    if function.startswith("xǁ"):  # a method: xǁClassǁmethod
        cls, method = function.removeprefix("xǁ").split("ǁ", 1)
        pattern = re.compile(
            rf"^class {re.escape(cls)}\b.*?^    def {re.escape(method)}\(", re.M | re.S
        )
    else:  # a function: x_name
        pattern = re.compile(rf"^def {re.escape(function.removeprefix('x_'))}\(", re.M)
    source = (ROOT / "balance_refill" / f"{module}.py").read_text()
    match = pattern.search(source)
    return source[: match.end()].count("\n") + 1 if match else 0


def describe(module: str, mutant: str) -> tuple[int, str]:
    """(line in the module, "old -> new") of a mutant, from `mutmut show`."""
    diff = mutmut("show", mutant, quiet=True).stdout.splitlines()
    start, offset, old, new = function_line(module, mutant), 0, "", ""
    for line in diff:
        hunk = HUNK.match(line)
        if hunk:
            offset = int(hunk[1]) - 1
        elif line.startswith("-") and not line.startswith("---") and not old:
            old = line[1:].strip()
            position = offset
        elif line.startswith("+") and not line.startswith("+++") and not new:
            new = line[1:].strip()
        elif line.startswith(" ") and not old:
            offset += 1
    if not old:
        return start, "?"
    return start + position, f"{old}  ->  {new}"


def report(target: float) -> bool:
    """Print the table and the survivors; True when every module reaches `target`."""
    table = scores()
    if not any(score.total for score in table.values()):
        print("no results: run `python -m tests.mutation` first")
        return False
    print(f"\n{'module':<28}{'killed':>8}{'total':>8}{'score':>9}")
    killed = total = 0
    for module, score in table.items():
        killed, total = killed + score.killed, total + score.total
        print(
            f"balance_refill/{module + '.py':<13}{score.killed:>8}{score.total:>8}{score.percent:>8.1f}%"
        )
    print(f"{'all':<28}{killed:>8}{total:>8}{100.0 * killed / max(total, 1):>8.1f}%")
    for module, score in table.items():
        for name in score.survived:
            line, change = describe(module, name)
            print(f"  survived  {module}.py:{line}  {change}    [{name}]")
        for name, status in score.other:
            print(f"  {status!s:<9} {module}.py  [{name}]")
    return all(score.percent >= target for score in table.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ from the last run")
    parser.add_argument("--report", action="store_true", help="only print the last run's table")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel mutants")
    parser.add_argument(
        "--target", type=float, default=90.0, help="minimum score per module (percent)"
    )
    args = parser.parse_args(argv)
    if not args.report:
        if not args.keep:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        started = time.monotonic()
        print(f"mutmut run --max-children {args.jobs} (output in mutants/run.log) ...", flush=True)
        (ROOT / "mutants").mkdir(exist_ok=True)
        with (ROOT / "mutants" / "run.log").open("w") as log:
            run = subprocess.run(  # noqa: S603 - this interpreter's mutmut, fixed arguments
                [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs)],
                cwd=ROOT,
                check=False,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        print(f"done in {time.monotonic() - started:.0f} s (exit {run.returncode})")
        if run.returncode != 0:
            print((ROOT / "mutants" / "run.log").read_text()[-3000:])
            return run.returncode
    return 0 if report(args.target) else 1


if __name__ == "__main__":
    sys.exit(main())
