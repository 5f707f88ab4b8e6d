"""Benchmarks of balance_refill (issue 5): `python -m bench` or `python bench/run.py`.

One module per benchmark, each with `async def run(quick=False) -> Section`:

* `calls`: database calls per chat turn, ours against LibreChat's two flows
  (`baselines`);
* `overhead`: the library's own CPU per call (stub collection, mock, cProfile);
* `network`: 200 users x 20 messages per flow, real round trips to a mongoeco wire server
  over loopback TCP (`tests/wire/launcher.py`; needs a Python 3.13);
* `scale`: document, index and ledger sizes, projected to 10 million users; shard key;
* `sweep_memory`: peak memory of the sweep (once it exists).
"""
