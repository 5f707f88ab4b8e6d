"""The standalone server's demo data: a few users over about 95 days, with the library's
refills and grants and the spend rows LibreChat writes for each message beside them (the
policy preview replays those), and their profiles in a `users` collection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from balance_refill import InsufficientCredits, RefillPolicy, TieredPolicy, TierRule
from balance_refill._store import Store

DEMO_BANNER = "Demo data: an in-memory database seeded with example users; nothing here is real and it is gone when the server stops."
DEMO_POLICY = TieredPolicy(
    tiers={
        "free": RefillPolicy(amount=10_000, interval="30d", start_balance=20_000),
        "pro": RefillPolicy(
            amount=50_000,
            interval="30d",
            mode="add",
            threshold=25_000,
            max_balance=100_000,
            start_balance=50_000,
        ),
    },
    default_tier="free",
    rules=(
        TierRule(from_tier="free", to_tier="pro", min_usage=0.8, periods=2, of_last=3),
        TierRule(from_tier="pro", to_tier="free", max_usage=0.1, periods=3, of_last=3),
    ),
)
ALICE = ObjectId("65f1c0ffee0000000000a11c")
BOB = ObjectId("65f1c0ffee0000000000b0b0")
DEMO_USERS: tuple[tuple[object, int], ...] = (
    (ALICE, 420),  # a LibreChat user id
    ("ben@example.com", 1_900),
    (42, 90),
    (BOB, 0),
)
PROFILES = (
    {"_id": ALICE, "email": "alice@example.com", "name": "Alice Martin", "username": "alice"},
    {"_id": BOB, "email": "bob@example.com", "name": "Bob Okafor", "username": "bobo"},
    {"_id": ObjectId("65f1c0ffee0000000000c0c0"), "email": "alicia@example.com",
     "name": "Alicia Keyes", "username": "alicia"},  # signed up, never chatted: no balance
)  # fmt: skip


def librechat_turn(
    user: object, when: datetime, prompt: int, completion: int
) -> list[dict[str, Any]]:
    """The two rows LibreChat's `spendTokens` writes for one message (no balanceAfter)."""
    conversation = str(ObjectId())
    return [
        {"user": user, "conversationId": conversation, "tokenType": kind, "model": "gpt-4o-mini",
         "context": "message", "rawAmount": -tokens, "rate": rate, "tokenValue": -tokens * rate,
         "createdAt": when, "updatedAt": when}
        for kind, tokens, rate in (("prompt", prompt, 0.15), ("completion", completion, 0.6))
    ]  # fmt: skip


def librechat_spend(user: object, when: datetime, cost: int) -> list[dict[str, Any]]:
    """The rows LibreChat writes for one message costing `cost` credits in all (the
    policy page's preview replays them as demand)."""
    conversation = str(ObjectId())
    prompt = cost * 3 // 10
    return [
        {"user": user, "conversationId": conversation, "tokenType": kind, "model": "gpt-4o-mini",
         "context": "message", "rawAmount": -tokens, "rate": value / tokens,
         "tokenValue": -value, "createdAt": when, "updatedAt": when}
        for kind, tokens, value in (("prompt", cost * 4, prompt),
                                    ("completion", cost, cost - prompt))
    ]  # fmt: skip


async def seed_demo(refiller_for: Any, balances: Any, ledger: Any, users: Any) -> None:
    """Fill the demo database: four users, about 95 days of spending, refills and grants."""
    now = datetime.now(UTC).replace(microsecond=0)
    clock_now = [now - timedelta(days=95)]
    sim = refiller_for(lambda: clock_now[0])
    for profile in PROFILES:
        await Store(users).try_insert(users, profile)
    for day in range(95):
        clock_now[0] = now - timedelta(days=95 - day, hours=-9)
        for i, (user, cost) in enumerate(DEMO_USERS):
            if cost == 0:  # a user who ran out: created, then set to zero by hand
                if day == 0:
                    await sim.ensure_balance(user)
                    await sim.admin.set_balance(user, 0, actor="demo-admin", reason="trial ended")
                continue
            if (day + i) % (1 + i) != 0:
                continue
            await sim.ensure_balance(user)
            for _ in range(3):
                clock_now[0] += timedelta(minutes=17)
                try:
                    await sim.spend(user, cost)
                except InsufficientCredits:
                    continue
                if user != ALICE:  # her rows come from LibreChat's own path, below
                    await Store(ledger).insert_rows(
                        ledger, librechat_spend(user, clock_now[0], cost)
                    )
        if day == 40:
            await sim.admin.grant(
                "ben@example.com", 5_000, actor="demo-admin", reason="goodwill: outage on Oct 2"
            )
            await sim.admin.set_tier(ALICE, "pro", actor="demo-admin", pinned=True)
        if day == 60:
            await sim.admin.set_auto_refill(42, False, actor="demo-admin")
        if day >= 88:  # Alice's last week, as LibreChat's own message path records it
            rows = librechat_turn(ALICE, clock_now[0] + timedelta(hours=2), 900, 400)
            store = Store(balances)
            await store.insert_rows(ledger, rows)
            spent = -sum(r["tokenValue"] for r in rows)
            await store.update_balance(
                "demo spend", {"user": ALICE}, {"$inc": {"tokenCredits": -spent}}
            )
