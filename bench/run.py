"""Run the benchmarks and print one table of every figure.

    python -m bench [--quick] [--json] [--profile] [--only calls,overhead,...]
    python bench/run.py [same options]

`--quick` uses tiny sizes (seconds; what the smoke test runs), `--json` prints the
figures as JSON instead of the table, `--profile` adds cProfile's top functions for
`ensure_balance` and `spend` to the overhead benchmark.
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
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import calls, network, overhead, scale, sweep_memory, sweep_vs_classic
from bench.common import Section, render

BENCHMARKS = ("calls", "overhead", "network", "scale", "sweep", "sweepcost")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--profile", action="store_true", help="cProfile ensure_balance and spend")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    args.only = chosen
    return args


async def run_all(
    *, quick: bool = False, profile: bool = False, only: Sequence[str] = BENCHMARKS
) -> list[Section]:
    jobs: dict[str, Callable[[], Awaitable[Section]]] = {
        "calls": lambda: calls.run(quick),
        "overhead": lambda: overhead.run(quick, with_profile=profile),
        "network": lambda: network.run(quick),
        "scale": lambda: scale.run(quick),
        "sweep": lambda: sweep_memory.run(quick),
        "sweepcost": lambda: sweep_vs_classic.run(quick),
    }
    sections = []
    for name in BENCHMARKS:
        if name in only:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            section = await jobs[name]()
            section.data["elapsed_s"] = round(time.perf_counter() - t0, 2)
            print(f"bench: {name} done in {section.data['elapsed_s']} s", file=sys.stderr)
            sections.append(section)
    return sections


def environment() -> dict[str, Any]:
    import mongomock  # noqa: PLC0415 - only for the report header
    import pymongo  # noqa: PLC0415

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "pymongo": pymongo.version,
        "mongomock": getattr(mongomock, "__version__", "?"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sections = asyncio.run(run_all(quick=args.quick, profile=args.profile, only=args.only))
    except network.WireBenchmarkError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 1
    env = environment()
    if args.json:
        print(
            json.dumps(
                {
                    "environment": env,
                    "quick": args.quick,
                    "sections": [s.as_json() for s in sections],
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(
            f"balance_refill benchmarks ({'quick' if args.quick else 'full'}), "
            f"{env['date']}, Python {env['python']}, {env['machine']}, "
            f"pymongo {env['pymongo']}, mongomock {env['mongomock']}"
        )
        print()
        print(render(sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
