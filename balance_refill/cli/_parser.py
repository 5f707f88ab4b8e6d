"""The command line: the argument parser, and user ids and amounts read from text."""

from __future__ import annotations

import argparse
import math
import re
from typing import Literal

from bson import ObjectId

from balance_refill import __version__

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2

UserId = str | int | ObjectId
"""A user id as the library takes it."""

UserIdMode = Literal["auto", "objectid", "str"]
"""How the refiller stores ids (its `user_ids` argument); int ids are kept by every mode."""

USER_ID_MODES: dict[str, UserIdMode] = {"auto": "auto", "objectid": "objectid", "str": "str"}
"""The refiller's `user_ids` for each --id-type (`int` reads ids as ints, stored as "auto")."""

_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")


class CliError(Exception):
    """A usage or configuration problem (exit code 2)."""


def parse_user(text: str, id_type: str) -> UserId:
    """A user id from the command line: `auto` reads 24 hex digits as an ObjectId
    (LibreChat), anything else as a string; `str`, `int` and `objectid` force a type."""
    if id_type == "str":
        return text
    if id_type == "int":
        try:
            return int(text)
        except ValueError:
            raise CliError(f"user id {text!r} is not an integer (--id-type int)") from None
    if id_type == "objectid" or (id_type == "auto" and _HEX24.match(text)):
        if not _HEX24.match(text):
            raise CliError(f"user id {text!r} is not a 24-digit hex ObjectId (--id-type objectid)")
        return ObjectId(text)
    return text


def amount_arg(text: str) -> int | float:
    """A number of credits: whole (`1_000`) or fractional (`12.5`), as LibreChat keeps them."""
    cleaned = text.replace("_", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _common() -> argparse.ArgumentParser:
    """The options every command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--policy", help="policy YAML (ours or librechat.yaml); env BALANCE_REFILL_POLICY"
    )
    common.add_argument(
        "--database", help="database name (default: from MONGODB_URI, else LibreChat)"
    )
    common.add_argument("--balances-collection", help="default: balances")
    common.add_argument("--transactions-collection", help="default: transactions")
    common.add_argument(
        "--id-type",
        choices=["auto", "objectid", "str", "int"],
        default="auto",
        help="how to read USER: auto = 24 hex digits are an ObjectId, else a string",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="balance-refill",
        description="Keep chat users' credits topped up (LibreChat-compatible). "
        "The connection comes from MONGODB_URI (none: an embedded mock).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[common], description=help_)

    demo = add("demo", "simulate a few users over 90 days (mock unless MONGODB_URI)")
    demo.add_argument("--days", type=int, default=90)
    demo.add_argument("--seed", type=int, default=7)

    add("show", "show a user's balance and refill state").add_argument("user")
    for name, help_ in (
        ("grant", "add credits by hand (negative: a correction)"),
        ("set-balance", "set a user's balance"),
    ):
        p = add(name, help_)
        p.add_argument("user")
        p.add_argument("amount", type=amount_arg)
        p.add_argument("--reason", required=True)
        p.add_argument("--actor", default=None, help="who did it (default: cli:<login>)")
        if name == "grant":
            p.add_argument("--allow-negative", action="store_true")
    p = add("set-tier", "move a user to another tier (effective at the next refill)")
    p.add_argument("user")
    p.add_argument("tier")
    p.add_argument("--actor", default=None)
    pin = p.add_mutually_exclusive_group()
    pin.add_argument(
        "--pin",
        dest="pinned",
        action="store_const",
        const=True,
        default=None,
        help="keep activity rules from moving this user",
    )
    pin.add_argument("--unpin", dest="pinned", action="store_const", const=False)
    for name, help_ in (
        ("pause", "stop automatic refills for a user"),
        ("resume", "resume automatic refills for a user"),
    ):
        p = add(name, help_)
        p.add_argument("user")
        p.add_argument("--actor", default=None)
    p = add("refill-now", "refill a user now, ignoring the period and the threshold")
    p.add_argument("user")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", default=None)
    p = add("history", "a user's ledger rows, newest first")
    p.add_argument("user")
    p.add_argument("--limit", type=int, default=50)
    p = add("sweep", "refill every due user in batches (the cron mode)")
    p.add_argument("--active-within", help="only users seen within this window, e.g. 30d")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--dry-run", action="store_true", help="show what would happen; write nothing")
    p.add_argument("--limit", type=int, default=None, help="scan at most N users")
    policy = add("policy", "policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_sub.add_parser(
        "check", help="validate a policy file and print the rules per tier", parents=[common]
    ).add_argument("file")
    return parser
