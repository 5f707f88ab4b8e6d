"""LibreChat's documents as LibreChat writes them: ObjectId users, fractional credits,
`autoRefillEnabled` left false, reservations and LibreChat's own pending refill.

Each test here failed on the library as it was before it learned these rules; they run
on every backend (the mock, and the wire server with the real driver).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import (
    BalanceRefiller,
    ConfigurationError,
    InsufficientCredits,
    InvalidUserId,
    RefillPolicy,
)
from balance_refill.testing import FakeClock, RecordingCollection

Make = Callable[..., BalanceRefiller]
HEX = "64f0c0ffee0000000000beef"


def librechat_doc(user: Any, credits: float, **fields: Any) -> dict[str, Any]:
    """A balance document in the shape LibreChat's Mongoose schema gives it."""
    return {
        "user": user,
        "tokenCredits": credits,
        "autoRefillEnabled": False,
        "refillIntervalValue": 30,
        "refillIntervalUnit": "days",
        "refillAmount": 0,
        **fields,
    }


async def all_docs(coll: Any, **query: Any) -> list[dict[str, Any]]:
    return [d async for d in coll.find(query)]


# -- 1. user ids as LibreChat stores them ---------------------------------------------


async def test_hex_string_user_is_stored_as_objectid(refiller: BalanceRefiller, db: Any) -> None:
    """A 24-hex user id is stored and queried as an ObjectId, in balances and ledger rows."""
    state = await refiller.ensure_balance(HEX)
    await refiller.grant(HEX, 5, actor="ops", reason="welcome")
    assert state.user_id == ObjectId(HEX)
    docs = await all_docs(db["balances"])
    assert [(d["user"], d["_id"]) for d in docs] == [(ObjectId(HEX), ObjectId(HEX))]
    rows = await all_docs(db["transactions"])
    assert [r["user"] for r in rows] == [ObjectId(HEX)]
    assert await db["balances"].count_documents({"user": HEX}) == 0


async def test_existing_objectid_document_found_by_hex_string(
    refiller: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """LibreChat's document (ObjectId user) is the one a hex string finds: no second one."""
    user = ObjectId()
    await db["balances"].insert_one(librechat_doc(user, 1234.5, lastRefill=clock()))
    state = await refiller.ensure_balance(str(user))
    assert (state.user_id, state.balance) == (user, 1234.5)
    assert await db["balances"].count_documents({}) == 1
    assert (await refiller.history(str(user))) == []


async def test_user_id_modes(make_refiller: Make, db: Any) -> None:
    """ "str" keeps hex strings as strings; "objectid" refuses what is not an ObjectId."""
    as_str = make_refiller(user_ids="str")
    assert (await as_str.ensure_balance(HEX)).user_id == HEX
    assert (await as_str.ensure_balance(ObjectId(HEX))).user_id == HEX
    strict = make_refiller(user_ids="objectid")
    with pytest.raises(InvalidUserId, match="objectid"):
        await strict.ensure_balance("bob")
    assert (await strict.ensure_balance(HEX)).user_id == ObjectId(HEX)
    with pytest.raises(ConfigurationError, match="user_ids"):
        make_refiller(user_ids="uuid")
    assert await db["balances"].count_documents({}) == 2


# -- 2. exact numbers -----------------------------------------------------------------


async def test_add_refill_keeps_the_fraction(
    make_refiller: Make, balances: RecordingCollection, clock: FakeClock
) -> None:
    """An `add` refill on 1234.5 leaves 9234.5, and its row says 8000."""
    refiller = make_refiller(policy=RefillPolicy(amount=8_000, interval="30d", mode="add"))
    user = ObjectId()
    await balances.inner.insert_one(
        librechat_doc(user, 1234.5, lastRefill=clock() - timedelta(days=31))
    )
    state = await refiller.ensure_balance(user)
    assert (state.refilled, state.balance, state.granted) == (True, 9234.5, 8000)
    [row] = await refiller.history(user)
    assert (row["rawAmount"], row["balanceBefore"], row["balanceAfter"]) == (8000, 1234.5, 9234.5)


async def test_fractional_spends_and_grants_are_exact(
    refiller: BalanceRefiller, balances: RecordingCollection, db: Any, clock: FakeClock
) -> None:
    """Spends, grants and set_balance take fractions; the ledger accounts for every one."""
    user = ObjectId()
    await balances.inner.insert_one(librechat_doc(user, 20000.25, lastRefill=clock()))
    assert (await refiller.spend(user, 90)).balance == 19910.25
    assert (await refiller.spend(user, 0.75, request_id="r1")).balance == 19909.5
    assert (await refiller.spend(user, 0.75, request_id="r1")).balance == 19909.5  # a retry
    assert (await refiller.grant(user, 10.125, actor="ops", reason="refund")).balance == 19919.625
    assert (await refiller.set_balance(user, 99.5, actor="ops", reason="fix")).balance == 99.5
    stored = await db["balances"].find_one({"user": user})
    assert stored["tokenCredits"] == 99.5
    rows = await all_docs(db["transactions"], user=user)
    assert sorted(r["rawAmount"] for r in rows) == [-19820.125, 10.125]
    with pytest.raises(InsufficientCredits) as info:
        await refiller.spend(user, 99.75)
    assert info.value.balance == 99.5


# -- 3. LibreChat's autoRefillEnabled: false is not a pause ---------------------------


async def test_stock_librechat_database_is_reset_by_the_sweep(
    make_refiller: Make, db: Any, clock: FakeClock
) -> None:
    """A monthly reset sweeps documents LibreChat left with autoRefillEnabled: false."""
    refiller = make_refiller(
        policy=RefillPolicy(amount=20_000, calendar="month", mode="reset"),
        leases=db["leases"],
    )
    old = clock() - timedelta(days=40)
    users = [ObjectId() for _ in range(12)]
    await db["balances"].insert_many(
        [librechat_doc(u, 1234.5 + i, lastRefill=old) for i, u in enumerate(users)]
    )
    report = await refiller.sweep()
    assert (report.refilled, report.skipped["paused"]) == (12, 0)
    docs = await all_docs(db["balances"])
    assert {d["tokenCredits"] for d in docs} == {20_000}
    assert await db["transactions"].count_documents({"context": "autoRefill"}) == 12


async def test_librechat_default_is_refilled_lazily(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """ensure_balance refills a due LibreChat document whose autoRefillEnabled is false."""
    user = ObjectId()
    await balances.inner.insert_one(
        librechat_doc(user, 0.5, lastRefill=clock() - timedelta(days=31))
    )
    state = await refiller.ensure_balance(user)
    assert (state.refilled, state.balance, state.auto_refill) == (True, 10_000, True)


async def test_pause_is_the_librarys_own_field(
    refiller: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """set_auto_refill writes refillPaused; LibreChat's switch stays false either way."""
    await refiller.ensure_balance("u")
    paused = await refiller.set_auto_refill("u", False, actor="ops")
    doc = await db["balances"].find_one({"user": "u"})
    assert (paused.auto_refill, doc["refillPaused"], doc["autoRefillEnabled"]) == (
        False,
        True,
        False,
    )
    clock.advance(days=400)
    await refiller.set_balance("u", 0, actor="ops", reason="drain")
    assert not (await refiller.ensure_balance("u")).refilled
    await refiller.set_auto_refill("u", True, actor="ops")
    assert (await refiller.ensure_balance("u")).refilled


# -- 4. one owner of refills ----------------------------------------------------------


async def test_every_document_written_keeps_librechat_refill_off(
    refiller: BalanceRefiller, db: Any, clock: FakeClock
) -> None:
    """Created, refilled, charged or changed by an admin: autoRefillEnabled is false."""
    await refiller.ensure_balance("new")
    user = ObjectId()
    await db["balances"].insert_one(
        librechat_doc(
            user,
            5.5,
            autoRefillEnabled=True,
            refillAmount=777,
            lastRefill=clock() - timedelta(days=31),
        )
    )
    await refiller.spend(user, 10)  # 5.5 does not cover it: refills (due), then charges
    docs = await all_docs(db["balances"])
    assert [d["autoRefillEnabled"] for d in docs] == [False, False]
    assert {d["refillAmount"] for d in docs} == {10_000}  # mirrored for LibreChat's UI


async def test_login_sync_switch_is_turned_off_with_a_log_line(
    refiller: BalanceRefiller,
    db: Any,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A document LibreChat's login sync switched on is switched off at the next call."""
    user = ObjectId()
    await db["balances"].insert_one(
        librechat_doc(user, 50_000, autoRefillEnabled=True, refillAmount=500, lastRefill=clock())
    )
    with caplog.at_level(logging.WARNING, logger="balance_refill"):
        state = await refiller.ensure_balance(user)
    assert not state.refilled
    assert (await db["balances"].find_one({"user": user}))["autoRefillEnabled"] is False
    assert [r.levelname for r in caplog.records if "autoRefillEnabled" in r.getMessage()] == [
        "WARNING"
    ]


async def test_reset_that_lowers_has_its_own_context(
    make_refiller: Make, balances: RecordingCollection, db: Any, clock: FakeClock
) -> None:
    """A reset from 5000.5 to 1000 is a `refillReset` row of -4000.5, in LibreChat's shape."""
    refiller = make_refiller(
        policy=RefillPolicy(amount=1_000, interval="1d", mode="reset", threshold=10_000)
    )
    user = ObjectId()
    await balances.inner.insert_one(
        librechat_doc(user, 5000.5, lastRefill=clock() - timedelta(days=2))
    )
    state = await refiller.ensure_balance(user)
    assert (state.balance, state.granted) == (1000, -4000.5)
    [row] = await all_docs(db["transactions"])
    assert (row["context"], row["rawAmount"], row["tokenValue"]) == (
        "refillReset",
        -4000.5,
        -4000.5,
    )
    assert (row["tokenType"], row["rate"], row["user"]) == ("credits", 1, user)


# -- reservations and LibreChat's own pending refill ----------------------------------


async def test_reserved_credits_are_not_spendable(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """Credits LibreChat reserved for in-flight requests are not spent by the library."""
    user = ObjectId()
    await balances.inner.insert_one(
        librechat_doc(user, 1_000, reservedCredits=900, lastRefill=clock())
    )
    with pytest.raises(InsufficientCredits) as info:
        await refiller.spend(user, 200)
    assert info.value.balance == 100
    assert (await refiller.spend(user, 100)).balance == 900


async def test_refill_decision_counts_reservations(
    refiller: BalanceRefiller, balances: RecordingCollection, clock: FakeClock
) -> None:
    """A top-up counts only unreserved credits, and keeps the reserved ones on top."""
    user = ObjectId()
    await balances.inner.insert_one(
        librechat_doc(user, 12_000, reservedCredits=4_000, lastRefill=clock() - timedelta(days=31))
    )
    state = await refiller.ensure_balance(user)
    assert (state.refilled, state.balance, state.granted) == (True, 14_000, 2_000)


async def test_no_refill_while_librechat_refill_is_pending(
    refiller: BalanceRefiller, balances: RecordingCollection, db: Any, clock: FakeClock
) -> None:
    """While LibreChat's pendingRefill marker is set, neither call nor sweep refills."""
    user = ObjectId()
    await balances.inner.insert_one(
        librechat_doc(
            user,
            0,
            lastRefill=clock() - timedelta(days=31),
            pendingRefill={"transactionId": ObjectId(), "rawAmount": 100},
        )
    )
    assert not (await refiller.ensure_balance(user)).refilled
    assert not (await refiller.refill_now(user, actor="ops", reason="r")).refilled
    with pytest.raises(InsufficientCredits):
        await refiller.spend(user, 1)
    report = await refiller.sweep(dry_run=True)
    assert (report.refilled, report.skipped["raced"]) == (0, 1)
    assert await db["transactions"].count_documents({}) == 0
