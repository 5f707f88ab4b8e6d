"""Refill policies: frozen pydantic models validated at construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    model_validator,
)

from ._validate import MAX_SAFE_INT
from .errors import ConfigurationError
from .periods import Calendar, CalendarUnit, Interval, Period, parse_interval, zone

RefillMode = Literal["top_up", "add", "reset"]

Credits = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT)]


def _to_interval(value: object) -> Interval | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"interval needs a unit: write '{value}d' or '{value}s', not {value}")
    return parse_interval(value)


IntervalField = Annotated[
    Interval | None,
    BeforeValidator(_to_interval),
    PlainSerializer(lambda v: None if v is None else str(v), return_type=str | None),
]

_LIBRECHAT_UNITS = {
    "seconds": "s",
    "minutes": "m",
    "hours": "h",
    "days": "d",
    "weeks": "w",
    "months": "mo",
}


class AdaptiveAmount(BaseModel):
    """Size each refill from the user's own usage.

    amount = clamp(ceil(EWMA(spend per period) x headroom), min_amount, max_amount),
    where the EWMA starts from the tier's `amount` and weighs the newest period by
    `alpha`. Light users get little, heavy users about what they use, and no refill ever
    exceeds `max_amount`, so the total issued stays bounded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    headroom: Annotated[float, Field(ge=1, le=100, allow_inf_nan=False)] = 1.2
    min_amount: Annotated[StrictInt, Field(gt=0, le=MAX_SAFE_INT)]
    max_amount: Annotated[StrictInt, Field(gt=0, le=MAX_SAFE_INT)]

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.min_amount > self.max_amount:
            raise ValueError(
                f"adaptive min_amount ({self.min_amount}) is above max_amount ({self.max_amount})"
            )
        return self


class RefillPolicy(BaseModel):
    """How and when one user's credits are refilled.

    Exactly one of `interval` (rolling from the last refill) and `calendar` (one refill
    per calendar period in `timezone`) is given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    amount: Annotated[StrictInt, Field(gt=0, le=MAX_SAFE_INT)]
    interval: IntervalField = None
    calendar: CalendarUnit | None = None
    timezone: str = "UTC"
    mode: RefillMode = "top_up"
    threshold: Credits | None = None
    max_balance: Credits | None = None
    start_balance: Credits = 0
    auto_refill: StrictBool = True
    adaptive: AdaptiveAmount | None = None
    low_balance: Credits | None = None
    """Below this balance a `LowBalance` event is sent (once per crossing); None: never."""

    @model_validator(mode="before")
    @classmethod
    def _default_threshold(cls, data: object) -> object:
        """`top_up` and `add` refill below `amount` unless told otherwise; `reset` has no
        default threshold: every due user is set to `amount` (the classic monthly reset)."""
        if (
            isinstance(data, Mapping)
            and data.get("threshold") is None
            and "amount" in data
            and data.get("mode", "top_up") != "reset"
        ):
            return {**data, "threshold": data["amount"]}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.interval is None) == (self.calendar is None):
            raise ValueError("give exactly one of 'interval' (e.g. '30d', '1mo') and 'calendar'")
        zone(self.timezone)
        if self.interval is not None and self.timezone != "UTC":
            raise ValueError("'timezone' only applies to 'calendar' periods; intervals run in UTC")
        if self.max_balance is not None:
            if self.max_balance < self.amount:
                raise ValueError(
                    f"max_balance ({self.max_balance}) is below amount ({self.amount}): "
                    "every refill would be cut"
                )
            if self.start_balance > self.max_balance:
                raise ValueError(
                    f"start_balance ({self.start_balance}) is above max_balance ({self.max_balance})"
                )
            if self.threshold is not None and self.threshold > self.max_balance:
                raise ValueError(
                    f"threshold ({self.threshold}) is above max_balance "
                    f"({self.max_balance}): refills there could grant nothing"
                )
            if self.adaptive is not None and self.adaptive.max_amount > self.max_balance:
                raise ValueError(
                    f"adaptive max_amount ({self.adaptive.max_amount}) is above max_balance "
                    f"({self.max_balance})"
                )
        return self

    @property
    def effective_threshold(self) -> float:
        """The available balance at or above which a due user is not refilled: the
        threshold given, else `amount` for `top_up` and `add`, and no limit at all
        (infinity: every due user is refilled) for `reset`."""
        if self.threshold is not None:
            return self.threshold
        return math.inf if self.mode == "reset" else self.amount

    def describe_threshold(self) -> str:
        """The threshold in words (for `policy check`, the admin page and logs)."""
        if self.threshold is None and self.mode == "reset":
            return "none: every due user is reset to the amount, whatever the balance"
        return f"{self.effective_threshold:,}"

    @property
    def period(self) -> Period:
        """The rolling interval or the calendar period."""
        if self.interval is not None:
            return self.interval
        assert self.calendar is not None  # noqa: S101 - guaranteed by validation
        return Calendar(self.calendar, self.timezone)

    def describe(self) -> dict[str, object]:
        """The effective rules, as plain values (for `policy check` and logs)."""
        return {
            "amount": self.amount,
            "period": str(self.period),
            "mode": self.mode,
            "threshold": self.threshold,
            "threshold_rule": self.describe_threshold(),
            "max_balance": self.max_balance,
            "start_balance": self.start_balance,
            "auto_refill": self.auto_refill,
            "adaptive": None if self.adaptive is None else self.adaptive.model_dump(),
            "low_balance": self.low_balance,
        }

    @classmethod
    def from_librechat(
        cls, mapping: Mapping[str, object], *, auto_refill: bool | None = None
    ) -> RefillPolicy:
        """Build a policy from the `balance:` section of `librechat.yaml`.

        Keeps LibreChat's semantics: `add` mode, and a refill only when the request
        would not be covered (threshold 0, so `needed` decides).

        Beside a running LibreChat, its own `autoRefillEnabled` must stay false (else
        LibreChat refills too). Read as this library's policy, that switch would turn the
        library's refills off as well, silently. So a section whose `enabled` or
        `autoRefillEnabled` is false is refused (`ValueError`, one line saying why and
        what to do) unless `auto_refill` says explicitly what the library should do:
        True refills on LibreChat's amount and interval, False refills nobody.
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(f"the balance section must be a mapping, got {type(mapping).__name__}")
        if "balance" in mapping and isinstance(mapping["balance"], Mapping):
            mapping = mapping["balance"]
        known = {
            "enabled",
            "startBalance",
            "autoRefillEnabled",
            "refillIntervalValue",
            "refillIntervalUnit",
            "refillAmount",
            "tenantId",
        }
        unknown = sorted(str(k) for k in mapping if k not in known)
        if unknown:
            raise ValueError(f"unknown key(s) in the balance section: {', '.join(unknown)}")
        enabled = mapping.get("enabled", False)
        auto = mapping.get("autoRefillEnabled", False)
        for key, flag in (("enabled", enabled), ("autoRefillEnabled", auto)):
            if not isinstance(flag, bool):
                raise ValueError(f"{key} must be true or false, got {flag!r}")
        if auto_refill is not None and not isinstance(auto_refill, bool):
            raise ValueError(f"auto_refill must be True, False or None, got {auto_refill!r}")
        if auto_refill is None:
            if not (enabled and auto):
                raise ValueError(librechat_trap(enabled=enabled is True))
            auto_refill = True
        value = mapping.get("refillIntervalValue", 30)
        unit = mapping.get("refillIntervalUnit", "days")
        if unit not in _LIBRECHAT_UNITS:
            raise ValueError(
                f"refillIntervalUnit must be one of {', '.join(_LIBRECHAT_UNITS)}, got {unit!r}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"refillIntervalValue must be a positive integer, got {value!r}")
        amount = mapping.get("refillAmount", 10_000)
        if not auto_refill and amount == 0:
            amount = 10_000  # unused while auto refill is off; keeps the model valid
        if isinstance(amount, int) and not isinstance(amount, bool) and amount <= 0:
            raise ValueError(
                f"refillAmount must be positive when auto refill is on, got {amount!r}"
            )
        return cls(
            amount=amount,
            interval=f"{value}{_LIBRECHAT_UNITS[unit]}",
            mode="add",
            threshold=0,
            start_balance=mapping.get("startBalance", 20_000),
            auto_refill=auto_refill,
        )


def librechat_trap(*, enabled: bool = True) -> str:
    """Why a `librechat.yaml` with LibreChat's refill switched off is refused as a policy."""
    switch = "balance.autoRefillEnabled" if enabled else "balance.enabled"
    return (
        f"{switch} is false in this librechat.yaml: read as this library's policy it would "
        "refill nobody. Keep LibreChat's own switch off (so that LibreChat does not refill "
        "too) and give the library its own policy file (amount, interval or calendar, mode), "
        "or pass an explicit override (RefillPolicy.from_librechat(..., auto_refill=True), "
        "or --librechat-auto-refill on|off on the command line)"
    )


class TierRule(BaseModel):
    """Move users from one tier to another on recent usage, evaluated at refill time.

    Usage of a period is the credits spent in it divided by `from_tier`'s `amount`. The
    rule fires when at least `periods` of the last `of_last` periods have usage
    >= `min_usage` (a promotion, e.g. 0.8) or < `max_usage` (a demotion, e.g. 0.1).
    Periods in which the user did not show up count as zero usage.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_tier: str
    to_tier: str
    min_usage: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_usage: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    periods: Annotated[StrictInt, Field(ge=1, le=6)] = 1
    of_last: Annotated[StrictInt, Field(ge=1, le=6)] = 1

    @model_validator(mode="after")
    def _check_rule(self) -> Self:
        if (self.min_usage is None) == (self.max_usage is None):
            raise ValueError(
                "a tier rule needs exactly one of min_usage (promote) and max_usage (demote)"
            )
        if self.periods > self.of_last:
            raise ValueError(f"periods ({self.periods}) cannot exceed of_last ({self.of_last})")
        if self.from_tier == self.to_tier:
            raise ValueError(
                f"a tier rule must move between two tiers, got {self.from_tier!r} twice"
            )
        return self

    def describe(self) -> str:
        if self.min_usage is not None:
            test = f"spent >= {self.min_usage:.0%} of the allowance"
        else:
            test = f"spent < {self.max_usage:.0%} of the allowance"
        return f"{self.from_tier} -> {self.to_tier} when {test} in {self.periods} of the last {self.of_last} periods"


class TieredPolicy(BaseModel):
    """Several named `RefillPolicy` tiers; a user's tier is stored on the balance document.

    `rules` (off by default) move users between tiers on their recent usage, at refill
    time; a pinned user is never moved.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tiers: dict[str, RefillPolicy]
    default_tier: str
    rules: tuple[TierRule, ...] = ()

    @model_validator(mode="after")
    def _check_tiers(self) -> Self:
        if not self.tiers:
            raise ValueError("a tiered policy needs at least one tier")
        for name in self.tiers:
            if not name or not name.strip() or name.startswith("$") or len(name) > 64:
                raise ValueError(
                    f"tier names must be 1-64 characters, not starting with '$': {name!r}"
                )
        if self.default_tier not in self.tiers:
            raise ValueError(
                f"default_tier {self.default_tier!r} is not one of the tiers: {', '.join(self.tiers)}"
            )
        for rule in self.rules:
            for name in (rule.from_tier, rule.to_tier):
                if name not in self.tiers:
                    raise ValueError(f"tier rule names an unknown tier {name!r}")
        return self

    @classmethod
    def single(cls, policy: RefillPolicy, name: str = "default") -> TieredPolicy:
        """The one-tier case: a plain `RefillPolicy`."""
        return cls(tiers={name: policy}, default_tier=name)

    def tier_of(self, stored: object) -> str:
        """The tier a stored value names; missing or unknown values mean the default tier."""
        if isinstance(stored, str) and stored in self.tiers:
            return stored
        return self.default_tier

    def describe(self) -> dict[str, object]:
        return {
            "default_tier": self.default_tier,
            "tiers": {name: p.describe() for name, p in self.tiers.items()},
            "rules": [rule.describe() for rule in self.rules],
        }


AnyPolicy = RefillPolicy | TieredPolicy


def as_tiered(policy: object) -> TieredPolicy:
    """Every policy seen as tiers; a plain policy is the one-tier case."""
    if isinstance(policy, TieredPolicy):
        return policy
    if isinstance(policy, RefillPolicy):
        return TieredPolicy.single(policy)
    raise ConfigurationError(
        f"expected a RefillPolicy or TieredPolicy, got {type(policy).__name__}"
    )
