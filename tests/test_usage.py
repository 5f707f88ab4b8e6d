"""The simulator's event sources: LibreChat's transactions (in its shapes and odd ones),
the spend history on balance documents, CSV and JSON lines, and the synthetic generator."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from balance_refill import InvalidArgument, RefillPolicy
from balance_refill.usage import (
    HISTORY_NOTE,
    Demand,
    Login,
    Synthetic,
    Tally,
    demand_of_transaction,
    history_events,
    read_events,
    transaction_pages,
)

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
ANN = ObjectId("64f0c0ffee0000000000beef")


def spend_row(user: Any, at: Any, value: Any, kind: str = "prompt", **extra: Any) -> dict[str, Any]:
    """A spend row as LibreChat's `spendTokens` writes it."""
    return {
        "user": user,
        "conversationId": "c1",
        "tokenType": kind,
        "model": "gpt-4o",
        "context": "message",
        "rate": 2.5,
        "rawAmount": value / 2.5 if isinstance(value, int | float) else value,
        "tokenValue": value,
        "createdAt": at,
        "updatedAt": at,
        **extra,
    }


LIBRECHAT_ROWS = [
    spend_row(ANN, T0, -1_250),
    spend_row(ANN, T0, -3_127.5, "completion"),
    spend_row(ANN, T0 + timedelta(minutes=1), -10, inputTokens=-4, writeTokens=0, readTokens=0),
    # refill and grant rows are not demand
    {"user": ANN, "tokenType": "credits", "context": "autoRefill", "rawAmount": 10_000,
     "tokenValue": 10_000, "createdAt": T0 + timedelta(minutes=2)},
    {"user": ANN, "tokenType": "credits", "context": "admin", "rawAmount": 500,
     "tokenValue": 500, "createdAt": T0 + timedelta(minutes=3), "source": "balance_refill"},
]  # fmt: skip

ODD_ROWS = [
    ({**spend_row(ANN, T0, -5)} | {"tokenValue": None}, "tokenValue not a finite number"),
    ({k: v for k, v in spend_row(ANN, T0, -5).items() if k != "tokenValue"}, "tokenValue not a finite number"),
    (spend_row(ANN, T0, "-5"), "tokenValue not a finite number"),
    (spend_row(ANN, T0, float("nan")), "tokenValue not a finite number"),
    (spend_row(ANN, T0, float("-inf")), "tokenValue not a finite number"),
    (spend_row(ANN, T0, True), "tokenValue not a finite number"),
    (spend_row(ANN, T0, 12), "tokenValue not negative"),
    (spend_row(ANN, T0, 0), "tokenValue not negative"),
    (spend_row(ANN, T0, -(2**60)), "tokenValue beyond 2**53"),
    (spend_row(ANN, "2026-03-01", -5), "createdAt not a date"),
    ({k: v for k, v in spend_row(ANN, T0, -5).items() if k != "createdAt"}, "createdAt not a date"),
    (spend_row({"$gt": ""}, T0, -5), "user not an id"),
    (spend_row(None, T0, -5), "user not an id"),
    (spend_row("", T0, -5), "user not an id"),
    (spend_row(ANN, T0, -5, "Prompt"), "not a spend row"),
    ({"tokenValue": -5, "createdAt": T0, "user": ANN}, "not a spend row"),
]  # fmt: skip


def test_librechat_spend_rows_are_demands() -> None:
    """Each prompt/completion row with a negative tokenValue is one Demand of its cost
    (fractions kept); refill and grant rows are not demand."""
    tally = Tally()
    got = [demand_of_transaction(r, tally) for r in LIBRECHAT_ROWS]
    assert got == [
        Demand(ANN, T0, 1_250),
        Demand(ANN, T0, 3_127.5),
        Demand(ANN, T0 + timedelta(minutes=1), 10),
        None,
        None,
    ]
    assert (tally.read, tally.used, dict(tally.skipped)) == (5, 3, {"not a spend row": 2})


@pytest.mark.parametrize(("row", "reason"), ODD_ROWS)
def test_odd_rows_are_skipped_and_counted(row: dict[str, Any], reason: str) -> None:
    """Missing fields, strings, NaN, infinities, bools, positive or huge amounts and bad
    user ids are skipped, each counted under its reason."""
    tally = Tally()
    assert demand_of_transaction(row, tally) is None
    assert dict(tally.skipped) == {reason: 1}
    assert reason in tally.describe()


async def test_transaction_pages_read_the_window_in_order(db: Any) -> None:
    """The spend rows of [start, end] come oldest first across pages (ties at one
    createdAt split between pages too), odd rows skipped and counted."""
    rows = [
        spend_row(ANN if i % 2 else "bob", T0 + timedelta(minutes=i // 3), -(i + 1))
        for i in range(14)
    ]
    rows += [r for r, _ in ODD_ROWS[:4]] + LIBRECHAT_ROWS[3:]
    rows.append(spend_row(ANN, T0 - timedelta(days=1), -99))  # before the window
    rows.append(spend_row(ANN, T0 + timedelta(days=9), -99))  # after it
    await db["transactions"].insert_many([dict(r) for r in rows])
    tally = Tally()
    pages = [
        page
        async for page in transaction_pages(
            db["transactions"], start=T0, end=T0 + timedelta(days=1), page_size=3, tally=tally
        )
    ]
    demands = list(itertools.chain.from_iterable(pages))
    assert len(pages) > 3
    assert sorted(d.credits for d in demands) == list(range(1, 15))
    assert [d.at for d in demands] == sorted(d.at for d in demands)
    assert tally.used == 14
    assert sum(tally.skipped.values()) == 4  # the credits rows are not even read


async def test_history_spreads_each_period_over_its_days(db: Any) -> None:
    """Spend history becomes one Demand a day per period, whose totals are the periods'
    (within the window); the note says it is coarse."""
    end = T0 + timedelta(days=10)
    await db["balances"].insert_many(
        [
            {"user": ANN, "tokenCredits": 5, "lastRefill": T0, "spentSinceRefill": 1_000,
             "spendHistory": [300, 0, 700]},
            {"user": "bob", "tokenCredits": 5},  # never refilled: nothing known
            {"user": {"$ne": 1}, "lastRefill": T0, "spentSinceRefill": 5},
        ]
    )  # fmt: skip
    tally = Tally()
    policy = RefillPolicy(amount=1_000, interval="7d")
    events = list(
        await history_events(
            db["balances"], policy, start=T0 - timedelta(days=60), end=end, tally=tally
        )
    )
    assert [e.at for e in events] == sorted(e.at for e in events)
    current = [e for e in events if e.at >= T0]
    assert sum(e.credits for e in current) == pytest.approx(1_000)
    assert len(current) == 10
    assert sum(e.credits for e in events) == pytest.approx(2_000)
    assert (tally.used, dict(tally.skipped)) == (1, {"no lastRefill": 1, "user not an id": 1})
    assert "approximate" in HISTORY_NOTE


def test_csv_and_json_lines() -> None:
    """CSV with a header and JSON lines give the same events; an empty credits is a
    Login; ISO times with Z or an offset, naive (UTC) and Unix seconds all read."""
    csv_text = (
        "user,at,credits\n"
        "ann,2026-03-01T12:00:00Z,12.5\n"
        "\n"
        "64f0c0ffee0000000000beef,2026-03-01T13:00:00+01:00,\n"
        "bob,2026-03-01 12:00:01,1_000\n"
        f"bob,{T0.timestamp() + 2},7\n"
    )
    json_text = (
        '{"user": "ann", "at": "2026-03-01T12:00:00Z", "credits": 12.5}\n'
        '{"user": "64f0c0ffee0000000000beef", "at": "2026-03-01T13:00:00+01:00"}\n'
        '{"user": "bob", "at": "2026-03-01 12:00:01", "credits": 1000}\n'
        f'{{"user": "bob", "at": {T0.timestamp() + 2}, "credits": "7"}}\n'
    )
    expected = [
        Demand("ann", T0, 12.5),
        Login("64f0c0ffee0000000000beef", T0),
        Demand("bob", T0 + timedelta(seconds=1), 1_000),
        Demand("bob", T0 + timedelta(seconds=2), 7),
    ]
    assert list(read_events(io.StringIO(csv_text))) == expected
    assert list(read_events(io.StringIO(json_text))) == expected
    assert list(read_events(io.StringIO("\n\n"))) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("who,when\nann,2026-03-01,1\n", "header must name user, at and credits"),
        ("user,at,credits\nann,yesterday,1\n", "line 2: cannot read 'at'"),
        ("user,at,credits\nann,2026-03-01,NaN\n", "line 2: 'credits' must be a positive finite"),
        ("user,at,credits\nann,2026-03-01,-3\n", "'credits' must be a positive"),
        ("user,at,credits\nann,2026-03-01,ten\n", "'credits' is not a number"),
        ("user,at,credits\nann,2026-03-01\n", "2 fields, the header has 3"),
        ("user,at,credits\n,2026-03-01,1\n", "line 2: user id must be a non-empty string"),
        ('{"user": "ann", "at": "2026-03-01", "credits": 1}\n{"user": "ann"\n', "line 2: not JSON"),
        ('{"user": {"$gt": ""}, "at": "2026-03-01", "credits": 1}\n', "line 1: user id must be"),
        ('{"user": "ann", "at": true, "credits": 1}\n', "'at' must be a date"),
        ('{"user": "ann", "at": 1e300, "credits": 1}\n', "out of range"),
        ('{"user": "ann", "credits": 1}\n', "'at' is missing"),
        ('{"user": "ann", "at": "2026-03-01", "credits": 1e400}\n', "positive finite"),
        ("[1, 2]\n", "header must name"),
    ],
)
def test_bad_lines_are_errors_naming_the_line(text: str, message: str) -> None:
    """A malformed line (missing fields, strings, NaN, negative, a dict id) raises
    InvalidArgument naming the line."""
    with pytest.raises(InvalidArgument, match=message):
        list(read_events(io.StringIO(text)))


def test_synthetic_is_seeded_ordered_and_shaped() -> None:
    """The same seed gives the same trace; events are in time order within the window;
    heavy users send more; every active day starts with a Login."""
    syn = Synthetic(users=200, days=5, start=T0, heavy_share=0.2, heavy_factor=10, seed=4)
    first, again = list(syn), list(syn)
    assert first == again
    assert first != list(Synthetic(users=200, days=5, start=T0, seed=5))
    assert [e.at for e in first] == sorted(e.at for e in first)
    assert all(T0 <= e.at < syn.end for e in first)
    per_user: dict[object, int] = {}
    for e in first:
        if isinstance(e, Demand):
            per_user[e.user] = per_user.get(e.user, 0) + 1
    counts = sorted(per_user.values())
    assert counts[-len(counts) // 10] > 3 * counts[len(counts) // 2]  # a heavy tail
    seen: set[tuple[object, int]] = set()
    for e in first:
        key = (e.user, (e.at - T0).days)
        if key not in seen:
            assert isinstance(e, Login)
            seen.add(key)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("days", 0),
        ("heavy_share", 1.5),
        ("messages_per_day", True),
        ("cost_sigma", -1),
    ],
)
def test_synthetic_refuses_bad_settings(field: str, value: object) -> None:
    """Out-of-range or non-numeric settings are a clear error."""
    with pytest.raises(InvalidArgument, match=field):
        Synthetic(**{field: value})  # type: ignore[arg-type]
