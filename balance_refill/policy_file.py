"""Policy files: our own YAML schema, or LibreChat's `librechat.yaml`.

Our schema is either one policy (the `RefillPolicy` fields) or tiers:

    default_tier: regular
    tiers:
      regular: {amount: 10000, interval: 30d}
      heavy: {amount: 50000, calendar: month, timezone: Europe/Paris}
    rules:
      - {from_tier: regular, to_tier: heavy, min_usage: 0.8, periods: 2, of_last: 3}

A file with a `balance:` section (or LibreChat's `version:`/`endpoints:` keys) is read
as `librechat.yaml` through `RefillPolicy.from_librechat`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import PolicyFileError
from .policy import AnyPolicy, RefillPolicy, TieredPolicy, librechat_trap

MAX_FILE_BYTES = 1_000_000
_LIBRECHAT_KEYS = {"version", "endpoints", "interface", "registration", "cache", "fileStrategy"}


def _summary(exc: ValidationError) -> str:
    """Plain sentences naming the fields written: no pydantic prefixes, and no error for
    a `threshold` the user did not write (it defaults to `amount`, so a bad amount
    would otherwise be reported twice, once under a field the file does not have)."""
    errors = exc.errors(include_url=False)
    amounts = {(e["loc"][:-1], repr(e["input"])) for e in errors if e["loc"][-1:] == ("amount",)}
    parts = []
    for err in errors:
        loc = err["loc"]
        if loc[-1:] == ("threshold",) and (loc[:-1], repr(err["input"])) in amounts:
            continue  # the defaulted copy of a bad amount
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if msg.startswith("Input should be "):
            msg = f"should be {msg.removeprefix('Input should be ')}, got {err['input']!r}"
        msg = {"Field required": "is missing", "Extra inputs are not permitted": "is not a "
               "known setting"}.get(msg, msg)  # fmt: skip
        where = ".".join(str(p) for p in loc)
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts[:5])


def policy_from_mapping(
    data: object,
    *,
    source: str = "policy",
    librechat_auto_refill: bool | None = None,
    warnings: list[str] | None = None,
) -> AnyPolicy:
    """Build a policy from parsed YAML (our schema or librechat.yaml).

    A librechat.yaml whose refill switch is off is refused (see
    `RefillPolicy.from_librechat`) unless `librechat_auto_refill` overrides it; given a
    `warnings` list (what `policy check` does), it is read with refills off and the
    explanation is appended there instead."""
    if not isinstance(data, Mapping):
        raise PolicyFileError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    librechat = "balance" in data or bool(_LIBRECHAT_KEYS & set(data))
    section = data.get("balance")
    if librechat and not isinstance(section, Mapping):
        raise PolicyFileError(f"{source}: a librechat.yaml needs a 'balance:' mapping")
    try:
        if isinstance(section, Mapping):
            override = librechat_auto_refill
            if override is None and warnings is not None and not _librechat_refills(section):
                warnings.append(librechat_trap(enabled=section.get("enabled") is not False))
                override = False
            return RefillPolicy.from_librechat(section, auto_refill=override)
        if "tiers" in data:
            return TieredPolicy.model_validate(dict(data))
        return RefillPolicy.model_validate(dict(data))
    except ValidationError as exc:
        raise PolicyFileError(f"{source}: {_summary(exc)}") from exc
    except (ValueError, TypeError) as exc:
        raise PolicyFileError(f"{source}: {exc}") from exc


def _librechat_refills(section: Mapping[str, object]) -> bool:
    return section.get("enabled") is True and section.get("autoRefillEnabled") is True


def load_policy_text(
    text: str,
    *,
    source: str = "policy",
    librechat_auto_refill: bool | None = None,
    warnings: list[str] | None = None,
) -> AnyPolicy:
    """Parse YAML text into a policy; any problem is a `PolicyFileError`. The keywords
    are `policy_from_mapping`'s."""
    if len(text) > MAX_FILE_BYTES:
        raise PolicyFileError(f"{source}: larger than {MAX_FILE_BYTES} bytes")
    try:
        import yaml  # noqa: PLC0415 - PyYAML comes with the [cli] extra, not the core
    except ImportError:
        raise PolicyFileError(
            f"{source}: reading YAML needs PyYAML: pip install 'balance_refill[cli]'"
        ) from None
    try:
        data: Any = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyFileError(f"{source}: not valid YAML ({first})") from exc
    return policy_from_mapping(
        data, source=source, librechat_auto_refill=librechat_auto_refill, warnings=warnings
    )


def load_policy_file(
    path: str | Path,
    *,
    librechat_auto_refill: bool | None = None,
    warnings: list[str] | None = None,
) -> AnyPolicy:
    """Read a policy file (our schema or librechat.yaml). A librechat.yaml whose refill
    switch is off is refused with the reason unless `librechat_auto_refill` says what the
    library should do; with a `warnings` list the reason goes there instead."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyFileError(f"cannot read policy file {str(p)!r}: {exc.strerror}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyFileError(f"{p}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{p}: not UTF-8 text") from exc
    return load_policy_text(
        text, source=str(p), librechat_auto_refill=librechat_auto_refill, warnings=warnings
    )
