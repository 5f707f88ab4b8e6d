"""The flows we measure: ours, and two baselines modelled on LibreChat.

Every flow has the same interface, `await flow.login(user)` and
`await flow.message(user, message)`, and issues real calls on the collections it is given,
on documents in LibreChat's layout. The baselines follow LibreChat's balance code
(`setBalanceConfig` at login, `checkBalance`, `spendTokens` and `updateBalance` per
message; the newer flow adds reservations and a `pendingRefill` marker): every round trip
it makes, and none more, so the call counts come out of the code rather than being
assumed. Each docstring lists which step issues which call. Where LibreChat's exact query
does not matter, the model uses the cheapest query that does the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from balance_refill import BalanceRefiller

from .common import COMPLETION_CREDITS, LIBRECHAT_BALANCE, PROMPT_CREDITS

OLDEST = [("_id", 1)]  # LibreChat reads a user's oldest balance document


class Refused(Exception):
    """A baseline refused a message for lack of credits ("insufficient funds")."""


@dataclass(frozen=True)
class Message:
    """One chat turn: its id, and what the prompt and the completion cost in credits."""

    id: str
    prompt_credits: int = PROMPT_CREDITS
    completion_credits: int = COMPLETION_CREDITS
    prompt_tokens: int = 300
    completion_tokens: int = 175

    @property
    def cost(self) -> int:
        return self.prompt_credits + self.completion_credits


class Flow(Protocol):
    name: str

    async def login(self, user: Any) -> None: ...

    async def message(self, user: Any, message: Message) -> None: ...


# -- ours ------------------------------------------------------------------------------


class Ours:
    """This library: `ensure_balance` at login, one `spend(cost)` per message.

    Calls: login 1 (`find_one_and_update` upsert-read); message 1 when covered
    (`find_one_and_update` with the spend pipeline). A message that needs a refill: the
    spend (1, finds the balance short), the compare-and-swap refill that also charges and
    carries the pending ledger row (1), the ledger insert (1), clearing the marker (1) = 4.
    """

    name = "ours"

    def __init__(self, refiller: BalanceRefiller) -> None:
        self.refiller = refiller

    async def login(self, user: Any) -> None:
        await self.refiller.ensure_balance(user)

    async def message(self, user: Any, message: Message) -> None:
        await self.refiller.spend(user, message.cost, request_id=message.id)


# -- LibreChat: shared pieces ----------------------------------------------------------


def librechat_refill_due(doc: dict[str, Any], now: datetime) -> bool:
    """Auto refill on for the user, refillAmount > 0 and lastRefill + interval <= now (a
    missing lastRefill counts as due). Interval units up to weeks; the benchmarks use days."""
    if doc.get("autoRefillEnabled") is not True or int(doc.get("refillAmount", 0)) <= 0:
        return False
    last = doc.get("lastRefill")
    unit = str(doc.get("refillIntervalUnit", "days"))
    interval = timedelta(**{unit: int(doc.get("refillIntervalValue", 30))})
    return not isinstance(last, datetime) or last + interval <= now


class _LibreChatBase:
    """What both LibreChat flows share: the login hook and the transaction rows."""

    name = "librechat"
    max_attempts = 10  # LibreChat's read / conditional-write loops give up after 10

    def __init__(self, balances: Any, transactions: Any, clock: Callable[[], datetime]) -> None:
        self.balances = balances
        self.transactions = transactions
        self.clock = clock
        self.config = LIBRECHAT_BALANCE

    async def login(self, user: Any) -> None:
        """LibreChat's login hook (`setBalanceConfig`).

        Calls: 1 `find_one` of the user's balance; plus 1 `find_one_and_update` (upsert)
        only when something must be copied in: a new user's start balance, config refill
        settings that differ from the document's, or a missing `lastRefill`. For an
        up-to-date user: 1 call.
        """
        now = self.clock()
        doc = await self.balances.find_one({"user": user}, sort=OLDEST)  # call: read
        fields: dict[str, Any] = {}
        if doc is None:
            fields["tokenCredits"] = self.config["startBalance"]
        if self.config["autoRefillEnabled"]:
            wanted = {
                "autoRefillEnabled": True,
                "refillIntervalValue": self.config["refillIntervalValue"],
                "refillIntervalUnit": self.config["refillIntervalUnit"],
                "refillAmount": self.config["refillAmount"],
            }
            fields.update({k: v for k, v in wanted.items() if doc is None or doc.get(k) != v})
            if doc is None or not isinstance(doc.get("lastRefill"), datetime):
                fields["lastRefill"] = now
        if not fields:
            return
        update: dict[str, Any] = {"$set": fields}
        if doc is None:
            update["$setOnInsert"] = {"_id": user}  # newer LibreChat: _id = user id
        await self.balances.find_one_and_update(  # call: copy the settings in
            {"user": user}, update, upsert=True, sort=OLDEST, return_document=ReturnDocument.AFTER
        )

    def _usage_row(self, user: Any, kind: str, message: Message, now: datetime) -> dict[str, Any]:
        credits = message.prompt_credits if kind == "prompt" else message.completion_credits
        tokens = message.prompt_tokens if kind == "prompt" else message.completion_tokens
        return {
            "user": user,
            "conversationId": "bench",
            "messageId": message.id,
            "tokenType": kind,
            "model": "bench-model",
            "context": "message",
            "rate": credits / tokens,
            "rawAmount": -tokens,
            "tokenValue": -credits,
            "inputTokens" if kind == "prompt" else "completionTokens": tokens,
            "createdAt": now,
            "updatedAt": now,
        }

    def _refill_row(self, user: Any, amount: int, now: datetime, **extra: Any) -> dict[str, Any]:
        return {
            **extra,
            "user": user,
            "tokenType": "credits",
            "context": "autoRefill",
            "rawAmount": amount,
            "tokenValue": amount,
            "rate": 1,
            "createdAt": now,
            "updatedAt": now,
        }

    async def _update_balance(
        self, user: Any, increment: int, set_values: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """LibreChat's `updateBalance`: an optimistic read / conditional-write loop.

        Calls per attempt: 1 `find_one` (read the current credits) + 1
        `find_one_and_update` whose filter requires the credits just read. The new value
        is floored at 0. Without contention: 2 calls.
        """
        for _ in range(self.max_attempts):
            doc = await self.balances.find_one({"user": user}, sort=OLDEST)  # call: read
            current = doc.get("tokenCredits", 0) if doc else 0
            new = max(0, current + increment)
            after = await self.balances.find_one_and_update(  # call: conditional write
                {"user": user, "tokenCredits": current},
                {"$set": {"tokenCredits": new, **(set_values or {})}},
                sort=OLDEST,
                return_document=ReturnDocument.AFTER,
            )
            if after is not None:
                return dict(after)
        raise RuntimeError(f"updateBalance for {user!r} lost {self.max_attempts} races")

    async def _spend_tokens(self, user: Any, kind: str, message: Message) -> None:
        """LibreChat's `spendTokens` for one token type: the transaction row, then the
        balance. Calls: 1 `insert_one` + `_update_balance` (2) = 3."""
        now = self.clock()
        await self.transactions.insert_one(self._usage_row(user, kind, message, now))  # call
        credits = message.prompt_credits if kind == "prompt" else message.completion_credits
        await self._update_balance(user, -credits)  # 2 calls


# -- LibreChat, classic read-then-write flow -------------------------------------------


class LibreChatClassic(_LibreChatBase):
    """LibreChat's classic flow (until September 2026): the refill is a read followed by a
    separate write, so parallel requests can each add it.

    Per message, without a refill (7 calls):
      1. `checkBalance`: `find_one` of the balance (1). Covered when
         `tokenCredits - promptCost > 0`.
      2. after the completion, `spendTokens` for the prompt: `insert_one` of the
         transaction row (1), `updateBalance` read (1) + conditional write (1);
      3. the same for the completion (3).
    With a refill (10 calls): when step 1 finds the prompt not covered and the period
    elapsed (`lastRefill + interval <= now`, auto refill on, `refillAmount > 0`), it
    writes the autoRefill transaction (`insert_one`, 1) then `updateBalance` with
    `+refillAmount` and `lastRefill = now` (read + write, 2) before the spend.
    The due check rests on step 1's read, not on the write's filter: that is the
    classic double-refill race.
    """

    name = "LibreChat classic"

    async def message(self, user: Any, message: Message) -> None:
        now = self.clock()
        doc = await self.balances.find_one({"user": user}, sort=OLDEST)  # call: checkBalance
        if doc is None:
            raise Refused(f"{user!r} has no balance")
        credits = doc.get("tokenCredits", 0)
        if credits - message.prompt_credits <= 0:
            if not librechat_refill_due(doc, now):
                raise Refused(f"{user!r}: {credits} credits, {message.prompt_credits} needed")
            amount = int(doc["refillAmount"])
            await self.transactions.insert_one(self._refill_row(user, amount, now))  # call
            after = await self._update_balance(user, amount, {"lastRefill": now})  # 2 calls
            if after.get("tokenCredits", 0) - message.prompt_credits <= 0:
                raise Refused(f"{user!r}: still short after a refill")
        # ... the model answers here ...
        await self._spend_tokens(user, "prompt", message)  # 3 calls
        await self._spend_tokens(user, "completion", message)  # 3 calls


# -- LibreChat, current reservation flow -----------------------------------------------


class LibreChatReservations(_LibreChatBase):
    """LibreChat's current flow: a read / conditional-write loop (at most 10 attempts),
    a reservation of each request's cost, and a `pendingRefill` marker kept until the
    refill's ledger row, written under a pre-chosen id, is saved.

    Per message, without a refill (9 calls):
      1. reserve: `find_one` of the balance (1), then a conditional `find_one_and_update`
         that requires the credits and reserved credits just read and adds the prompt's
         cost to `reservedCredits` and `reservations` (1);
      2. after the completion, `spendTokens` for the prompt: `insert_one` of the
         transaction row (1) + `updateBalance` read and conditional write (2);
      3. the same for the completion (3);
      4. release the reservation: `update_one` pulling it and decrementing
         `reservedCredits` (1).
    With a refill (13 calls): when step 1's read finds the prompt not covered by the
    unreserved credits and the period elapsed, it adds, before reserving:
      a. the compare-and-swap refill: `find_one_and_update` requiring the read
         `tokenCredits`, `lastRefill` and no marker, that adds `refillAmount`, sets
         `lastRefill` and the `pendingRefill` marker with the row's pre-chosen id (1);
      b. `insert_one` of the autoRefill row under that id (1);
      c. `update_one` clearing the marker (1);
      d. the loop's next read of the balance (1).
    """

    name = "LibreChat reservations"

    async def _finish_refill(self, doc_id: Any, user: Any, marker: dict[str, Any]) -> None:
        """Write the pending refill row (its id is fixed) and clear the marker: 2 calls."""
        row = self._refill_row(user, int(marker["amount"]), marker["createdAt"])
        row["_id"] = marker["transactionId"]
        with contextlib.suppress(DuplicateKeyError):  # fixed id: already written before
            await self.transactions.insert_one(row)  # call: the ledger row
        await self.balances.update_one(  # call: clear the marker
            {"_id": doc_id, "user": user, "pendingRefill.transactionId": marker["transactionId"]},
            {"$unset": {"pendingRefill": ""}},
        )

    async def _reserve(self, user: Any, message: Message) -> tuple[Any, int]:
        now = self.clock()
        estimate = message.prompt_credits
        refilled = False
        for _ in range(self.max_attempts):
            doc = await self.balances.find_one({"user": user}, sort=OLDEST)  # call: read
            if doc is None:
                raise Refused(f"{user!r} has no balance")
            marker = doc.get("pendingRefill")
            if isinstance(marker, dict):  # a crashed refill: finish it first (recovery only)
                await self._finish_refill(doc["_id"], user, marker)
                continue
            credits = doc.get("tokenCredits", 0)
            reserved = doc.get("reservedCredits")
            if credits - (reserved or 0) - estimate <= 0:
                if refilled or not librechat_refill_due(doc, now):
                    raise Refused(f"{user!r}: {credits} credits, {estimate} needed")
                amount = int(doc["refillAmount"])
                marker = {"transactionId": ObjectId(), "amount": amount, "createdAt": now}
                won = await self.balances.find_one_and_update(  # call: CAS refill + marker
                    {
                        "_id": doc["_id"],
                        "user": user,
                        "tokenCredits": credits,
                        "lastRefill": doc.get("lastRefill"),
                        "pendingRefill": None,
                    },
                    {
                        "$set": {
                            "tokenCredits": credits + amount,
                            "lastRefill": now,
                            "pendingRefill": marker,
                        }
                    },
                    return_document=ReturnDocument.AFTER,
                )
                if won is not None:
                    refilled = True
                    await self._finish_refill(doc["_id"], user, marker)  # 2 calls
                continue  # read again
            held = await self.balances.find_one_and_update(  # call: CAS reservation
                {
                    "_id": doc["_id"],
                    "user": user,
                    "tokenCredits": credits,
                    "reservedCredits": reserved,
                },
                {
                    "$inc": {"reservedCredits": estimate},
                    "$push": {"reservations": {"id": message.id, "amount": estimate, "at": now}},
                },
                return_document=ReturnDocument.AFTER,
            )
            if held is not None:
                return doc["_id"], estimate
        raise RuntimeError(f"reservation for {user!r} lost {self.max_attempts} races")

    async def message(self, user: Any, message: Message) -> None:
        doc_id, estimate = await self._reserve(user, message)  # 2 calls (6 with a refill)
        # ... the model answers here ...
        await self._spend_tokens(user, "prompt", message)  # 3 calls
        await self._spend_tokens(user, "completion", message)  # 3 calls
        await self.balances.update_one(  # call: release the reservation
            {"_id": doc_id, "user": user, "reservations.id": message.id},
            {
                "$inc": {"reservedCredits": -estimate},
                "$pull": {"reservations": {"id": message.id}},
            },
        )
