"""Checks where mongoeco is known to answer differently from a real MongoDB server.

On the `wire` backend, `tests/conftest.py` marks each of these tests
`xfail(strict=True)` with its reason: it must fail there, and if mongoeco starts behaving
like a server the strict xfail fails the run, so the entry is removed. Nothing here
applies on the mock or on a real server (`MONGODB_URI`). Keys are pytest node ids.
"""

from __future__ import annotations

EXPECTED_DIFFERENCES: dict[str, str] = {
    "tests/test_contract.py::test_server_rejects_what_the_lint_forbids[expr-in-upsert-filter]": (
        "mongoeco accepts $expr in the filter of an upsert; a server answers error 224 "
        "(the query lint keeps the rule: tests/querylint.py)"
    ),
    "tests/test_contract.py::test_sweep_candidates_are_read_from_an_index": (
        "mongoeco's explain() has its own format, with no queryPlanner.winningPlan to "
        "show an IXSCAN"
    ),
    "tests/test_contract.py::test_retryable_writes_survive_a_dropped_connection": (
        "mongoeco's failCommand fail point answers with an error instead of closing the "
        "connection, so pymongo's retryable-write path is not exercised"
    ),
}
