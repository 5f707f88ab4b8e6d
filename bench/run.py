"""Run the benchmarks and print one table of every figure.

    python -m bench [--quick] [--json] [--profile] [--only calls,overhead,...]

`--quick` uses tiny sizes (what the smoke tests run), `--json` prints the figures as
JSON instead of the table, `--profile` adds cProfile's top functions for `ensure_balance`
and `spend` to the overhead benchmark. `network` and `sweep` need the mongoeco wire server
(`tests/wire/launcher.py`, a Python 3.13); leave them out with `--only` where there is none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import version

from bench import calls, network, overhead, scale, simulate, sweep
from bench.common import Section, render

BENCHMARKS = ("calls", "overhead", "network", "scale", "sweep", "simulate")
WIRE = ("network", "sweep")  # these start a mongoeco wire server


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the benchmarks and print one table."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--profile", action="store_true", help="cProfile ensure_balance and spend")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    return args


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


async def run_all(
    *, quick: bool = False, profile: bool = False, only: Sequence[str] = BENCHMARKS
) -> list[Section]:
    """Each chosen benchmark in turn, with a line on stderr as it starts and finishes."""
    jobs: dict[str, Callable[[], Awaitable[Section]]] = {
        "calls": lambda: calls.run(quick),
        "overhead": lambda: overhead.run(quick, with_profile=profile),
        "scale": lambda: scale.run(quick),
        "sweep": lambda: sweep.run(quick),
        "network": lambda: network.run(quick),
        "simulate": lambda: simulate.run(quick),
    }
    sections = []
    for name in (b for b in BENCHMARKS if b in only):
        log(f"{name} started")
        t0 = time.perf_counter()
        section = await jobs[name]()
        section.data["elapsed_s"] = round(time.perf_counter() - t0, 2)
        log(f"{name} finished in {section.data['elapsed_s']:.1f} s")
        sections.append(section)
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        sections = asyncio.run(run_all(quick=args.quick, profile=args.profile, only=args.only))
    except network.WireBenchmarkError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    minutes, rest = divmod(round(seconds), 60)
    took = f"{seconds:.1f} s ({minutes} min {rest} s)"
    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "pymongo": version("pymongo"),
        "mongomock": version("mongomock"),
    }
    if args.json:
        report = {
            "environment": env,
            "quick": args.quick,
            "seconds": round(seconds, 2),
            "sections": [s.as_json() for s in sections],
        }
        print(json.dumps(report, indent=2, default=str))
    else:
        print(
            f"balance_refill benchmarks ({'quick' if args.quick else 'full'}), {env['date']}, "
            f"Python {env['python']}, {env['machine']}, pymongo {env['pymongo']}, "
            f"mongomock {env['mongomock']}\n"
        )
        print(render(sections))
        print(f"\nTotal run time: {took}")
    log(f"every benchmark finished; total run time {took}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
