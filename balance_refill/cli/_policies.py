"""`policy push`, `list`, `show`, `diff`, `activate`: the stored, versioned policy
(`balance_refill.PolicyStore`), and the policy other commands run under."""

from __future__ import annotations

import argparse
from typing import cast

from rich.table import Table

from balance_refill import NoActivePolicy, PolicyStore, PolicyVersion, load_policy_file
from balance_refill.policy import AnyPolicy, as_tiered
from balance_refill.policy_store import dump_policy, flatten, policy_kind

from ._commands import actor, print_rules
from ._connect import Collection, Connection
from ._logging import LoggedCollection
from ._output import Output
from ._parser import EXIT_OK
from .settings import Settings


def policy_store(conn: Connection, settings: Settings, *, verbose: int = 0) -> PolicyStore:
    """The store in the configured collection (its calls logged under -v)."""
    collection = conn.collection(settings.policies_collection)
    return PolicyStore(cast("Collection", LoggedCollection(collection)) if verbose else collection)


async def stored_policy(store: PolicyStore) -> tuple[int, AnyPolicy] | None:
    """The active stored version and its policy, or None when none is active."""
    try:
        return await store.active()
    except NoActivePolicy:
        return None


def _meta(v: PolicyVersion) -> dict[str, object]:
    return {
        "version": v.version,
        "active": v.active,
        "kind": policy_kind(v.policy),
        "created_at": v.created_at,
        "actor": v.actor,
        "reason": v.reason,
    }


def differences(a: AnyPolicy, b: AnyPolicy) -> list[dict[str, object]]:
    """The settings that differ between two policies, both seen as tiers, by path;
    a setting one side lacks is None there."""
    left = flatten(dump_policy(as_tiered(a))[1], keep_empty=True)
    right = flatten(dump_policy(as_tiered(b))[1], keep_empty=True)
    return [
        {"path": path, "a": left.get(path), "b": right.get(path)}
        for path in sorted(left.keys() | right.keys())
        if left.get(path) != right.get(path) or (path in left) != (path in right)
    ]


async def policy_store_command(
    args: argparse.Namespace, conn: Connection, settings: Settings, out: Output
) -> int:
    """The `policy` actions that work on the stored versions."""
    store = policy_store(conn, settings, verbose=args.verbose)
    action = args.policy_command
    if action == "push":
        policy = load_policy_file(args.file)
        version = await store.push(policy, actor=actor(args.actor), reason=args.reason)
        out.data(
            {"version": version, "active": False, "file": args.file},
            lambda: out.line(
                f"pushed {args.file} as version {version} (not active yet: "
                f"balance-refill policy activate {version} --reason ...)"
            ),
        )
    elif action == "activate":
        await store.activate(args.version, actor=actor(args.actor), reason=args.reason)
        out.data(
            {"version": args.version, "active": True},
            lambda: out.line(f"version {args.version} is now the active policy"),
        )
    elif action == "show":
        v = await store.get(args.version)
        tiers = as_tiered(v.policy)
        title = (
            f"version {v.version}{' (active)' if v.active else ''}: pushed "
            f"{v.created_at:%Y-%m-%d %H:%M:%S UTC} by {v.actor}: {v.reason}"
        )
        out.data(
            {**_meta(v), "policy": dump_policy(v.policy)[1]},
            lambda: print_rules(out, title, tiers),
        )
    elif action == "diff":
        a, b = await store.get(args.a), await store.get(args.b)
        changes = differences(a.policy, b.policy)

        def render() -> None:
            if not changes:
                out.line(f"versions {a.version} and {b.version} are the same policy")
            for change in changes:
                out.line(f"{change['path']}: {change['a']!r} -> {change['b']!r}")

        out.data({"a": a.version, "b": b.version, "changes": changes}, render)
    else:
        await _list(store, out)
    return EXIT_OK


async def _list(store: PolicyStore, out: Output) -> None:
    versions = await store.versions()
    history = await store.activations()

    def render() -> None:
        table = Table(title="policy versions (oldest first; * active)")
        for column in ("version", "", "kind", "pushed", "actor", "reason"):
            table.add_column(column)
        for v in versions:
            table.add_row(
                str(v.version),
                "*" if v.active else "",
                policy_kind(v.policy),
                f"{v.created_at:%Y-%m-%d %H:%M:%S}",
                v.actor,
                v.reason,
            )
        out.console.print(table)
        table = Table(title="activations (newest first)")
        for column in ("when", "version", "actor", "reason"):
            table.add_column(column)
        for a in history:
            table.add_row(f"{a.at:%Y-%m-%d %H:%M:%S}", str(a.version), a.actor, a.reason)
        out.console.print(table)

    out.data(
        {
            "versions": [_meta(v) for v in versions],
            "activations": [
                {
                    "seq": a.seq,
                    "version": a.version,
                    "actor": a.actor,
                    "reason": a.reason,
                    "at": a.at,
                }
                for a in history
            ],
        },
        render,
    )
