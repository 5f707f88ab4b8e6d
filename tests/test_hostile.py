"""Hostile and bad input, table-driven: every case is a clear library error and writes
nothing (the collections are snapshotted before and after)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balance_refill import (
    BalanceRefiller,
    BalanceRefillError,
    InsufficientCredits,
    InvalidUserId,
    PolicyFileError,
    RefillPolicy,
    TieredPolicy,
    UserNotFound,
)
from balance_refill.policy_file import load_policy_text
from balance_refill.testing import CallLog

PASSED: Counter[str] = Counter()
TIERS = TieredPolicy(
    tiers={
        "regular": RefillPolicy(amount=1_000, interval="30d", start_balance=100),
        "heavy": RefillPolicy(amount=5_000, interval="1d"),
    },
    default_tier="regular",
)
HUGE = "x" * 10_000_000
BAD_USER_IDS: list[Any] = [
    {"$gt": ""},
    {"$ne": None},
    {"$where": "sleep(1000)"},
    {"user": "a"},
    ["u"],
    ("u",),
    {"u"},
    None,
    True,
    False,
    1.5,
    float("nan"),
    float("inf"),
    "",
    " ",
    "\t\n",
    HUGE,
    "a\x00b",
    b"bytes",
    2**70,
    object(),
]
BAD_AMOUNTS: list[Any] = [
    -1,
    0,
    -0.0,
    -2.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    2**53 + 1,
    10**30,
    "5",
    "1e3",
    None,
    True,
    [5],
    {"$inc": 5},
]
BAD_TEXT: list[Any] = ["", "   ", None, 5, {"$ne": ""}, ["a"], "x" * 10_000]

Op = Callable[[BalanceRefiller, Any], Any]
USER_OPS: dict[str, Op] = {
    "ensure_balance": lambda r, u: r.ensure_balance(u),
    "spend": lambda r, u: r.spend(u, 1),
    "grant": lambda r, u: r.grant(u, 1, actor="a", reason="r"),
    "set_balance": lambda r, u: r.set_balance(u, 1, actor="a", reason="r"),
    "set_tier": lambda r, u: r.set_tier(u, "heavy", actor="a"),
    "set_auto_refill": lambda r, u: r.set_auto_refill(u, False, actor="a"),
    "refill_now": lambda r, u: r.refill_now(u, actor="a", reason="r"),
    "get_state": lambda r, u: r.get_state(u),
    "history": lambda r, u: r.history(u),
}
AMOUNT_OPS: dict[str, Op] = {
    "spend": lambda r, a: r.spend("victim", a),
    "grant": lambda r, a: r.grant("victim", a, actor="a", reason="r"),
    "set_balance": lambda r, a: r.set_balance("victim", a, actor="a", reason="r"),
    "ensure_balance needed": lambda r, a: r.ensure_balance("victim", a),
}
TEXT_OPS: dict[str, Op] = {
    "grant actor": lambda r, t: r.grant("victim", 1, actor=t, reason="r"),
    "grant reason": lambda r, t: r.grant("victim", 1, actor="a", reason=t),
    "set_tier tier": lambda r, t: r.set_tier("victim", t, actor="a"),
    "set_tier actor": lambda r, t: r.set_tier("victim", "heavy", actor=t),
    "refill_now actor": lambda r, t: r.refill_now("victim", actor=t, reason="r"),
    "spend request_id": lambda r, t: r.spend("victim", 1, request_id=t),
    "set_auto_refill flag": lambda r, t: r.set_auto_refill("victim", t, actor="a"),
}
BAD_LIMITS: list[Any] = [0, -1, 1001, 10**9, "5", None, 1.5, True, {"$gt": 0}]
# Zero is a fine amount for set_balance and for `needed`; -1 is a fine correction for grant.
ZERO_OK = ("set_balance", "ensure_balance needed")
CASES = (
    [
        (f"user id {i} via {op}", fn, u)
        for op, fn in USER_OPS.items()
        for i, u in enumerate(BAD_USER_IDS)
    ]
    + [
        (f"amount {a!r} via {op}", fn, a)
        for op, fn in AMOUNT_OPS.items()
        for a in BAD_AMOUNTS
        if not (type(a) in (int, float) and a == 0 and op in ZERO_OK)
        and not (op == "grant" and a in (-1, -2.5))
    ]
    + [("correction below zero via grant", AMOUNT_OPS["grant"], -(10**6))]
    + [
        (f"limit {v!r} via history", lambda r, v: r.history("victim", limit=v), v)
        for v in BAD_LIMITS
    ]
    + [
        (f"text {i} via {op}", fn, t)
        for op, fn in TEXT_OPS.items()
        for i, t in enumerate(BAD_TEXT)
        if not (op == "spend request_id" and t is None)
    ]
)
BAD_POLICIES: list[dict[str, Any]] = [
    {"amount": 5, "interval": "0s"},
    {"amount": 5, "interval": "-3d"},
    {"amount": 5, "interval": timedelta(0)},
    {"amount": 5, "interval": "3 fortnights"},
    {"amount": 5, "interval": "5y"},
    {"amount": 5, "calendar": "decade"},
    {"amount": 5, "calendar": "day", "timezone": "Mars/Olympus_Mons"},
    {"amount": 5, "calendar": "day", "timezone": "../../etc/passwd"},
    {"amount": 5, "interval": "1d", "threshold": -1},
    {"amount": 5, "interval": "1d", "start_balance": 20, "max_balance": 10},
    {"amount": 0, "interval": "1d"},
    {"amount": float("nan"), "interval": "1d"},
    {"amount": 2**60, "interval": "1d"},
    {"amount": 5, "interval": "1d", "mode": "steal"},
    {"amount": 5, "interval": "1d", "calendar": "day"},
]


@pytest.fixture
def victim(make_refiller: Callable[..., BalanceRefiller]) -> BalanceRefiller:
    return make_refiller(policy=TIERS)


async def snapshot(db: Any) -> Any:
    return [
        [d async for d in db[name].find()]
        for name in ("balances", "transactions", "balance_refill_leases")
    ]


@pytest.mark.parametrize(("name", "operation", "value"), CASES, ids=[c[0][:60] for c in CASES])
async def test_bad_input_is_refused_and_writes_nothing(
    victim: BalanceRefiller, db: Any, log: CallLog, name: str, operation: Op, value: Any
) -> None:
    await victim.ensure_balance("victim")
    before = await snapshot(db)
    log.reset()
    with pytest.raises(BalanceRefillError) as info:
        await operation(victim, value)
    assert str(info.value)
    if not isinstance(info.value, InsufficientCredits | UserNotFound):
        assert log.count == 0, name  # refused before any query was built
    assert await snapshot(db) == before
    PASSED["operations"] += 1
    if name.startswith("user id"):
        assert isinstance(info.value, InvalidUserId)
        assert log.count == 0  # never reached a query


@pytest.mark.parametrize("kwargs", BAD_POLICIES, ids=[repr(p)[:50] for p in BAD_POLICIES])
def test_bad_policies(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is "a ValueError with a message"
        RefillPolicy(**kwargs)
    PASSED["policies"] += 1


def test_case_count() -> None:
    """The README states how many bad-input cases run; keep it honest."""
    assert len(CASES) + len(BAD_POLICIES) >= 300


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "amount",
                    "interval",
                    "calendar",
                    "timezone",
                    "mode",
                    "threshold",
                    "max_balance",
                    "start_balance",
                    "tiers",
                    "default_tier",
                    "rules",
                    "balance",
                    "adaptive",
                    "enabled",
                    "refillAmount",
                    "x",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        ),
    ),
    max_leaves=20,
)


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_yaml_loader_fuzz_text(text: str) -> None:
    """Arbitrary text: a policy or a PolicyFileError, never anything else."""
    try:
        load_policy_text(text)
    except PolicyFileError as exc:
        message = str(exc)
        assert message


@given(yaml_values)
@settings(max_examples=500)
def test_yaml_loader_fuzz_structures(value: Any) -> None:
    """Arbitrary YAML structures (dumped, then loaded): a policy or a PolicyFileError."""
    import yaml

    try:
        text = yaml.safe_dump(value)
    except yaml.YAMLError:
        return
    try:
        load_policy_text(text)
    except PolicyFileError as exc:
        message = str(exc)
        assert message


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]",  # recursive alias
        "!!python/object/apply:os.system ['echo pwned']",
        "amount: !!binary aGVsbG8=\ninterval: 1d",
        "amount: 1\ninterval: 1d\n" + "x: 1\n" * 10,
        "- " * 10_000 + "1",
        "[" * 5_000,
        "amount: 10\ninterval: 30d\ncalendar: month",
        "\x00\x01",
        "balance: 5",
        "tiers: []\ndefault_tier: x",
    ],
)
def test_yaml_loader_hostile_documents(text: str) -> None:
    with pytest.raises(PolicyFileError):
        load_policy_text(text)
    PASSED["policy files"] += 1
