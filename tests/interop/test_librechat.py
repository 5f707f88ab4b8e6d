"""This library and LibreChat's own balance code (`@librechat/data-schemas` 0.0.71, run in
Node by tests/interop/librechat/bridge.mjs) on one database of a wire server.

LibreChat's numbers are IEEE doubles, as are Python's floats, so every balance LibreChat
leaves is predicted exactly here (`after_turn`) and compared with `==`, never rounded.
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
    InsufficientCredits,
    RefillPolicy,
)
from balance_refill.periods import as_utc
from balance_refill.testing import FakeClock
from tests.interop.conftest import ON_SERVER, SKIP_REASON, LibreChat

if not ON_SERVER:
    pytest.skip(SKIP_REASON, allow_module_level=True)

MakeLibrary = Callable[..., BalanceRefiller]

LIBRARY_CONTEXTS = {
    "autoRefill",
    "refillReset",
    "admin",
    "setBalance",
    "setTier",
    "setAutoRefill",
    "refillNow",
}


# -- LibreChat's side ----------------------------------------------------------------------


def turn(
    user: ObjectId,
    prompt_tokens: int,
    prompt_rate: float,
    completion_tokens: int,
    completion_rate: float,
) -> dict[str, Any]:
    """One LibreChat chat turn: reserveBalance, spendTokens at these rates, release."""
    return {
        "op": "reserveAndSpend",
        "user": user,
        "promptTokens": prompt_tokens,
        "prompt": prompt_rate,
        "completionTokens": completion_tokens,
        "completion": completion_rate,
    }


def after_turn(
    balance: float,
    prompt_tokens: int,
    prompt_rate: float,
    completion_tokens: int,
    completion_rate: float,
) -> float:
    """The balance LibreChat leaves after `turn`: two rows, each applied by updateBalance
    as max(0, credits + rawAmount * rate), in doubles exactly as JavaScript computes them."""
    balance = max(0, balance + -prompt_tokens * prompt_rate)
    return max(0, balance + -completion_tokens * completion_rate)


def new_user(email: str, start: float, **balance: Any) -> dict[str, Any]:
    """LibreChat's createUser with `balance:` settings as in librechat.yaml."""
    return {"op": "createUser", "email": email, "balance": {"startBalance": start, **balance}}


# -- the database as stored ----------------------------------------------------------------


async def docs_of(db: Any, user: ObjectId) -> list[dict[str, Any]]:
    """Every balance document of `user`, whether `user` is stored as an ObjectId or as its
    hex string (a string copy would be a second, invisible balance for LibreChat)."""
    cursor = db["balances"].find({"user": {"$in": [user, str(user)]}}).sort("_id", 1)
    return [doc async for doc in cursor]


async def rows_of(db: Any, user: ObjectId) -> list[dict[str, Any]]:
    cursor = db["transactions"].find({"user": {"$in": [user, str(user)]}}).sort("_id", 1)
    return [doc async for doc in cursor]


def contexts(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(str(row.get("context")) for row in rows)


# -- 1. shared users ------------------------------------------------------------------------


async def test_shared_users_keep_one_document_and_every_fraction(
    librechat: LibreChat, make_library: MakeLibrary, db: Any, clock: FakeClock
) -> None:
    """LibreChat and the library charge, grant, set, refill and sweep the same users: one document each, exact fractions, both ledgers."""
    refiller = make_library(
        RefillPolicy(amount=10_000, interval="30d", mode="add", start_balance=20_000)
    )
    await refiller.ensure_indexes()
    ada_made, bob_made = await librechat.run(
        new_user("ada@example.com", 20_000), new_user("bob@example.com", 5_000)
    )
    ada, bob = ada_made["user"], bob_made["user"]
    assert isinstance(ada, ObjectId)
    assert ada_made["doc"]["_id"] == ada  # newer LibreChat keys the document by the user id

    # LibreChat charges both, with fractional multipliers.
    ada_turn, bob_turn = await librechat.run(
        turn(ada, 1001, 0.15, 301, 2.5), turn(bob, 1001, 0.15, 301, 2.5)
    )
    ada_credits = after_turn(20_000, 1001, 0.15, 301, 2.5)
    bob_credits = after_turn(5_000, 1001, 0.15, 301, 2.5)
    assert ada_credits != int(ada_credits)  # the test is about fractions
    assert (ada_turn["reserved"], ada_turn["tokenCredits"]) == (True, ada_credits)
    assert (bob_turn["reserved"], bob_turn["tokenCredits"]) == (True, bob_credits)

    # The library, given the id as a host app has it (a hex string), finds the same document.
    state = await refiller.ensure_balance(str(ada))
    assert (state.user_id, state.balance, state.refilled) == (ada, ada_credits, False)
    state = await refiller.spend(str(ada), 12.25, request_id="py-1")
    ada_credits -= 12.25
    library_spent = 12.25
    assert state.balance == ada_credits
    state = await refiller.grant(str(ada), 100.5, actor="ops", reason="goodwill")
    ada_credits += 100.5
    assert state.balance == ada_credits

    # LibreChat charges what the library left, then the library sets and refills it.
    (again,) = await librechat.run(turn(ada, 333, 0.15, 77, 2.5))
    ada_credits = after_turn(ada_credits, 333, 0.15, 77, 2.5)
    assert again["tokenCredits"] == ada_credits
    state = await refiller.set_balance(ada, 1234.5, actor="ops", reason="correction")
    assert state.balance == 1234.5
    state = await refiller.refill_now(ada, actor="ops", reason="test")
    assert (state.refilled, state.granted, state.balance) == (True, 10_000, 11_234.5)
    ada_credits = 11_234.5

    # A month later the sweep refills Bob (LibreChat's user, under the threshold), not Ada.
    clock.advance(days=31)
    report = await refiller.sweep()
    assert (report.refilled, report.errors) == (1, 0)
    bob_credits += 10_000

    ada_seen, bob_seen, ada_rows, bob_rows = await librechat.run(
        {"op": "findBalance", "user": ada},
        {"op": "findBalance", "user": bob},
        {"op": "listTransactions", "user": ada},
        {"op": "listTransactions", "user": bob},
    )
    for user, seen, credits in ((ada, ada_seen, ada_credits), (bob, bob_seen, bob_credits)):
        assert seen["count"] == 1
        assert seen["doc"]["_id"] == user
        assert seen["doc"]["tokenCredits"] == credits
        assert [d["_id"] for d in await docs_of(db, user)] == [user]
        assert (await refiller.get_state(str(user))).balance == credits

    # Both sides' rows, under the ObjectId user, seen by LibreChat and by the library.
    assert contexts(ada_rows) == sorted(["message"] * 4 + ["admin", "setBalance", "refillNow"])
    assert contexts(bob_rows) == sorted(["message"] * 2 + ["autoRefill"])
    assert len(await refiller.history(str(ada))) == len(ada_rows)
    assert len(await refiller.history(bob)) == len(bob_rows)
    # The ledger accounts for every credit (the library's own spends write no row).
    assert 20_000 + sum(r["tokenValue"] for r in ada_rows) - library_spent == pytest.approx(
        ada_credits, abs=1e-9
    )
    assert 5_000 + sum(r["tokenValue"] for r in bob_rows) == pytest.approx(bob_credits, abs=1e-9)


# -- 2. one owner of refills ---------------------------------------------------------------


async def test_librechat_leaves_a_due_library_document_alone_and_the_sweep_refills_once(
    librechat: LibreChat, make_library: MakeLibrary, db: Any, clock: FakeClock
) -> None:
    """LibreChat's reserveBalance does not refill a due library-managed document; the sweep refills it once; LibreChat spends it."""
    now = clock()
    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=1_000))
    await refiller.ensure_indexes()
    # Control: the same situation in a document LibreChat owns, which LibreChat refills.
    (control_made,) = await librechat.run(
        new_user(
            "control@example.com",
            1_000,
            autoRefillEnabled=True,
            refillIntervalValue=30,
            refillIntervalUnit="days",
            refillAmount=10_000,
        )
    )
    control = control_made["user"]
    await db["balances"].update_one(
        {"_id": control}, {"$set": {"lastRefill": now - timedelta(days=40)}}
    )
    # The library's user, first seen 40 days ago with 1,000 credits.
    managed = ObjectId()
    clock.set(now - timedelta(days=40))
    await refiller.ensure_balance(str(managed))
    clock.set(now)
    (before,) = await docs_of(db, managed)
    assert before["autoRefillEnabled"] is False
    # LibreChat's own refill rule would fire but for the switch: amount > 0, interval passed.
    mirrored = ("refillAmount", "refillIntervalValue", "refillIntervalUnit")
    assert [before[field] for field in mirrored] == [10_000, 30, "days"]

    control_hold, managed_hold, managed_rows, _ = await librechat.run(
        {"op": "reserveBalance", "user": control, "amount": 5_000, "reservationId": "c1"},
        {"op": "reserveBalance", "user": managed, "amount": 5_000, "reservationId": "m1"},
        {"op": "listTransactions", "user": managed},
        {
            "op": "releaseBalanceReservation",
            "user": control,
            "reservationId": "c1",
            "amount": 5_000,
        },
    )
    assert control_hold["admission"]["reserved"] is True
    assert control_hold["doc"]["tokenCredits"] == 11_000  # LibreChat refilled its own user
    assert managed_hold["admission"] == {"reserved": False, "balance": 1_000}
    assert managed_hold["doc"]["tokenCredits"] == 1_000
    assert managed_hold["doc"]["lastRefill"] == before["lastRefill"]
    assert managed_rows == []

    report = await refiller.sweep()
    assert (report.refilled, report.errors) == (1, 0)
    (after,) = await docs_of(db, managed)
    assert (after["tokenCredits"], after["lastRefill"], after["autoRefillEnabled"]) == (
        10_000,  # the policy's top_up, not LibreChat's add (which would give 11,000)
        as_utc(clock()),  # what MongoDB stores: milliseconds
        False,
    )
    assert (await refiller.sweep()).refilled == 0
    assert (await refiller.ensure_balance(managed)).refilled is False

    spent, seen, rows = await librechat.run(
        turn(managed, 2_000, 1.5, 1_000, 2.25),
        {"op": "findBalance", "user": managed},
        {"op": "listTransactions", "user": managed},
    )
    assert spent["reserved"] is True
    assert spent["tokenCredits"] == after_turn(10_000, 2_000, 1.5, 1_000, 2.25) == 4_750
    assert (seen["count"], seen["doc"]["tokenCredits"]) == (1, 4_750)
    assert contexts(rows) == ["autoRefill", "message", "message"]
    (refill_row,) = [r for r in rows if r["context"] == "autoRefill"]
    assert (refill_row["rawAmount"], refill_row.get("source")) == (9_000, "balance_refill")


async def test_credits_librechat_reserved_are_not_spendable_by_the_library(
    librechat: LibreChat, make_library: MakeLibrary
) -> None:
    """Credits held by a LibreChat reservation are unavailable to the library's spend until LibreChat releases them."""
    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=10_000))
    user = ObjectId()
    await refiller.ensure_balance(user)
    (hold,) = await librechat.run(
        {"op": "reserveBalance", "user": user, "amount": 9_000, "reservationId": "r1"}
    )
    assert hold["admission"] == {"reserved": True, "balance": 10_000}
    assert hold["doc"]["reservedCredits"] == 9_000

    with pytest.raises(InsufficientCredits):
        await refiller.spend(user, 2_000.5)
    assert (await refiller.get_state(user)).balance == 10_000

    await librechat.one("releaseBalanceReservation", user=user, reservationId="r1", amount=9_000)
    assert (await refiller.spend(user, 2_000.5)).balance == 7_999.5


async def test_no_library_refill_while_librechat_settles_its_own(
    librechat: LibreChat, make_library: MakeLibrary, db: Any, clock: FakeClock
) -> None:
    """The library does not refill while LibreChat's pendingRefill marker is set; after LibreChat settles it, the library refills once."""
    now = clock()
    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=0))
    await librechat.one("ping")  # LibreChat creates its collections and indexes
    user, marker = ObjectId(), ObjectId()
    # A refill LibreChat applied but whose ledger row it has not written yet (its
    # `applyAutoRefill` sets the marker in the same write as the credits).
    await db["balances"].insert_one(
        {
            "_id": user,
            "user": user,
            "tokenCredits": 500.5,
            "autoRefillEnabled": False,
            "refillAmount": 0,
            "refillIntervalValue": 30,
            "refillIntervalUnit": "days",
            "lastRefill": now - timedelta(days=40),
            "pendingRefill": {"transactionId": marker, "rawAmount": 250},
        }
    )
    state = await refiller.ensure_balance(user)
    assert (state.refilled, state.balance) == (False, 500.5)
    assert (await refiller.sweep()).refilled == 0
    (doc,) = await docs_of(db, user)
    assert doc["pendingRefill"] == {"transactionId": marker, "rawAmount": 250}

    # LibreChat's next admission writes its row under the marker's id and clears it.
    hold, rows = await librechat.run(
        {"op": "reserveBalance", "user": user, "amount": 1, "reservationId": "r1"},
        {"op": "listTransactions", "user": user},
    )
    assert "pendingRefill" not in hold["doc"]
    assert [(r["_id"], r["context"], r["rawAmount"]) for r in rows] == [(marker, "autoRefill", 250)]
    await librechat.one("releaseBalanceReservation", user=user, reservationId="r1", amount=1)

    state = await refiller.ensure_balance(user)
    assert (state.refilled, state.balance) == (True, 10_000)
    assert contexts(await rows_of(db, user)) == ["autoRefill", "autoRefill"]


# -- 3. taking over a database as LibreChat leaves it --------------------------------------


async def test_takeover_of_a_librechat_database_loses_no_credits(
    librechat: LibreChat,
    make_library: MakeLibrary,
    db: Any,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ensure_indexes and the first writes take over LibreChat's documents (old _ids, no lastRefill, duplicates, autoRefillEnabled on) without losing credits."""
    now = clock()
    await librechat.one("ping")  # a live LibreChat: its collections and indexes exist
    recent = now - timedelta(days=3)
    old_style, no_refill, duplicated, synced = (ObjectId() for _ in range(4))
    dup_oldest, dup_newer = ObjectId(), ObjectId()
    librechat_fields = {"refillIntervalValue": 30, "refillIntervalUnit": "days", "__v": 0}
    await db["balances"].insert_many(
        [
            # Older LibreChat: its own _id, user as an ObjectId, refill off.
            {"_id": ObjectId(), "user": old_style, "tokenCredits": 1_234.5,
             "autoRefillEnabled": False, "refillAmount": 0, "lastRefill": recent,
             **librechat_fields},
            # Early LibreChat: no lastRefill at all.
            {"_id": no_refill, "user": no_refill, "tokenCredits": 50.25, "__v": 0},
            # Two documents for one user: LibreChat uses the oldest.
            {"_id": dup_oldest, "user": duplicated, "tokenCredits": 300.5,
             "autoRefillEnabled": False, "lastRefill": recent, **librechat_fields},
            {"_id": dup_newer, "user": duplicated, "tokenCredits": 7_000,
             "autoRefillEnabled": False, "lastRefill": recent, **librechat_fields},
            # Login sync with balance.autoRefillEnabled: true in librechat.yaml.
            {"_id": synced, "user": synced, "tokenCredits": 8_000.5, "autoRefillEnabled": True,
             "refillAmount": 10_000, "lastRefill": recent, **librechat_fields},
        ]
    )  # fmt: skip
    total_before = 1_234.5 + 50.25 + 300.5 + 7_000 + 8_000.5

    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=20_000))
    report = await refiller.ensure_indexes()  # reports, never raises after changing things
    assert report.duplicates == {duplicated: 2}
    assert {"user_1__id_1", "lastRefill_1__id_1"} <= set(await db["balances"].index_information())

    with caplog.at_level(logging.WARNING, logger="balance_refill"):
        states = {
            user: await refiller.ensure_balance(str(user))
            for user in (old_style, no_refill, duplicated, synced)
        }
    switched = [r for r in caplog.records if "autoRefillEnabled" in r.getMessage()]
    assert len(switched) == 1
    assert str(synced) in switched[0].getMessage()
    spent = await refiller.spend(duplicated, 100.25)

    assert states[old_style].balance == 1_234.5
    assert (states[no_refill].refilled, states[no_refill].granted) == (True, 9_949.75)
    assert states[no_refill].balance == 10_000
    assert spent.balance == 200.25
    assert states[synced].balance == 8_000.5

    seen = await librechat.run(
        *({"op": "findBalance", "user": u} for u in (old_style, no_refill, duplicated, synced))
    )
    by_user = dict(zip((old_style, no_refill, duplicated, synced), seen, strict=True))
    assert by_user[old_style]["doc"]["tokenCredits"] == 1_234.5
    assert by_user[no_refill]["doc"]["tokenCredits"] == 10_000
    assert (by_user[duplicated]["doc"]["_id"], by_user[duplicated]["count"]) == (dup_oldest, 2)
    assert by_user[duplicated]["doc"]["tokenCredits"] == 200.25
    assert by_user[synced]["doc"]["tokenCredits"] == 8_000.5
    assert by_user[synced]["doc"]["autoRefillEnabled"] is False
    for user in (old_style, no_refill, synced):
        assert by_user[user]["count"] == 1

    # Nothing created, nothing lost: every credit is the old ones, plus the one refill,
    # minus the one spend; the newer duplicate is untouched.
    docs = [doc async for doc in db["balances"].find({})]
    assert len(docs) == 5
    assert (await db["balances"].find_one({"_id": dup_newer}))["tokenCredits"] == 7_000
    total_after = sum(doc["tokenCredits"] for doc in docs)
    assert total_after == pytest.approx(total_before + 9_949.75 - 100.25, abs=1e-9)
    (row,) = [row async for row in db["transactions"].find({})]
    assert (row["user"], row["context"], row["rawAmount"]) == (no_refill, "autoRefill", 9_949.75)


async def test_takeover_adopts_a_balance_stored_under_a_hex_string_user(
    librechat: LibreChat, make_library: MakeLibrary, db: Any, clock: FakeClock
) -> None:
    """A balance stored under the hex string of a user id is the user's balance after the takeover, for both programs."""
    now = clock()
    await librechat.one("ping")
    user = ObjectId()
    # As an earlier version of this library (or a hand-written script) stored it.
    await db["balances"].insert_one(
        {
            "_id": str(user),
            "user": str(user),
            "tokenCredits": 4_321.5,
            "autoRefillEnabled": True,
            "refillAmount": 10_000,
            "refillIntervalValue": 30,
            "refillIntervalUnit": "days",
            "lastRefill": now - timedelta(days=3),
        }
    )
    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=20_000))
    await refiller.ensure_indexes()
    state = await refiller.ensure_balance(str(user))
    assert (state.user_id, state.balance, state.refilled) == (user, 4_321.5, False)
    (seen,) = await librechat.run({"op": "findBalance", "user": user})
    assert (seen["count"], seen["doc"]["tokenCredits"]) == (1, 4_321.5)
    assert len(await docs_of(db, user)) == 1


# -- 4. documents LibreChat understands ----------------------------------------------------


async def test_every_document_either_side_wrote_validates_against_librechat_schemas(
    librechat: LibreChat, make_library: MakeLibrary, db: Any, clock: FakeClock
) -> None:
    """Balances and ledger rows written by both programs validate against LibreChat's balanceSchema and transactionSchema, with the stored BSON types."""
    now = clock()
    interval = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=8_000))
    # The classic monthly reset: every balance back to 5,000, lowering ones above it too.
    monthly = make_library(
        RefillPolicy(amount=5_000, calendar="month", mode="reset", threshold=10**9)
    )
    await interval.ensure_indexes()
    (made,) = await librechat.run(
        new_user(
            "lc@example.com",
            20_000,
            autoRefillEnabled=True,
            refillIntervalValue=1,
            refillIntervalUnit="months",
            refillAmount=5_000,
        )
    )
    lc_user = made["user"]
    by_hex, by_oid, by_spend = str(ObjectId()), ObjectId(), ObjectId()

    clock.set(now - timedelta(days=40))
    await interval.ensure_balance(by_hex)
    await interval.ensure_balance(by_oid)
    await interval.spend(by_spend, 1_500.75, request_id="first")  # first seen by a spend
    clock.set(now)
    await interval.ensure_balance(by_hex)  # due: 8,000 -> 10,000 (autoRefill)
    await interval.grant(by_oid, 0.5, actor="ops", reason="rounding")
    await interval.set_balance(by_oid, 8_000.25, actor="ops", reason="correction")
    await interval.refill_now(by_oid, actor="ops", reason="support")
    await interval.set_auto_refill(by_spend, False, actor="ops")
    await interval.spend(lc_user, 99.5)
    await interval.grant(str(lc_user), 1_000, actor="ops", reason="promo")
    # The monthly reset lowers LibreChat's user from 20,900.5 to 5,000 (a refillReset row).
    await db["balances"].update_one(
        {"user": lc_user}, {"$set": {"lastRefill": now - timedelta(days=40)}}
    )
    lowered = await monthly.ensure_balance(lc_user)
    assert (lowered.refilled, lowered.granted, lowered.balance) == (True, -15_900.5, 5_000)

    await librechat.run(
        turn(lc_user, 100, 0.15, 10, 2.5),
        turn(ObjectId(by_hex), 1_000, 0.15, 100, 2.5),
        {"op": "updateBalance", "user": by_oid, "incrementValue": -0.25},
        {
            "op": "createTransaction",
            "user": by_spend,
            "tokenType": "credits",
            "context": "admin",
            "rawAmount": 10.5,
        },
    )
    report = await librechat.one("validateAll")
    assert report["balances"]["invalid"] == []
    assert report["transactions"]["invalid"] == []
    assert report["balances"]["count"] == 4

    rows = [row async for row in db["transactions"].find({"source": "balance_refill"})]
    assert {row["context"] for row in rows} == {
        "autoRefill",
        "refillReset",
        "admin",
        "setBalance",
        "refillNow",
        "setAutoRefill",
    }
    for row in rows:
        assert row["context"] in LIBRARY_CONTEXTS
        assert (row["tokenType"], row["rate"]) == ("credits", 1)
        assert row["tokenValue"] == row["rawAmount"]
        assert isinstance(row["user"], ObjectId)


async def test_mongoose_findone_sees_what_the_library_wrote(
    librechat: LibreChat, make_library: MakeLibrary, db: Any
) -> None:
    """Mongoose's Balance.findOne({user}) finds each document the library created or changed, with the library's exact numbers."""
    refiller = make_library(RefillPolicy(amount=10_000, interval="30d", start_balance=20_000))
    hex_user, oid_user = ObjectId(), ObjectId()
    a = await refiller.ensure_balance(str(hex_user))
    b = await refiller.spend(oid_user, 0.125)
    c = await refiller.set_balance(str(hex_user), 1_234.5, actor="ops", reason="check")
    assert (a.user_id, b.user_id, c.user_id) == (hex_user, oid_user, hex_user)

    seen_hex, seen_oid, seen_by_string = await librechat.run(
        {"op": "findBalance", "user": hex_user},
        {"op": "findBalance", "user": oid_user},
        {"op": "findBalance", "user": str(oid_user)},  # Mongoose casts the hex string
    )
    assert seen_hex["mongooseFindOne"]["tokenCredits"] == 1_234.5
    assert seen_oid["mongooseFindOne"]["tokenCredits"] == 19_999.875
    assert seen_by_string["mongooseFindOne"]["_id"] == oid_user
    for seen, user in ((seen_hex, hex_user), (seen_oid, oid_user)):
        assert seen["count"] == 1
        assert seen["mongooseFindOne"]["user"] == user
        assert seen["mongooseFindOne"]["autoRefillEnabled"] is False
        assert (await refiller.get_state(user)).balance == seen["doc"]["tokenCredits"]
