"""Benchmarks of balance_refill: `python -m bench` (see `bench/run.py` for the options).

One module per benchmark, each with `async def run(quick=False) -> Section`:

* `calls`: database calls per chat turn, ours against LibreChat's two flows (`baselines`);
* `overhead`: the library's own CPU per call (stub collection; mock vs bare driver calls);
* `network`: real round trips per flow on a mongoeco wire server over loopback TCP;
* `scale`: document sizes and shard-key routing, from what the library wrote on the mock;
* `sweep`: the sweep against the classic monthly reset script, on a mongoeco wire server.
"""
