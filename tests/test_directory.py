"""`refiller.directory`: every read it sends names a field that leads one of the named
indexes (so the cost table in the README holds), lookups refuse to scan a large
collection without their index, cursors are validated, and history works without a
ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import BalanceRefiller, ConfigurationError, RefillPolicy, TieredPolicy
from balance_refill import _schema as S
from balance_refill.directory import LOOKUP_INDEXES, decode_cursor, encode_cursor
from balance_refill.errors import InvalidArgument
from balance_refill.testing import CallLog, RecordingCollection

TIERS = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=100, interval="30d"),
        "pro": RefillPolicy(amount=500, interval="30d"),
    },
    default_tier="free",
)
INDEXES: dict[str, list[list[str]]] = {
    "balances": [[k for k, _ in keys] for _, keys in LOOKUP_INDEXES["balances"]]
    + [[k for k, _ in keys] for _, keys, _ in S.BALANCE_INDEXES] + [["_id"]],
    "users": [[k for k, _ in keys] for _, keys in LOOKUP_INDEXES["users"]] + [["_id"]],
    "transactions": [[k for k, _ in S.LEDGER_INDEX[1]], ["_id"]],
}  # fmt: skip


def branches(filter_: Mapping[str, Any]) -> Iterator[set[str]]:
    """The field sets of each alternative the filter can match by."""
    if "$or" in filter_:
        for branch in filter_["$or"]:
            yield from branches(branch)
        return
    fields = {k for k in filter_ if not k.startswith("$")}
    for part in filter_.get("$and", []):
        for sub in branches(part):
            fields |= sub
            break
    yield fields


def unindexed(collection: str, filter_: Mapping[str, Any]) -> list[set[str]]:
    """Branches of `filter_` that no index of `collection` leads with."""
    leads = {index[0] for index in INDEXES[collection]}
    return [fields for fields in branches(filter_) if not fields & leads]


@pytest.fixture
def setup(
    db: Any, log: CallLog, make_refiller: Callable[..., BalanceRefiller]
) -> tuple[BalanceRefiller, Any]:
    refiller = make_refiller(policy=TIERS)
    return refiller, RecordingCollection(db["users"], log)


async def test_every_directory_read_leads_with_an_indexed_field(
    setup: tuple[BalanceRefiller, Any], db: Any, log: CallLog
) -> None:
    """find, the three lists (two pages each), history and the overview: every find,
    count and aggregate $match names a field that leads a named index."""
    refiller, users = setup
    alice = ObjectId()
    await db["users"].insert_one({"_id": alice, "email": "a@x.io", "name": "Al", "username": "al"})
    for i in range(4):
        await refiller.ensure_balance(f"u{i}")
        await refiller.admin.set_balance(f"u{i}", 0, actor="t", reason="r")
        await refiller.admin.set_auto_refill(f"u{i}", False, actor="t")
    await refiller.ensure_balance(alice)
    await refiller.admin.set_balance(alice, 500, actor="t", reason="r")
    directory = refiller.directory.with_users(users)
    log.calls.clear()
    assert [p.user for p in (await directory.find("a@x")).people] == [alice]
    assert [p.user for p in (await directory.find("Al")).people] == [alice]
    assert [p.user for p in (await directory.find("u1")).people] == ["u1"]
    for kind, tier in (("zero", None), ("paused", None), ("tier", "free")):
        page = await directory.listing(kind, tier=tier, limit=3)  # type: ignore[arg-type]
        assert page.next is not None
        rest = await directory.listing(kind, tier=tier, after=page.next, limit=3)  # type: ignore[arg-type]
        assert len(page.people) + len(rest.people) == (5 if kind == "tier" else 4)
    assert (await directory.history("u1", 5)).ledger
    from datetime import UTC, datetime

    await directory.overview(datetime.now(UTC))
    checked = 0
    for call in log.calls:
        if call.method in ("find", "count_documents", "find_one"):
            filter_ = call.args[0] if call.args else call.kwargs.get("filter", {})
        elif call.method == "aggregate":
            stages = call.args[0]
            assert isinstance(stages, list)
            first = stages[0]
            if "$sample" in first:
                continue  # the estimate without an index: a random cursor, no filter
            filter_ = first["$match"]
        else:
            continue
        assert isinstance(filter_, Mapping)
        assert unindexed(call.collection, filter_) == [], (call.collection, call.method, filter_)
        checked += 1
    assert checked >= 12


async def test_a_large_collection_without_the_index_is_refused(
    setup: tuple[BalanceRefiller, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above 20,000 documents a list whose index is missing names the index instead of
    scanning; after create_lookup_indexes it runs."""
    refiller, users = setup
    await refiller.ensure_balance("u1")
    await refiller.admin.set_balance("u1", 50, actor="t", reason="r")
    await users.insert_one({"email": "a@x.io"})
    monkeypatch.setattr("balance_refill.directory.EXACT_BELOW", 0)
    directory = refiller.directory.with_users(users)
    with pytest.raises(ConfigurationError, match="tokenCredits_1__id_1"):
        await directory.listing("zero")
    found = await directory.find("someone")
    assert found.missing_indexes == ["users.email_1", "users.username_1", "users.name_1"]
    await directory.create_lookup_indexes()
    assert (await directory.listing("zero")).people == []
    assert (await directory.find("someone")).missing_indexes == []


@pytest.mark.parametrize("bad", ["", "!!!", encode_cursor({"$gt": 1}, 1), "e30"])
def test_a_forged_page_cursor_is_refused(bad: str) -> None:
    """A cursor is a (value, _id) pair of plain values; anything else is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        decode_cursor(bad)


def test_a_cursor_round_trips() -> None:
    """What a page hands out is what the next page reads."""
    oid = ObjectId()
    assert decode_cursor(encode_cursor(-2.5, oid)) == (-2.5, oid)


async def test_history_without_a_ledger_is_empty_not_an_error(
    make_refiller: Callable[..., BalanceRefiller],
) -> None:
    """No ledger: no rows and `ledger=False`, where `admin.history` raises."""
    refiller = make_refiller(policy=TIERS, ledger=None)
    await refiller.ensure_balance("u1")
    history = await refiller.directory.history("u1")
    assert (history.rows, history.ledger) == ([], False)


async def test_bad_queries_are_refused(setup: tuple[BalanceRefiller, Any]) -> None:
    """Empty, oversized or non-text queries and unknown tiers are InvalidArgument."""
    refiller, users = setup
    directory = refiller.directory.with_users(users)
    for query in ("", "  ", "x" * 257, {"$ne": None}):
        with pytest.raises(InvalidArgument):
            await directory.find(query)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await directory.listing("tier", tier="gold")
