"""A small async chat backend built on balance_refill: a login hook and a message handler.

Run it with `python examples/chat_backend.py` (embedded mock; set MONGODB_URI for a server).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill.testing import FakeClock

PRICE_PER_TOKEN = 2  # credits per token of the model we pretend to call


@dataclass
class Reply:
    ok: bool
    text: str
    balance: int


class ChatBackend:
    def __init__(self, refiller: BalanceRefiller) -> None:
        self.refiller = refiller

    async def on_login(self, user_id: str) -> dict[str, Any]:
        """Login hook: refill if due, and tell the UI the balance and the next refill."""
        state = await self.refiller.ensure_balance(user_id)
        return {
            "balance": state.balance,
            "refilled": state.granted if state.refilled else 0,
            "next_refill_at": state.next_refill_at.isoformat() if state.next_refill_at else None,
        }

    async def on_message(self, user_id: str, message_id: str, prompt: str) -> Reply:
        """Message handler: charge the expected cost once (retries share message_id), then answer."""
        cost = len(prompt.split()) * PRICE_PER_TOKEN * 10
        try:
            state = await self.refiller.spend(user_id, cost, request_id=message_id)
        except InsufficientCredits as exc:
            when = exc.next_refill_at.strftime("%b %d %H:%M UTC") if exc.next_refill_at else "never"
            return Reply(
                False,
                f"Not enough credits ({exc.balance} left, {cost} needed). Next refill: {when}.",
                exc.balance,
            )
        return Reply(True, f"echo: {prompt}", state.balance)


async def main() -> None:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        from pymongo import AsyncMongoClient

        db: Any = AsyncMongoClient(uri, tz_aware=True)["balance_refill_example"]
    else:
        from mongomock_motor import AsyncMongoMockClient

        db = AsyncMongoMockClient(tz_aware=True)["example"]
    clock = FakeClock()
    refiller = BalanceRefiller(
        db["balances"],
        RefillPolicy(amount=1_000, interval="1d", start_balance=1_000),
        ledger=db["transactions"],
        clock=clock,
    )
    await refiller.ensure_indexes()
    app = ChatBackend(refiller)
    print("login:", await app.on_login("alice"))
    for i in range(8):
        reply = await app.on_message("alice", f"m{i}", "tell me a long story about credits " * 3)
        print(f"message {i}:", reply.ok, reply.balance, "" if reply.ok else reply.text)
    retry = await app.on_message("alice", "m0", "tell me a long story about credits " * 3)
    print("retry of m0 charged again?", retry.balance != reply.balance)
    clock.advance(days=1)
    print("next day login:", await app.on_login("alice"))


if __name__ == "__main__":
    asyncio.run(main())
