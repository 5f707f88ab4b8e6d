"""The policy store: numbered, audited policy versions in one collection, exactly one
of them active.

    store = PolicyStore(db["balance_refill_policies"])
    version = await store.push(policy, actor="ops:ana", reason="amount 10000 -> 8000")
    await store.activate(version, actor="ops:ana", reason="approved in #ops")
    version, policy = await store.active()

The collection holds three kinds of document, told apart by `kind`:

- `"version"`: one per pushed policy: `version` (1, 2, ...), `policy` (the policy's JSON
  dump), `policyKind` (`"refill"` for a `RefillPolicy`, `"tiered"` for a `TieredPolicy`),
  `actor`, `reason`, `createdAt`. Never changed once written.
- `"activation"`: one per `activate` call, the audit trail: `seq` (1, 2, ...), `version`,
  `actor`, `reason`, `at`.
- `"active"`: the one active version: `version` and the `seq` of the activation that
  made it active.

Unique partial indexes do the enforcing, not the code's good manners: `version` among
versions (two racing pushes get different numbers, the loser of a tie takes the next),
`seq` among activations (activations are totally ordered), and `kind` among `"active"`
documents (there is never a second one). Switching the active version is one
conditional update of that single document, which only moves forward in `seq`: two
racing activations leave exactly one version active, the one activated last, and both
are in the history. No transaction is needed.

All driver calls go through `balance_refill._store.Store`; the clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import ValidationError

from ._store import AsyncCollection, Store
from ._validate import check_limit, check_text, describe
from .errors import (
    ConfigurationError,
    ContentionError,
    InvalidArgument,
    NoActivePolicy,
    PolicyNotFound,
)
from .policy import AnyPolicy, RefillPolicy, TieredPolicy

DEFAULT_COLLECTION: Final = "balance_refill_policies"
"""The collection's name unless the host picks another."""

MAX_VERSION: Final = 2**31 - 1

PolicyKind = Literal["refill", "tiered"]

_KINDS: Final[dict[str, type[RefillPolicy] | type[TieredPolicy]]] = {
    "refill": RefillPolicy,
    "tiered": TieredPolicy,
}

# The indexes: (name, key, the documents they cover).
_INDEXES: Final = (
    ("policy_version_unique", "version", {"kind": "version"}),
    ("policy_activation_seq_unique", "seq", {"kind": "activation"}),
    ("policy_one_active", "kind", {"kind": "active"}),
)


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One stored version: the policy as pushed, who pushed it, why and when, and whether
    it is the active one (when it was read)."""

    version: int
    policy: AnyPolicy
    actor: str
    reason: str
    created_at: datetime
    active: bool = False


@dataclass(frozen=True, slots=True)
class PolicyActivation:
    """One `activate` call: which version, who, why and when (`seq` orders them)."""

    seq: int
    version: int
    actor: str
    reason: str
    at: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(value: object) -> datetime:
    """A stored datetime as aware UTC (a client without tz_aware returns naive UTC)."""
    if not isinstance(value, datetime):
        raise ConfigurationError(f"the policy store holds a bad date: {describe(value)}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def policy_kind(policy: object) -> PolicyKind:
    """The kind tag of a policy; anything but a RefillPolicy or TieredPolicy is refused."""
    if isinstance(policy, TieredPolicy):
        return "tiered"
    if isinstance(policy, RefillPolicy):
        return "refill"
    raise InvalidArgument(
        f"a policy must be a RefillPolicy or a TieredPolicy, got {type(policy).__name__}"
    )


def flatten(value: object, prefix: str = "", *, keep_empty: bool = False) -> dict[str, object]:
    """A nested policy dump as `{"tiers.heavy.amount": 50000, ...}` (list items by
    index), for showing what differs between two versions. `keep_empty` lists an empty
    mapping or list under its own name (else it has no entry)."""
    if isinstance(value, Mapping):
        items: list[tuple[str, object]] = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else key, keep_empty=keep_empty))
    if keep_empty and not items and prefix:
        flat[prefix] = value
    return flat


def dump_policy(policy: object) -> tuple[PolicyKind, dict[str, Any]]:
    """The kind tag and JSON dump of `policy`, checked to load back as an equal policy.

    Refused (InvalidArgument, nothing stored): an object that is not a policy, a policy
    that no longer validates (built with `model_construct`, say), one whose dump does not
    load back equal, and tier names MongoDB cannot hold as field names."""
    kind = policy_kind(policy)
    model = _KINDS[kind]
    assert isinstance(policy, model)  # noqa: S101 - policy_kind just said so
    dump = policy.model_dump(mode="json")
    try:
        again = model.model_validate(dump)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "policy"
        raise InvalidArgument(f"invalid policy: {where}: {first['msg']}") from None
    if again != policy:
        raise InvalidArgument(
            "the policy does not load back equal to itself from its dump, so it cannot be "
            "stored exactly"
        )
    if isinstance(policy, TieredPolicy):
        for name in policy.tiers:
            if "." in name or "\x00" in name:
                raise InvalidArgument(
                    f"tier name {name!r} cannot be stored: MongoDB field names hold no '.' or NUL"
                )
    return kind, dump


def load_policy(kind: object, dump: object) -> AnyPolicy:
    """A stored policy back as a model (a damaged document is a ConfigurationError)."""
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None or not isinstance(dump, Mapping):
        raise ConfigurationError(f"the policy store holds a policy of unknown kind {kind!r}")
    try:
        return model.model_validate(dict(dump))
    except ValidationError as exc:
        raise ConfigurationError(f"the policy store holds an invalid policy: {exc}") from None


class PolicyStore:
    """Numbered policy versions in `collection`, exactly one active (see the module).

    `clock` returns an aware UTC datetime (the time written on versions and activations);
    `attempts` bounds the retries when racing writers take the same number.
    """

    def __init__(
        self,
        collection: AsyncCollection,
        *,
        clock: Callable[[], datetime] | None = None,
        attempts: int = 64,
        retry_delay: float = 0.05,
    ) -> None:
        self.collection = collection
        self._store = Store(collection, retry_delay=retry_delay)
        self._clock = clock or _utc_now
        self._attempts = check_limit(attempts, what="attempts", low=1, high=10_000)
        self._indexed = False

    # -- writes -------------------------------------------------------------------------

    async def ensure_indexes(self) -> list[str]:
        """Create the three unique indexes that are missing (the writes call this once per
        store) and return their names. Indexes already there are left alone: a server
        would do the same, and mongomock would check a partial index against every
        document instead of those it covers."""
        present = await self._store.index_names(self.collection)
        for name, key, covered in _INDEXES:
            if name not in present:
                await self._store.create_index(
                    self.collection, [(key, 1)], name=name, unique=True, partial=covered
                )
        self._indexed = True
        return [name for name, _, _ in _INDEXES]

    async def push(self, policy: AnyPolicy, *, actor: str, reason: str) -> int:
        """Store `policy` as the next version and return its number; it is not activated.
        An invalid policy, actor or reason is refused and nothing is stored."""
        kind, dump = dump_policy(policy)
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        now = self._now()
        await self._ready()
        fields = {"policyKind": kind, "policy": dump, "actor": actor, "reason": reason}
        return await self._insert_next(
            "version", "version", {**fields, "createdAt": now}, what="push", race="a version number"
        )

    async def activate(self, version: int, *, actor: str, reason: str) -> None:
        """Make `version` the active one, recording who, why and when. An unknown version
        is `PolicyNotFound` and changes nothing. Of racing activations, the one recorded
        last is active."""
        version = self._version(version)
        actor = check_text(actor, what="actor")
        reason = check_text(reason, what="reason")
        now = self._now()
        await self._ready()
        await self.get(version)  # PolicyNotFound before anything is written
        seq = await self._record_activation(version, actor, reason, now)
        fields = {"version": version, "seq": seq, "actor": actor, "reason": reason, "at": now}
        if await self._store.try_insert(self.collection, {"kind": "active", **fields}):
            return
        # The active document exists: move it forward, unless a later activation did.
        await self._store.update_one(
            self.collection, {"kind": "active", "seq": {"$lt": seq}}, {"$set": fields}
        )

    # -- reads --------------------------------------------------------------------------

    async def active(self) -> tuple[int, AnyPolicy]:
        """The active version and its policy; `NoActivePolicy` if none was activated."""
        pointer = await self._store.find_one(self.collection, {"kind": "active"})
        if pointer is None:
            raise NoActivePolicy(
                "no policy version is active: push one and activate it "
                "(balance-refill policy push FILE, then policy activate N)"
            )
        got = await self.get(self._version(pointer.get("version")))
        return got.version, got.policy

    async def get(self, version: int) -> PolicyVersion:
        """One version; `PolicyNotFound` if the store does not hold it."""
        version = self._version(version)
        doc = await self._store.find_one(self.collection, {"kind": "version", "version": version})
        if doc is None:
            raise PolicyNotFound(f"policy version {version} does not exist")
        return self._as_version(doc, await self._active_version())

    async def versions(self) -> list[PolicyVersion]:
        """Every version, oldest first, with the active one marked."""
        docs = await self._store.iterate(
            self.collection, {"kind": "version"}, sort=[("version", 1)]
        )
        active = await self._active_version()
        return [self._as_version(doc, active) for doc in docs]

    async def activations(self, limit: int = 100) -> list[PolicyActivation]:
        """The activation history, newest first (at most `limit` entries)."""
        limit = check_limit(limit, what="limit", low=1, high=10_000)
        docs = await self._store.iterate(
            self.collection, {"kind": "activation"}, sort=[("seq", -1)], limit=limit
        )
        return [
            PolicyActivation(
                seq=int(doc["seq"]),
                version=int(doc["version"]),
                actor=str(doc["actor"]),
                reason=str(doc["reason"]),
                at=_aware(doc["at"]),
            )
            for doc in docs
        ]

    # -- helpers ------------------------------------------------------------------------

    async def _ready(self) -> None:
        if not self._indexed:
            await self.ensure_indexes()

    async def _record_activation(self, version: int, actor: str, reason: str, now: datetime) -> int:
        fields = {"version": version, "actor": actor, "reason": reason, "at": now}
        return await self._insert_next(
            "activation", "seq", fields, what="activate", race="its turn"
        )

    async def _insert_next(
        self, kind: str, field: str, fields: dict[str, object], *, what: str, race: str
    ) -> int:
        """Insert a `kind` document numbered one past the highest `field` so far; a racer
        that took the number first (the unique index refuses the insert) means trying the
        next one. Returns the number taken."""
        for _ in range(self._attempts):
            number = await self._last(kind, field) + 1
            if await self._store.try_insert(
                self.collection, {"kind": kind, field: number, **fields}
            ):
                return number
        raise ContentionError(f"{what} lost the race for {race} {self._attempts} times")

    async def _last(self, kind: str, field: str) -> int:
        """The highest `field` among documents of `kind` (0 if there are none)."""
        docs = await self._store.iterate(
            self.collection, {"kind": kind}, sort=[(field, -1)], limit=1
        )
        return int(docs[0][field]) if docs else 0

    async def _active_version(self) -> int | None:
        pointer = await self._store.find_one(self.collection, {"kind": "active"})
        return None if pointer is None else int(pointer["version"])

    def _as_version(self, doc: Mapping[str, Any], active: int | None) -> PolicyVersion:
        version = int(doc["version"])
        return PolicyVersion(
            version=version,
            policy=load_policy(doc.get("policyKind"), doc.get("policy")),
            actor=str(doc["actor"]),
            reason=str(doc["reason"]),
            created_at=_aware(doc["createdAt"]),
            active=version == active,
        )

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise ConfigurationError(f"the clock must return an aware datetime, got {now!r}")
        return now

    @staticmethod
    def _version(value: object) -> int:
        return check_limit(value, what="version", low=1, high=MAX_VERSION)


__all__ = [
    "DEFAULT_COLLECTION",
    "PolicyActivation",
    "PolicyStore",
    "PolicyVersion",
    "dump_policy",
    "load_policy",
    "policy_kind",
]
