"""Benchmarks of balance_refill (issue 5): `python -m bench` or `python bench/run.py`.

One module per benchmark, each with `async def run(quick=False) -> Section`:

* `calls`: database calls per chat turn, ours against LibreChat's two flows
  (`baselines`);
* `overhead`: the library's own CPU per call (stub collection, mock, cProfile);
* `network`: 1,000 users x 20 messages over a simulated 1 ms network;
* `scale`: document, index and ledger sizes, projected to 10 million users; shard key;
* `sweep_memory`: peak memory of the sweep (once it exists).
"""
