"""The policy editor's form: a policy shown as fields (per tier, plus the rules) or as
YAML, and read back with a message per field. Nothing here touches the store."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from balance_refill.errors import BalanceRefillError
from balance_refill.policy import AnyPolicy, RefillPolicy, TieredPolicy, as_tiered
from balance_refill.policy_file import load_policy_text
from balance_refill.policy_store import dump_policy, flatten, load_policy, policy_kind

from ._forms import FieldErrors

MAX_TIERS = 20
MAX_RULES = 20
MAX_YAML = 100_000  # characters
MAX_DAYS = 90
DEFAULT_DAYS = 30
CALENDAR_UNITS = ("day", "week", "month")
MODES = ("top_up", "add", "reset")
INT = re.compile(r"[0-9]{1,16}", re.ASCII)
FRACTION = re.compile(r"([0-9]{1,6}(\.[0-9]{0,6})?|\.[0-9]{1,6})", re.ASCII)


@dataclass(frozen=True, slots=True)
class TierFields:
    """One tier as the form shows it (every value as text)."""

    index: int
    name: str
    amount: str
    period: str  # "interval" or "calendar"
    interval: str
    calendar: str
    timezone: str
    mode: str
    threshold: str
    max_balance: str
    start_balance: str
    auto_refill: bool


@dataclass(frozen=True, slots=True)
class RuleFields:
    index: int
    from_tier: str
    to_tier: str
    kind: str  # "min_usage" (promote) or "max_usage" (demote)
    usage: str
    periods: str
    of_last: str


def _text(value: object) -> str:
    return "" if value is None else str(value)


def tier_fields(policy: AnyPolicy) -> list[TierFields]:
    """The policy's tiers as form fields."""
    tiers = as_tiered(policy)
    return [
        TierFields(
            index=i,
            name=name,
            amount=str(p.amount),
            period="interval" if p.interval is not None else "calendar",
            interval=_text(p.interval),
            calendar=_text(p.calendar),
            timezone=p.timezone,
            mode=p.mode,
            threshold=_text(p.threshold),
            max_balance=_text(p.max_balance),
            start_balance=str(p.start_balance),
            auto_refill=p.auto_refill,
        )
        for i, (name, p) in enumerate(tiers.tiers.items())
    ]


def rule_fields(policy: AnyPolicy, *, spare: int = 1) -> list[RuleFields]:
    """The rules as form fields, and `spare` empty rows to add a rule."""
    rules = as_tiered(policy).rules
    rows = [
        RuleFields(
            index=i,
            from_tier=r.from_tier,
            to_tier=r.to_tier,
            kind="min_usage" if r.min_usage is not None else "max_usage",
            usage=_text(r.min_usage if r.min_usage is not None else r.max_usage),
            periods=str(r.periods),
            of_last=str(r.of_last),
        )
        for i, r in enumerate(rules)
    ]
    rows += [RuleFields(len(rules) + j, "", "", "min_usage", "", "1", "1") for j in range(spare)]
    return rows


def form_values(policy: AnyPolicy) -> dict[str, str]:
    """The flat form (`t0.amount`, `r0.from`, ...) that shows `policy`."""
    values: dict[str, str] = {"kind": policy_kind(policy), "tiers": "", "rules": ""}
    tiers = tier_fields(policy)
    values["tiers"] = str(len(tiers))
    values["default_tier"] = as_tiered(policy).default_tier
    for t in tiers:
        p = f"t{t.index}."
        values.update({
            p + "name": t.name, p + "amount": t.amount, p + "period": t.period,
            p + "interval": t.interval, p + "calendar": t.calendar, p + "timezone": t.timezone,
            p + "mode": t.mode, p + "threshold": t.threshold, p + "max_balance": t.max_balance,
            p + "start_balance": t.start_balance, p + "auto_refill": "on" if t.auto_refill else "",
        })  # fmt: skip
    rules = rule_fields(policy)
    values["rules"] = str(len(rules))
    for r in rules:
        p = f"r{r.index}."
        values.update({
            p + "from": r.from_tier, p + "to": r.to_tier, p + "kind": r.kind,
            p + "usage": r.usage, p + "periods": r.periods, p + "of_last": r.of_last,
        })  # fmt: skip
    return values


def _count(form: Mapping[str, str], name: str, high: int) -> int:
    raw = form.get(name, "")
    if not INT.fullmatch(raw) or int(raw) > high:
        raise FieldErrors({"form": "The form was incomplete; open the editor again."})
    return int(raw)


def _int(form: Mapping[str, str], name: str, errors: dict[str, str], *, blank: bool) -> int | None:
    raw = form.get(name, "").strip().replace("_", "").replace(",", "")
    if not raw:
        if not blank:
            errors[name] = "Enter a whole number of credits."
        return None
    if not INT.fullmatch(raw):
        errors[name] = "Write a whole number in digits only (0-9), e.g. 10000."
        return None
    return int(raw)


def _fraction(form: Mapping[str, str], name: str, errors: dict[str, str]) -> float | None:
    raw = form.get(name, "").strip()
    if not FRACTION.fullmatch(raw):
        errors[name] = "Write a share as a decimal number, e.g. 0.8 for 80%."
        return None
    return float(raw)


def _tier(form: Mapping[str, str], i: int, base: TieredPolicy, errors: dict[str, str]) -> tuple[str, dict[str, Any]]:  # fmt: skip
    p = f"t{i}."
    name = form.get(p + "name", "").strip()
    data: dict[str, Any] = {}
    kept = base.tiers.get(name)
    if kept is not None:  # the settings the form does not show stay as they were
        data.update(kept.model_dump(mode="json", include={"adaptive", "low_balance"}))
    if not name:
        errors[p + "name"] = "Every tier needs a name."
    amount = _int(form, p + "amount", errors, blank=False)
    data["amount"] = amount if amount is not None else 1
    period = form.get(p + "period")
    if period == "interval":
        interval = form.get(p + "interval", "").strip()
        if not interval:
            errors[p + "interval"] = "Enter an interval such as 30d, 1w or 12h."
        data["interval"] = interval or "30d"
    elif period == "calendar":
        unit = form.get(p + "calendar", "")
        if unit not in CALENDAR_UNITS:
            errors[p + "calendar"] = f"Choose one of: {', '.join(CALENDAR_UNITS)}."
        data["calendar"] = unit if unit in CALENDAR_UNITS else "month"
        data["timezone"] = form.get(p + "timezone", "").strip() or "UTC"
    else:
        errors[p + "period"] = "Choose an interval or a calendar period."
        data["interval"] = "30d"
    mode = form.get(p + "mode", "")
    if mode not in MODES:
        errors[p + "mode"] = f"Choose one of: {', '.join(MODES)}."
    data["mode"] = mode if mode in MODES else "top_up"
    data["threshold"] = _int(form, p + "threshold", errors, blank=True)
    data["max_balance"] = _int(form, p + "max_balance", errors, blank=True)
    start = _int(form, p + "start_balance", errors, blank=True)
    data["start_balance"] = 0 if start is None else start
    data["auto_refill"] = form.get(p + "auto_refill") == "on"
    return name, data


def _rules(form: Mapping[str, str], errors: dict[str, str]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for j in range(_count(form, "rules", MAX_RULES + 1)):
        p = f"r{j}."
        source, target = form.get(p + "from", "").strip(), form.get(p + "to", "").strip()
        if form.get(p + "remove") == "on" or (not source and not target):
            continue  # removed, or the spare row left empty
        kind = form.get(p + "kind")
        if kind not in ("min_usage", "max_usage"):
            errors[p + "kind"] = "Choose promote (at least) or demote (below)."
            kind = "min_usage"
        usage = _fraction(form, p + "usage", errors)
        rule: dict[str, Any] = {"from_tier": source, "to_tier": target, kind: usage or 0.5}
        for key in ("periods", "of_last"):
            value = _int(form, p + key, errors, blank=False)
            rule[key] = 1 if value is None else value
        rules.append(rule)
    return rules


def policy_from_form(form: Mapping[str, str], base: AnyPolicy) -> AnyPolicy:
    """The candidate policy the form describes; `FieldErrors` names each bad field.
    `base` is the version being edited: settings the form does not show (adaptive
    amounts, low-balance alerts) are kept from its tier of the same name."""
    errors: dict[str, str] = {}
    count = _count(form, "tiers", MAX_TIERS)
    if count < 1:
        raise FieldErrors({"form": "The form was incomplete; open the editor again."})
    tiered = as_tiered(base)
    tiers: dict[str, dict[str, Any]] = {}
    order: list[int] = []
    for i in range(count):
        name, data = _tier(form, i, tiered, errors)
        if name in tiers:
            errors[f"t{i}.name"] = f"Two tiers are named {name!r}."
        tiers[name] = data
        order.append(i)
    kind = form.get("kind")
    rules = _rules(form, errors) if kind == "tiered" else []
    if errors:
        raise FieldErrors(errors)
    names = list(tiers)
    try:
        if kind == "refill":
            return RefillPolicy.model_validate(tiers[names[0]])
        default = form.get("default_tier", "")
        return TieredPolicy.model_validate(
            {"tiers": tiers, "default_tier": default, "rules": rules}
        )
    except ValidationError as exc:
        raise FieldErrors(_validation_errors(exc, names, kind == "refill")) from None


_SHOWN = {"amount", "interval", "calendar", "timezone", "mode", "threshold", "max_balance",
          "start_balance", "auto_refill"}  # fmt: skip
_RULE_FIELDS = {"from_tier": "from", "to_tier": "to", "min_usage": "usage",
                "max_usage": "usage", "periods": "periods", "of_last": "of_last"}  # fmt: skip


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg[:1].upper() + msg[1:] + ("" if msg.endswith(".") else ".")


def _validation_errors(exc: ValidationError, names: list[str], single: bool) -> dict[str, str]:
    """pydantic's errors as form fields: `t0.max_balance`, `r1.usage`, or the tier's or
    the form's own message."""
    errors: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if single:
            loc = ("tiers", names[0], *loc)
        field = "form"
        if len(loc) >= 2 and loc[0] == "tiers" and loc[1] in names:
            tier = f"t{names.index(str(loc[1]))}"
            key = str(loc[2]) if len(loc) > 2 else ""
            field = f"{tier}.{key}" if key in _SHOWN else tier
        elif len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            key = str(loc[2]) if len(loc) > 2 else ""
            field = f"r{loc[1]}.{_RULE_FIELDS[key]}" if key in _RULE_FIELDS else f"r{loc[1]}"
        elif loc == ("default_tier",) or (not loc and "default_tier" in str(err["msg"])):
            field = "default_tier"
        elif not loc and "tier rule" in str(err["msg"]):
            field = "rules"
        errors.setdefault(field, _message(err))
    return errors


# -- YAML ------------------------------------------------------------------------------


def policy_yaml(policy: AnyPolicy) -> str:
    """The policy as the YAML a policy file holds."""
    import yaml  # noqa: PLC0415 - the web extra's YAML editor

    data = policy.model_dump(mode="json", exclude_none=True)
    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def policy_from_yaml(text: object) -> AnyPolicy:
    """The policy a YAML text holds (the policy-file schema); `FieldErrors` on `yaml`."""
    if not isinstance(text, str) or not text.strip():
        raise FieldErrors({"yaml": "Paste a policy in YAML."})
    if len(text) > MAX_YAML:
        raise FieldErrors({"yaml": f"Keep the YAML under {MAX_YAML:,} characters."})
    try:
        return load_policy_text(text, source="YAML")
    except BalanceRefillError as exc:
        raise FieldErrors({"yaml": str(exc)}) from None


# -- the candidate between review and confirm ------------------------------------------------


def encode_candidate(policy: AnyPolicy) -> str:
    """The policy as the one hidden field the confirmation carries (canonical JSON)."""
    kind, dump = dump_policy(policy)
    return json.dumps({"kind": kind, "policy": dump}, sort_keys=True, separators=(",", ":"))


def decode_candidate(text: object) -> AnyPolicy:
    """The policy a confirmation carries, validated again (`FieldErrors` on `form`)."""
    incomplete = FieldErrors({"form": "The form was incomplete; review the change again."})
    if not isinstance(text, str) or not 0 < len(text) <= MAX_YAML:
        raise incomplete
    try:
        data = json.loads(text)
    except ValueError:
        raise incomplete from None
    if not isinstance(data, dict):
        raise incomplete
    try:
        return load_policy(data.get("kind"), data.get("policy"))
    except BalanceRefillError as exc:
        raise FieldErrors({"form": f"The policy was refused: {exc}"}) from None


def parse_days(raw: object) -> int:
    """The preview's window in days: 1 to MAX_DAYS (default DEFAULT_DAYS)."""
    if raw is None or raw == "":
        return DEFAULT_DAYS
    if not isinstance(raw, str) or not INT.fullmatch(raw.strip()):
        raise FieldErrors({"days": f"Enter a number of days from 1 to {MAX_DAYS}."})
    days = int(raw.strip())
    if not 1 <= days <= MAX_DAYS:
        raise FieldErrors({"days": f"Enter a number of days from 1 to {MAX_DAYS}."})
    return days


def changes(before: AnyPolicy, after: AnyPolicy) -> list[tuple[str, str, str]]:
    """What differs, setting by setting: (`tiers.free.amount`, old, new); "—" is unset."""
    old = flatten(as_tiered(before).model_dump(mode="json"))
    new = flatten(as_tiered(after).model_dump(mode="json"))

    def shown(flat: Mapping[str, object], key: str) -> str:
        value = flat.get(key)
        return "—" if value is None else str(value)

    keys = list(dict.fromkeys([*old, *new]))
    return [(k, shown(old, k), shown(new, k)) for k in keys if old.get(k) != new.get(k)]
