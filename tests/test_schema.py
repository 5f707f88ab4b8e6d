"""The document layout, filters and updates, pinned where mutation testing found the
older tests loose (tests/MUTATION.md).

Pure checks of `parse`, the compare-and-swap filter and the update builders, then the
same rules seen through a database on every backend: odd stored values, a `lastSeen`
never moved backwards, the spend's request window, a spend on a document without
counters, and the sweep's queries around reserved credits and missing `lastRefill`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill import _schema as S
from balance_refill.decide import RefillPlan, request_key
from balance_refill.testing import FakeClock

Make = Callable[..., BalanceRefiller]
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
POLICY = RefillPolicy(amount=100, interval="30d")


# -- parse: what a stored document means ----------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "balance"),
    [
        (True, 1),
        (False, 0),
        (7, 7),
        (1234.5, 1234.5),
        (float("nan"), 0),
        (float("inf"), 0),
        (float("-inf"), 0),
        ("12", 0),
        (None, 0),
        ([5], 0),
    ],
)
def test_stored_numbers(stored: object, balance: float) -> None:
    """A stored number is read exactly; NaN, infinities and non-numbers read as 0."""
    state = S.parse({"_id": 1, "user": "u", "tokenCredits": stored}).state
    assert state.balance == balance
    assert S.parse({"_id": 1, "user": "u", "reservedCredits": stored}).state.reserved == balance


def test_missing_counters_read_as_zero() -> None:
    """A document without `tokenCredits`, `reservedCredits` or the spend reads 0 for each."""
    state = S.parse({"_id": 1, "user": "u"}).state
    assert (state.balance, state.reserved, state.spent) == (0, 0, 0)


@pytest.mark.parametrize("stored", [5, 5.5, None, True, ["pro"]])
def test_a_tier_is_text_or_nothing(stored: object) -> None:
    """A stored tier or refill tier that is not text means the default tier (None)."""
    state = S.parse({"_id": 1, "user": "u", "tier": stored, "refillTier": stored}).state
    assert (state.tier, state.refill_tier) == (None, None)
    assert S.parse({"_id": 1, "user": "u", "tier": "pro"}).state.tier == "pro"


def test_parse_reads_last_seen_and_librechat_switch() -> None:
    """`lastSeen` is read as aware UTC; LibreChat's switch counts only when exactly true."""
    seen = datetime(2026, 2, 1, 8, 30)  # noqa: DTZ001 - naive, as a client not tz-aware reads it
    record = S.parse({"_id": 1, "user": "u", "lastSeen": seen, "autoRefillEnabled": True})
    assert record.last_seen == seen.replace(tzinfo=UTC)
    assert record.librechat_auto is True
    for switch in (False, None, 1, "true"):
        assert S.parse({"_id": 1, "user": "u", "autoRefillEnabled": switch}).librechat_auto is False
    assert S.parse({"_id": 1, "user": "u"}).librechat_auto is False
    assert S.parse({"_id": 1, "user": "u"}).last_seen is None
    assert S.parse({"_id": 1, "user": "u", "lastSeen": "yesterday"}).last_seen is None


def test_a_pending_row_must_be_a_document() -> None:
    """A `pendingLedger` that is not a document is no pending row."""
    assert S.parse({"_id": 1, "user": "u", "pendingLedger": "junk"}).pending is None
    assert S.parse({"_id": 1, "user": "u", "pendingLedger": [1]}).pending is None
    row = {"_id": 9, "rawAmount": 5}
    assert S.parse({"_id": 1, "user": "u", "pendingLedger": row}).pending == row


# -- the compare-and-swap filter ----------------------------------------------------------


def test_cas_filter_expects_no_marker_and_no_librechat_refill() -> None:
    """The filter names every field a decision rests on, no pending marker of ours and,
    unless LibreChat's refill is already settling, none of LibreChat's either."""
    doc = {"_id": 1, "user": "u", "tokenCredits": 5, "lastRefill": NOW}
    expected = {
        "_id": 1,
        "user": "u",
        "tokenCredits": 5,
        "reservedCredits": None,
        "lastRefill": NOW,
        "refillPaused": None,
        "tier": None,
        "spentSinceRefill": None,
        "tierPinned": None,
        "pendingLedger": None,
        "pendingRefill": None,
    }
    assert S.cas_filter(S.parse(doc)) == expected
    without_ledger = dict(expected)
    del without_ledger["pendingLedger"]
    assert S.cas_filter(S.parse(doc), with_pending=False) == without_ledger
    settling = S.cas_filter(S.parse({**doc, "pendingRefill": {"rawAmount": 5}}))
    assert "pendingRefill" not in settling
    assert settling["pendingLedger"] is None


# -- the update builders ------------------------------------------------------------------


def plan(**fields: Any) -> RefillPlan:
    return RefillPlan(
        **{"tier": "default", "policy": POLICY, "before": 0, "after": 100, "amount": 100, **fields}
    )


def test_refill_update_without_a_request_key_pushes_nothing() -> None:
    """A refill alone sets the refill fields and touches `lastSeen`; no request window."""
    update = S.refill_update(plan(history=(4, 5)), NOW, charge=0, mirrored={"refillAmount": 100})
    assert update == {
        "$set": {
            "tokenCredits": 100,
            "lastRefill": NOW,
            "refillTier": "default",
            "spentSinceRefill": 0,
            "spendHistory": [4, 5],
            "refillAmount": 100,
        },
        "$max": {"lastSeen": NOW},
    }


def test_refill_update_with_a_charge_keeps_the_last_keys_and_amounts() -> None:
    """A refill that also charges records the request key and its amount, keeping the
    newest `window` of each."""
    update = S.refill_update(
        plan(previous_tier="free"), NOW, charge=30, mirrored={}, request_key=-5, window=40
    )
    assert update["$set"]["tokenCredits"] == 70
    assert update["$set"]["spentSinceRefill"] == 30
    assert update["$set"]["tier"] == "default"
    assert update["$push"] == {
        "recentRequests": {"$each": [-5], "$slice": -40},
        "recentAmounts": {"$each": [30], "$slice": -40},
    }


def test_with_marker_adds_op_id_switch_and_row() -> None:
    """Every write carries the op id (also pushed onto the last 16 op ids) and LibreChat's
    switch off; the row is keyed by the op id; a keyed admin entry rides along."""
    marked = S.with_marker({"$set": {"a": 1}, "$max": {"lastSeen": NOW}}, "op", {"rawAmount": 5})
    ops = {"recentOps": {"$each": ["op"], "$slice": -16}}
    assert marked == {
        "$set": {
            "a": 1,
            "autoRefillEnabled": False,
            "lastOpId": "op",
            "pendingLedger": {"_id": "op", "rawAmount": 5},
        },
        "$max": {"lastSeen": NOW},
        "$push": ops,
    }
    bare = S.with_marker({"$unset": {"tier": ""}}, "op", None)
    assert bare == {
        "$unset": {"tier": ""},
        "$set": {"autoRefillEnabled": False, "lastOpId": "op"},
        "$push": ops,
    }
    keyed = S.with_marker({"$set": {"a": 1}}, "op", None, admin={"k": 1})
    assert keyed["$push"] == {**ops, "recentAdmin": {"$each": [{"k": 1}], "$slice": -32}}


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (None, NOW),  # created now
        ({"_id": "u", "user": "u"}, NOW),  # never seen before
        ({"_id": "u", "user": "u", "lastSeen": NOW - timedelta(hours=1)}, NOW),
        ({"_id": "u", "user": "u", "lastSeen": NOW + timedelta(hours=1)}, NOW + timedelta(hours=1)),
    ],
)
def test_after_first_seen_never_moves_last_seen_back(
    before: dict[str, Any] | None, expected: datetime
) -> None:
    """The derived document's `lastSeen` is the later of the stored one and now (`$max`)."""
    insert = S.first_seen_insert("u", NOW, start_balance=20, mirrored={})
    after = S.after_first_seen(before, insert, "u", NOW)
    assert after["lastSeen"] == expected
    assert after["autoRefillEnabled"] is False
    assert after["user"] == "u"


def test_after_an_uncharged_spend_the_counters_exist() -> None:
    """A spend that did not charge wrote missing counters as 0: the filter expects 0."""
    record = S.after_uncharged_spend(S.parse({"_id": 1, "user": "u", "autoRefillEnabled": True}))
    cas = S.cas_filter(record)
    assert (cas["tokenCredits"], cas["spentSinceRefill"]) == (0, 0)
    assert record.librechat_auto is False
    kept = S.after_uncharged_spend(S.parse({"_id": 1, "user": "u", "tokenCredits": 3.5}))
    assert S.cas_filter(kept)["tokenCredits"] == 3.5


# -- through a database, on every backend -----------------------------------------------------


async def test_last_seen_is_never_moved_back(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A `lastSeen` ahead of this server's clock (another server's) is kept and reported."""
    refiller = make_refiller(policy=POLICY)
    ahead = clock() + timedelta(hours=1)
    await db["balances"].insert_many(
        [
            {"user": "ahead", "tokenCredits": 500, "lastRefill": clock(), "lastSeen": ahead},
            {
                "user": "behind",
                "tokenCredits": 500,
                "lastRefill": clock(),
                "lastSeen": clock() - timedelta(days=1),
            },
        ]
    )
    assert (await refiller.ensure_balance("ahead")).last_seen == ahead
    assert (await refiller.ensure_balance("behind")).last_seen == clock()
    assert (await refiller.ensure_balance("new")).last_seen == clock()
    assert (await refiller.get_state("ahead")).last_seen == ahead
    stored = await db["balances"].find_one({"user": "ahead"})
    assert S.parse(stored).last_seen == ahead


async def test_spend_window_keeps_the_newest_requests(make_refiller: Make) -> None:
    """With `request_window=32`, after 33 spends the newest 32 ids are still recognised
    and the oldest is forgotten."""
    refiller = make_refiller(
        policy=RefillPolicy(amount=100, interval="30d", start_balance=1_000), request_window=32
    )
    for i in range(33):
        await refiller.spend("u", 1, request_id=f"r{i}")
    assert (await refiller.spend("u", 1, request_id="r32")).balance == 967  # a retry
    assert (await refiller.spend("u", 1, request_id="r1")).balance == 967  # still known
    assert (await refiller.spend("u", 1, request_id="r0")).balance == 966  # forgotten


async def test_the_pipeline_spend_keeps_the_newest_requests_too(
    make_refiller: Make, db: Any
) -> None:
    """The same window through the pipeline (each spend the first of a new refiller, so
    none takes the plain update): the newest keys and their amounts, aligned."""
    policy = RefillPolicy(amount=100, interval="30d", start_balance=1_000)
    for i, amount in enumerate((1, 2, 3)):
        await make_refiller(policy=policy, request_window=2).spend("u", amount, request_id=f"p{i}")
    doc = await db["balances"].find_one({"user": "u"})
    assert doc["recentRequests"] == [request_key("p1"), request_key("p2")]
    assert doc["recentAmounts"] == [2, 3]


def test_odd_window_shapes_read_as_empty() -> None:
    """Window fields that are not lists (text, a number, a document) read as nothing."""
    record = S.parse(
        {
            "user": "u",
            "recentRequests": "ab",
            "recentAmounts": 5,
            "recentOps": {"k": 1},
            "recentAdmin": "x",
        }
    )
    assert (record.recent, record.recent_amounts, record.recent_ops, record.recent_admin) == (
        (),
        (),
        (),
        (),
    )


@pytest.mark.parametrize(("stored", "spent"), [(-5, 0), (0, 0), (1, 1), (0.5, 0.5), ("7", 0)])
def test_spent_since_refill_is_never_negative(stored: object, spent: float) -> None:
    assert S.parse({"user": "u", "spentSinceRefill": stored}).state.spent == spent


async def test_refill_and_charge_records_the_request(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A spend paid by a refill in the same write is recognised when retried, even with
    a full window of older requests."""
    refiller = make_refiller(
        policy=RefillPolicy(amount=100, interval="30d", start_balance=40), request_window=32
    )
    keys = [request_key(f"old{i}") for i in range(32)]
    await db["balances"].insert_one(
        {
            "user": "u",
            "tokenCredits": 10,
            "lastRefill": clock() - timedelta(days=31),
            "recentRequests": keys,
        }
    )
    state = await refiller.spend("u", 50, request_id="big")
    assert (state.refilled, state.balance) == (True, 50)
    assert (await refiller.spend("u", 50, request_id="big")).balance == 50  # a retry
    stored = await db["balances"].find_one({"user": "u"})
    assert stored["recentRequests"] == [*keys[1:], request_key("big")]


async def test_spend_on_a_document_without_counters(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A LibreChat document without `tokenCredits` has nothing to spend; when a refill is
    due it is refilled and charged in one write (the filter expects the counters the
    spend's call wrote as 0)."""
    refiller = make_refiller(policy=POLICY)
    await db["balances"].insert_many([{"user": "recent", "lastRefill": clock()}, {"user": "due"}])
    with pytest.raises(InsufficientCredits):
        await refiller.spend("recent", 1)
    stored = await db["balances"].find_one({"user": "recent"})
    assert (stored["tokenCredits"], stored["spentSinceRefill"]) == (0, 0)
    state = await refiller.spend("due", 5)
    assert (state.refilled, state.balance, state.granted) == (True, 95, 100)


async def test_refill_after_a_refused_spend_expects_the_stored_spend(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A spend not covered, by a user who spent before in this period, is paid by a due
    refill: the filter expects the stored spend, not 0."""
    refiller = make_refiller(policy=POLICY)
    await db["balances"].insert_one(
        {
            "user": "u",
            "tokenCredits": 5,
            "spentSinceRefill": 20,
            "lastRefill": clock() - timedelta(days=31),
        }
    )
    state = await refiller.spend("u", 50)
    assert (state.refilled, state.balance, state.granted) == (True, 50, 95)
    stored = await db["balances"].find_one({"user": "u"})
    assert (stored["tokenCredits"], stored["spentSinceRefill"], stored["spendHistory"]) == (
        50,
        50,
        [20],
    )


async def test_sweep_sees_reserved_credits(make_refiller: Make, db: Any, clock: FakeClock) -> None:
    """Users at or above the threshold whose reserved credits leave less available are
    refilled; only those with nothing reserved are counted as surely above."""
    refiller = make_refiller(policy=POLICY)
    old = clock() - timedelta(days=31)
    await db["balances"].insert_many(
        [
            {"user": "half", "tokenCredits": 100, "reservedCredits": 0.5, "lastRefill": old},
            {"user": "one", "tokenCredits": 100.5, "reservedCredits": 1, "lastRefill": old},
            {"user": "big", "tokenCredits": 150, "reservedCredits": 60, "lastRefill": old},
            {"user": "above", "tokenCredits": 150, "lastRefill": old},
            {"user": "zero", "tokenCredits": 150, "reservedCredits": 0, "lastRefill": old},
        ]
    )
    report = await refiller.sweep(batch_size=10)
    assert (report.refilled, report.errors) == (3, 0)
    assert report.skipped["above_threshold"] == 2
    after = {d["user"]: d["tokenCredits"] async for d in db["balances"].find()}
    assert after == {"half": 100.5, "one": 101, "big": 160, "above": 150, "zero": 150}


async def test_sweep_pages_through_missing_last_refill(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """Pages of one: the keyset moves from users never refilled to the others."""
    refiller = make_refiller(policy=POLICY)
    old = clock() - timedelta(days=31)
    await db["balances"].insert_many(
        [
            {"_id": "a", "user": "a", "tokenCredits": 0},
            {"_id": "b", "user": "b", "tokenCredits": 0, "lastRefill": None},
            {"_id": "c", "user": "c", "tokenCredits": 0, "lastRefill": old},
            {"_id": "d", "user": "d", "tokenCredits": 0, "lastRefill": old - timedelta(days=1)},
        ]
    )
    report = await refiller.sweep(batch_size=1)
    assert (report.refilled, report.errors) == (4, 0)
    assert report.batches >= 4
    assert {d["user"]: d["tokenCredits"] async for d in db["balances"].find()} == dict.fromkeys(
        "abcd", 100
    )


async def test_sweep_logs_librechat_switch_only_where_it_was_on(
    make_refiller: Make, db: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A document with LibreChat's refill switched on gets one warning when written; the
    others, switch off or missing, get none."""
    refiller = make_refiller(policy=POLICY)
    old = clock() - timedelta(days=31)
    await db["balances"].insert_many(
        [
            {"user": "on", "tokenCredits": 0, "lastRefill": old, "autoRefillEnabled": True},
            {"user": "off", "tokenCredits": 0, "lastRefill": old, "autoRefillEnabled": False},
            {"user": "missing", "tokenCredits": 0, "lastRefill": old},
        ]
    )
    with caplog.at_level(logging.WARNING, logger="balance_refill"):
        report = await refiller.sweep()
    assert report.refilled == 3
    warned = [r.getMessage() for r in caplog.records if "autoRefillEnabled" in r.getMessage()]
    assert len(warned) == 1
    assert "'on'" in warned[0]
    assert {d["autoRefillEnabled"] async for d in db["balances"].find()} == {False}


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"lastSeen": NOW - timedelta(days=1), "autoRefillEnabled": True},
        {"lastSeen": NOW + timedelta(hours=1)},  # ahead of this clock: kept
        {"lastSeen": "yesterday", "autoRefillEnabled": False},
    ],
)
def test_parse_seen_is_the_document_after_first_seen(fields: dict[str, Any]) -> None:
    """`parse(before, seen=now)` reads the record `after_first_seen` derives (the hot
    path skips the copy), compare-and-swap filter included."""
    before = {"_id": 1, "user": "u", "tokenCredits": 7, "lastRefill": NOW, **fields}
    direct = S.parse(before, seen=NOW)
    derived = S.parse(S.after_first_seen(before, {}, "u", NOW))
    assert direct._replace(doc={}) == derived._replace(doc={})
    assert S.cas_filter(direct) == S.cas_filter(derived)


def test_history_values_that_are_not_numbers_read_as_zero() -> None:
    """The spend history keeps whole and fractional numbers as stored; anything else
    (text, NaN, infinity) reads as 0, as every other stored number does."""
    history = [1, 2.5, "x", float("nan"), float("inf"), True, None]
    assert S.parse({"spendHistory": history}).state.history == (1, 2.5, 0, 0, 0, 1, 0)
    assert S.parse({"spendHistory": [4, 5]}).state.history == (4, 5)
