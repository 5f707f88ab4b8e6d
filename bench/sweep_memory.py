"""Benchmark 5: peak memory of the sweep.

When `BalanceRefiller` has a `sweep` method, seed 10,000 and then 50,000 users on the
mock (balance 0, period elapsed, so every one of them is due under a `top_up` policy)
and measure, with `tracemalloc` started after seeding, what
`await refiller.sweep(batch_size=500)` allocates:

* the peak above the start: what the task asks for. The database runs in this process,
  so it includes what the mock *keeps* (every ledger row written, every field a refill
  updates), which grows with the users swept and would live on the server in production;
* the per-batch working set (when the sweep takes `progress=`, which is called after
  every batch): the peak within one batch above the memory held when it started, median
  and maximum over the batches. The median is the sweep's own footprint (plus the mock's
  copies of that batch); a sweep that streams in batches keeps it flat as the number of
  users grows;
* what stays allocated after the sweep, per user (the mock's storage of what was written).

Until the sweep exists the table shows "sweep not available yet" (and
`python -m bench.sweep_memory` prints it).

The mock runs behind `bench.fastmock.fast_mock` (compiled filters, `_id` lookups, a
sorted and limited `find` that never holds more than `limit` documents), and behind
`balance_refill.testing.BulkWriteShim` when the package provides it (mongomock's
`bulk_write` with `UpdateOne` is broken). The time on the mock says little about the
sweep's speed on a server: every unindexed query still scans the whole collection.
"""

from __future__ import annotations

import gc
import inspect
import time
import tracemalloc
from typing import Any, cast

from bson import ObjectId

from balance_refill import BalanceRefiller, RefillPolicy, testing
from balance_refill.testing import FakeClock

from .common import START, Section, due_last_refill, librechat_doc, median, mock_db
from .fastmock import fast_mock

NOT_AVAILABLE = "sweep not available yet"
SIZES = (10_000, 50_000)
QUICK_SIZES = (200, 1_000)
BATCH_SIZE = 500


def sweep_available(refiller_cls: type[BalanceRefiller] = BalanceRefiller) -> bool:
    return hasattr(refiller_cls, "sweep")


async def measure(
    users: int,
    *,
    batch_size: int = BATCH_SIZE,
    refiller_cls: type[BalanceRefiller] = BalanceRefiller,
) -> dict[str, Any]:
    """Run one sweep over `users` due users under tracemalloc."""
    raw = mock_db()
    # mongomock-motor hands out a new collection object on every `db[name]`: patch and
    # keep the very objects the refiller will use.
    balances: Any = fast_mock(raw["balances"])
    transactions: Any = fast_mock(raw["transactions"])
    shim = getattr(testing, "BulkWriteShim", None)
    if shim is not None:
        balances, transactions = shim(balances), shim(transactions)
    docs = [librechat_doc(ObjectId(), 0, due_last_refill(START)) for _ in range(users)]
    for i in range(0, users, 5_000):
        await raw["balances"].insert_many(docs[i : i + 5_000])
    del docs
    refiller = refiller_cls(
        balances,
        RefillPolicy(amount=10_000, interval="30d"),
        ledger=transactions,
        clock=FakeClock(START),
        retry_delay=0,
    )
    sweep = cast(Any, refiller).sweep
    batches: list[int] = []  # per batch: peak above the memory held when it started
    peaks: list[int] = []  # absolute peak of each window between two progress calls
    held = 0

    def progress(scanned: int, total: int | None) -> None:
        nonlocal held
        current, peak = tracemalloc.get_traced_memory()
        batches.append(peak - held)
        peaks.append(peak)
        held = current
        tracemalloc.reset_peak()

    kwargs: dict[str, Any] = {"batch_size": batch_size}
    if "progress" in inspect.signature(sweep).parameters:
        kwargs["progress"] = progress
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        held = before
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        result = await sweep(**kwargs)
        seconds = time.perf_counter() - t0
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows = await raw["transactions"].count_documents({"context": "autoRefill"})
    return {
        "users": users,
        "peak_bytes": max([peak, *peaks]) - before,  # the peak is reset after each batch
        "batch_peak_bytes": max(batches) if batches else None,  # see the note in run()
        "batch_peaks": batches,
        "batches": len(batches),
        "retained_bytes": current - before,
        "seconds": seconds,
        "result": repr(result)[:200],
        "ledger_rows": rows,
    }


async def run(
    quick: bool = False,
    *,
    refiller_cls: type[BalanceRefiller] = BalanceRefiller,
    sizes: tuple[int, ...] | None = None,
) -> Section:
    section = Section("sweep", "5. sweep memory")
    if not sweep_available(refiller_cls):
        section.add("sweep(batch_size=500) peak memory", NOT_AVAILABLE)
        section.data = {"available": False}
        return section
    runs = [
        await measure(n, refiller_cls=refiller_cls)
        for n in (sizes or (QUICK_SIZES if quick else SIZES))
    ]
    for r in runs:
        n = f"{r['users']:,} users"
        section.add(f"sweep over {n}: peak traced memory above start", r["peak_bytes"] / 1e6, "MB")
        if r["batch_peaks"]:
            section.add(
                f"sweep over {n}: per-batch working set, median / max ({r['batches']} batches)",
                f"{median(r['batch_peaks']) / 1e6:.2f} / {r['batch_peak_bytes'] / 1e6:.2f}",
                "MB",
            )
        section.add(
            f"sweep over {n}: still allocated after, per user (the mock's storage)",
            r["retained_bytes"] / r["users"],
            "B",
        )
        section.add(f"sweep over {n}: ledger rows written", r["ledger_rows"])
        section.add(f"sweep over {n}: time on the mock", r["seconds"], "s")
    if len(runs) >= 2:
        first, last = runs[0], runs[-1]
        growth = f"{last['users'] / first['users']:g}x the users"
        section.add(
            f"peak above start, growth for {growth}", last["peak_bytes"] / first["peak_bytes"], "x"
        )
        if first["batch_peaks"] and last["batch_peaks"]:
            section.add(
                f"per-batch working set (median), growth for {growth}",
                median(last["batch_peaks"]) / median(first["batch_peaks"]),
                "x",
            )
    section.notes.append(
        f"batch_size={BATCH_SIZE}; tracemalloc started after seeding. The mock lives in this "
        "process: the peak above start includes the rows and fields it stores for the sweep. "
        "The per-batch maximum is a batch during which the mock's ledger store (a dict of "
        "every row) grew its table, a transient proportional to the rows already written; "
        "the median is the sweep's own working set."
    )
    section.data = {"available": True, "runs": runs}
    return section


def main() -> None:
    import asyncio  # noqa: PLC0415 - standalone entry point only

    section = asyncio.run(run())
    for fig in section.figures:
        print(fig.shown() if fig.value == NOT_AVAILABLE else f"{fig.name}: {fig.shown()}")


if __name__ == "__main__":
    main()
