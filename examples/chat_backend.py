"""A small async chat backend built on balance_refill: a login hook and a message handler.

Run it with `python examples/chat_backend.py`: without MONGODB_URI it uses an in-memory
mock (for trying it only); with MONGODB_URI it writes to that server's
`balance_refill_example` database. A web version is `examples/fastapi_app.py`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from typing import Any

from balance_refill import BalanceRefiller, InsufficientCredits, RefillPolicy
from balance_refill.testing import FakeClock

PRICE_PER_WORD = 20  # credits; a real backend prices the model's expected tokens


@dataclass(frozen=True)
class Reply:
    ok: bool
    text: str
    balance: float  # LibreChat's tokenCredits: often fractional


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
        cost = len(prompt.split()) * PRICE_PER_WORD
        try:
            state = await self.refiller.spend(user_id, cost, request_id=message_id)
        except InsufficientCredits as exc:
            when = (
                exc.next_refill_at.strftime("%Y-%m-%d %H:%M UTC") if exc.next_refill_at else "never"
            )
            return Reply(
                False,
                f"Not enough credits ({exc.balance} left, {cost} needed). Next refill: {when}.",
                exc.balance,
            )
        return Reply(True, f"echo: {prompt}", state.balance)


async def run(db: Any) -> None:
    clock = FakeClock()  # a clock we can move: "the next day" comes at once
    refiller = BalanceRefiller(
        db["balances"],
        RefillPolicy(amount=1_000, interval="1d", start_balance=1_000),
        ledger=db["transactions"],
        clock=clock,
    )
    await refiller.ensure_indexes()
    app = ChatBackend(refiller)
    alice = f"alice-{uuid.uuid4().hex[:6]}"  # a new user each run, also on a server
    prompt = "tell me a long story about credits " * 3  # 21 words: 420 credits
    balance = (await app.on_login(alice))["balance"]
    print("login: balance", balance)

    async def send(message_id: str, label: str) -> float:
        reply = await app.on_message(alice, message_id, prompt)
        print(f"{label}:", f"balance {reply.balance}" if reply.ok else reply.text)
        return reply.balance

    after_m0 = await send("m0", "message m0")
    after_retry = await send("m0", "retry of m0")
    after_m1 = await send("m1", "message m1")
    await send("m2", "message m2")
    print("retry of m0 charged again?", after_retry != after_m0)
    print("new message m1 charged?", after_m1 != after_retry)
    clock.advance(days=1)
    print("next day login:", await app.on_login(alice))


async def main() -> None:
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        # No server: an in-memory mock, for trying the example only (nothing is saved).
        from mongomock_motor import AsyncMongoMockClient

        await run(AsyncMongoMockClient(tz_aware=True)["example"])
        return
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        await run(client["balance_refill_example"])
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
