"""The command line: the argument parser, and user ids and amounts read from text.

Global options (`--json`, `-v`, `--policy`, `--id-type`, the database flags) are accepted
before or after the command; a usage error names the parser it belongs to (a bad flag
after `grant` prints `grant`'s usage), through `UsageError`.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from bson import ObjectId

from balance_refill import __version__
from balance_refill.periods import parse_interval

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT, EXIT_CONFLICT = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

UserId = str | int | ObjectId
"""A user id as the library takes it."""

UserIdMode = Literal["auto", "objectid", "str"]
"""How the refiller stores ids (its `user_ids` argument); int ids are kept by every mode."""

USER_ID_MODES: dict[str, UserIdMode] = {"auto": "auto", "objectid": "objectid", "str": "str"}
"""The refiller's `user_ids` for each --id-type (`int` reads ids as ints, stored as "auto")."""

USER_HELP = "the user id: 24 hex digits are an ObjectId (LibreChat), else a string; see --id-type"

_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")

MAX_DAYS = 3650
MAX_REQUEST_ID = 256
MAX_SEED = 2**32 - 1

EXIT_CODES = """\
exit codes: 0 ok (also a refill-now that had nothing to add); 1 refused (unknown user,
insufficient credits, the sweep lease is held, a sweep with failed users); 2 bad input,
configuration, or a database that cannot be used (unreachable, a malformed MONGODB_URI);
3 the --request-id was already used with other arguments (nothing changed: retry with
the original arguments, or use a new key for a new request); 130 interrupted (Ctrl-C).
An admin write (grant, set-balance, set-tier, pause, resume, refill-now) carries an
idempotency key: --request-id KEY, else a generated one, shown in its result; after a
database error or an interruption the error line names it, to retry at most once.
Errors are one line on stderr. With --json each stream holds exactly one JSON object:
stdout the result (nothing on failure), stderr the status {"code": ..., "error": ...,
"notes": [...], "log": [...]} (error, notes and log only when there are any).

environment: MONGODB_URI (none: a temporary in-memory database, nothing saved),
BALANCE_REFILL_POLICY, BALANCE_REFILL_DATABASE, BALANCE_REFILL_BALANCES_COLLECTION,
BALANCE_REFILL_TRANSACTIONS_COLLECTION, BALANCE_REFILL_LEASES_COLLECTION,
BALANCE_REFILL_POLICIES_COLLECTION (the stored policy; default balance_refill_policies).
Without --policy or BALANCE_REFILL_POLICY, commands use the stored active policy version."""


class CliError(Exception):
    """A usage or configuration problem (exit code 2)."""


class Refused(Exception):
    """A refusal the CLI words itself, such as a correction below 0 (exit code 1)."""


class UsageError(Exception):
    """A command line argparse refused; `parser` is the (sub)command it belongs to."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises `UsageError` instead of printing and exiting, so the
    CLI can print the right usage (or a JSON error) and return 2. `commands` (on the
    top-level parser) maps each command, and `policy check`, to its parser."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def parse_user(text: str, id_type: str) -> UserId:
    """A user id from the command line: `auto` reads 24 hex digits as an ObjectId
    (LibreChat), anything else as a string; `str`, `int` and `objectid` force a type.
    Leading or trailing whitespace is refused whatever the type: ids are compared exactly,
    so `" u "` would silently be another user than `"u"`."""
    if not text.strip():
        raise CliError(f"user id {text!r} is empty or only whitespace")
    if text != text.strip():
        raise CliError(
            f"user id {text!r} has leading or trailing whitespace; ids are compared exactly, "
            f"so it would be another user than {text.strip()!r}: pass the id without it"
        )
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


def interval_arg(text: str) -> str:
    """A window such as `30d` or `1mo`, checked here so the error names the flag."""
    try:
        parse_interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (None: no upper bound)."""
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number {span}, got {text!r}"
            ) from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {span}, got {value}")
        return value

    return parse


# The global options: (flags, keyword arguments). Each command accepts all of them after
# its name too, and shows in its --help only those it uses.
_GLOBALS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--json",), {"action": "store_true", "help": "machine-readable output (JSON on stdout)"}),
    (("-v", "--verbose"), {"action": "count", "help": "more logging on stderr (-vv: debug)"}),
    (
        ("--policy",),
        {
            "metavar": "FILE",
            "help": "policy YAML (ours or librechat.yaml); env BALANCE_REFILL_POLICY",
        },
    ),
    (
        ("--librechat-auto-refill",),
        {
            "choices": ("on", "off"),
            "help": "with a librechat.yaml as --policy whose autoRefillEnabled is false "
            "(as it must be beside a running LibreChat): on refills on its amount and "
            "interval, off refills nobody; without it such a file is refused",
        },
    ),
    (
        ("--database",),
        {
            "metavar": "NAME",
            "help": "database (env BALANCE_REFILL_DATABASE; default: the database in "
            "MONGODB_URI's path, else LibreChat)",
        },
    ),
    (
        ("--balances-collection",),
        {"metavar": "NAME", "help": "env BALANCE_REFILL_BALANCES_COLLECTION; default: balances"},
    ),
    (
        ("--transactions-collection",),
        {
            "metavar": "NAME",
            "help": "env BALANCE_REFILL_TRANSACTIONS_COLLECTION; default: transactions",
        },
    ),
    (
        ("--id-type",),
        {
            "choices": ["auto", "objectid", "str", "int"],
            "help": "how to read USER: auto (default) = 24 hex digits are an ObjectId "
            "(LibreChat), anything else a string",
        },
    ),
)
_DEFAULTS = {"json": False, "verbose": 0, "id_type": "auto"}

_USES_NO_DATABASE = {"--json", "--verbose"}
_USES_NO_USER = _USES_NO_DATABASE | {
    "--policy",
    "--librechat-auto-refill",
    "--database",
    "--balances-collection",
    "--transactions-collection",
}


def _add_globals(parser: argparse.ArgumentParser, shown: set[str] | None) -> None:
    """The global options on `parser`: with their defaults on the top-level parser
    (`shown` None); after a command, set only when given (so they do not undo the same
    flag given before the command) and listed in --help only if in `shown`."""
    group = parser.add_argument_group(
        "global options (before or after the command)"
        if shown is None
        else "global options (also accepted before the command)"
    )
    for flags, kwargs in _GLOBALS:
        options = dict(kwargs)
        dest = flags[-1].lstrip("-").replace("-", "_")
        if shown is None:
            options["default"] = _DEFAULTS.get(dest)
            group.add_argument(*flags, dest=dest, **options)
            continue
        options["default"] = argparse.SUPPRESS
        if flags[-1] not in shown:
            options["help"] = argparse.SUPPRESS
        # -v counts again after the command; the two counts are added in `parse_args`.
        group.add_argument(*flags, dest="verbose_after" if dest == "verbose" else dest, **options)


_EVERYTHING = {flags[-1] for flags, _ in _GLOBALS}

COMMAND_HOOKS: list[Callable[[Callable[..., argparse.ArgumentParser]], None]] = []
"""Commands defined beside the code that runs them (`_simulate`), which adds itself here
on import; each hook gets `_Commands.add`."""


def request_id_arg(text: str) -> str:
    """An idempotency key: 1 to 256 characters, no surrounding whitespace."""
    if not text.strip() or text != text.strip() or len(text) > MAX_REQUEST_ID:
        raise argparse.ArgumentTypeError(
            f"must be 1 to {MAX_REQUEST_ID} characters without surrounding whitespace, "
            f"got {text[:40]!r}"
        )
    return text


def _request_id(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--request-id",
        metavar="KEY",
        type=request_id_arg,
        default=None,
        help="idempotency key: a retry with the same KEY (after an error, say) applies "
        "at most once; the same KEY with other arguments is refused, exit 3. Default: a "
        "generated key, printed on stderr (and under --json) so you can retry with it",
    )


def _actor(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor",
        metavar="NAME",
        default=None,
        help="who did it, for the ledger (default: cli:<login>)",
    )


def _create(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--create",
        action="store_true",
        help="create the user first if unknown (starting at the policy's start_balance); "
        "without it an unknown user is refused, exit 1",
    )


class _Commands:
    """Adds the commands to the top-level parser, keeping each command's parser."""

    def __init__(self, parser: Parser) -> None:
        self.sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add(self, name: str, help_: str, description: str = "", *, uses: set[str]) -> Parser:
        description = description or f"{help_[0].upper()}{help_[1:]}."
        p = self.sub.add_parser(name, help=help_, description=description)
        _add_globals(p, uses)
        self.parsers[name] = p
        return p

    def demo(self) -> None:
        demo = self.add(
            "demo",
            "simulate five chat users over 90 days with a fixed demo policy",
            "Simulate five chat users over --days days with a fixed demo policy (10000 "
            "credits every 30d, top_up, new users start with 20000) and a simulated clock, "
            "then explain the figures. Runs on a temporary in-memory database unless "
            "MONGODB_URI is set; then in the database balance_refill_demo, whose balances "
            "and transactions collections it drops first. --json prints a summary instead "
            "of the timeline.",
            uses=_USES_NO_DATABASE,
        )
        demo.add_argument(
            "--days",
            metavar="N",
            type=bounded_int(1, MAX_DAYS),
            default=90,
            help=f"days to simulate, 1 to {MAX_DAYS} (default 90)",
        )
        demo.add_argument(
            "--seed",
            metavar="N",
            type=bounded_int(0, MAX_SEED),
            default=7,
            help=f"random seed, 0 to {MAX_SEED} (default 7); the same seed gives the same run",
        )

    def credits(self) -> None:
        """`show`, `grant`, `set-balance`."""
        self.add(
            "show",
            "show a user's balance and refill state",
            "Show a user's balance and refill state (read only). An unknown user is exit 1.",
            uses=_EVERYTHING,
        ).add_argument("user", help=USER_HELP)
        for name, help_, description in (
            (
                "grant",
                "add credits by hand (negative: a correction)",
                "Add AMOUNT credits by hand, with a ledger row. A negative AMOUNT is a "
                "correction, refused (exit 1) if it would take the balance below 0 unless "
                "--allow-negative.",
            ),
            (
                "set-balance",
                "set a user's balance",
                "Set a user's balance to AMOUNT; the ledger row records the difference.",
            ),
        ):
            p = self.add(name, help_, description, uses=_EVERYTHING)
            p.add_argument("user", help=USER_HELP)
            p.add_argument(
                "amount", type=amount_arg, help="credits: whole (1_000) or fractional (12.5)"
            )
            p.add_argument("--reason", metavar="TEXT", required=True, help="why, for the ledger")
            _actor(p)
            _request_id(p)
            _create(p)
            if name == "grant":
                p.add_argument(
                    "--allow-negative",
                    action="store_true",
                    help="let a correction take the balance below 0",
                )

    def refills(self) -> None:
        """`refill-now`, `history`."""
        p = self.add(
            "refill-now",
            "refill a user now, ignoring the period and the threshold",
            "Refill a user now, ignoring the period and the threshold (a paused user too), "
            "with a ledger row. A refill that would change nothing (a top_up balance "
            "already at the amount, the tier's max_balance reached, or LibreChat's own "
            "refill still settling) writes nothing and prints why; that is exit 0, not a "
            "refusal, since the balance is already what a refill would give.",
            uses=_EVERYTHING,
        )
        p.add_argument("user", help=USER_HELP)
        p.add_argument("--reason", metavar="TEXT", required=True, help="why, for the ledger")
        _actor(p)
        _request_id(p)
        _create(p)
        p = self.add(
            "history",
            "a user's ledger rows, newest first",
            "A user's ledger rows, newest first. An unknown user is exit 1.",
            uses=_EVERYTHING,
        )
        p.add_argument("user", help=USER_HELP)
        p.add_argument(
            "--limit",
            metavar="N",
            type=bounded_int(1, 1000),
            default=50,
            help="at most N rows, 1 to 1000 (default 50)",
        )

    def switches(self) -> None:
        """`set-tier`, `pause`, `resume`: per-user settings of an existing user."""
        p = self.add(
            "set-tier",
            "move a user to another tier (effective at the next refill)",
            "Move a user to another tier of the policy file; it takes effect at the user's "
            "next refill. An unknown user is exit 1.",
            uses=_EVERYTHING,
        )
        p.add_argument("user", help=USER_HELP)
        p.add_argument("tier", help="a tier of the policy file")
        _actor(p)
        _request_id(p)
        p.add_argument("--reason", metavar="TEXT", default=None, help="why, for the ledger")
        pin = p.add_mutually_exclusive_group()
        pin.add_argument(
            "--pin",
            dest="pinned",
            action="store_const",
            const=True,
            default=None,
            help="keep activity rules from moving this user",
        )
        pin.add_argument(
            "--unpin",
            dest="pinned",
            action="store_const",
            const=False,
            help="let activity rules move this user again",
        )
        for name, help_ in (
            ("pause", "stop automatic refills for a user (refill-now still works)"),
            ("resume", "resume automatic refills for a user"),
        ):
            p = self.add(
                name,
                help_,
                f"{help_[0].upper()}{help_[1:]}. An unknown user is exit 1.",
                uses=_EVERYTHING,
            )
            p.add_argument("user", help=USER_HELP)
            _actor(p)
            _request_id(p)
            p.add_argument("--reason", metavar="TEXT", default=None, help="why, for the ledger")

    def sweep(self) -> None:
        p = self.add(
            "sweep",
            "refill every due user in batches (the cron mode)",
            "Refill every due user in batches (the cron mode). Only one sweep runs at a "
            "time (a held lease is exit 1); users the sweep could not refill are exit 1.",
            uses=_USES_NO_USER,
        )
        p.add_argument(
            "--active-within",
            metavar="WINDOW",
            type=interval_arg,
            help="only users seen within this window, e.g. 30d (s, m, h, d, w, mo)",
        )
        p.add_argument(
            "--batch-size",
            metavar="N",
            type=bounded_int(1, 10_000),
            default=2_000,
            help="users per batch, 1 to 10000 (default 2000)",
        )
        p.add_argument(
            "--dry-run", action="store_true", help="show what would happen; write nothing"
        )
        p.add_argument(
            "--limit",
            metavar="N",
            type=bounded_int(1),
            default=None,
            help="read at most N due users",
        )

    def serve(self) -> None:
        p = self.add(
            "serve",
            "run the admin web page (needs the web extra)",
            "Run the admin web page with uvicorn (pip install 'balance_refill[web]'). "
            "Against MONGODB_URI with --policy, or, without MONGODB_URI, on embedded demo "
            "data labelled as such on every page. Sign-in needs BALANCE_REFILL_ADMIN_TOKEN; "
            "without it the server refuses to start unless bound to 127.0.0.1 with "
            "--insecure-local. Refusing to start is exit 2.",
            uses=_USES_NO_DATABASE | {"--policy", "--librechat-auto-refill"},
        )
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        p.add_argument(
            "--port", type=bounded_int(1, 65_535), default=8080, help="port (default 8080)"
        )
        p.add_argument(
            "--insecure-local",
            action="store_true",
            help="no sign-in; only on 127.0.0.1, for a local look",
        )

    def policy(self) -> None:
        policy = self.add(
            "policy",
            "policy files, and the stored, versioned policy",
            "Check a policy file, or manage the policy stored in the database: numbered "
            "versions (push), exactly one of them active (activate), each change recorded "
            "with who and why. Commands given no --policy use the active stored version.",
            uses=_USES_NO_DATABASE,
        )
        actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
        stored = _USES_NO_DATABASE | {"--database"}

        def action(
            name: str, help_: str, description: str, uses: set[str]
        ) -> argparse.ArgumentParser:
            p = actions.add_parser(name, help=help_, description=description)
            _add_globals(p, uses)
            self.parsers[f"policy {name}"] = p
            return p

        action(
            "check",
            "validate a policy file and print the rules per tier",
            "Validate a policy file (ours or librechat.yaml) and print the "
            "effective rules per tier; an invalid file is exit 2, naming the field.",
            _USES_NO_DATABASE,
        ).add_argument("file")
        p = action(
            "push",
            "store a policy file as the next version (not yet active)",
            "Validate a policy file and store it as the next numbered version, with who "
            "and why; it is not active until `policy activate N`. An invalid file is "
            "exit 2 and stores nothing.",
            stored,
        )
        p.add_argument("file")
        p.add_argument("--reason", metavar="TEXT", required=True, help="why, for the record")
        _actor(p)
        action(
            "list",
            "the stored versions and the activation history",
            "The stored policy versions, oldest first, with the active one marked, and "
            "the activation history, newest first (who activated which version, when, why).",
            stored,
        )
        action(
            "show",
            "one stored version: its rules per tier and who pushed it",
            "One stored version: who pushed it, when and why, and its rules per tier. "
            "An unknown version is exit 1.",
            stored,
        ).add_argument("version", type=bounded_int(1), help="the version number")
        p = action(
            "diff",
            "the settings that differ between two stored versions",
            "The settings that differ between versions A and B (per tier, rules included). "
            "An unknown version is exit 1.",
            stored,
        )
        p.add_argument("a", metavar="A", type=bounded_int(1), help="a version number")
        p.add_argument("b", metavar="B", type=bounded_int(1), help="another version number")
        p = action(
            "activate",
            "make a stored version the active one (roll back: activate an older one)",
            "Make version N the active policy, recording who, when and why. Exactly one "
            "version is active; rolling back is activating an older one. An unknown "
            "version is exit 1 and changes nothing.",
            stored,
        )
        p.add_argument("version", type=bounded_int(1), help="the version number")
        p.add_argument("--reason", metavar="TEXT", required=True, help="why, for the record")
        _actor(p)


def build_parser() -> Parser:
    parser = Parser(
        prog="balance-refill",
        description="Keep chat users' credits topped up (LibreChat-compatible).\n"
        "The connection comes from MONGODB_URI; without it, a temporary in-memory\n"
        "database (nothing is saved between commands).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_globals(parser, None)
    commands = _Commands(parser)
    commands.demo()
    commands.credits()
    commands.switches()
    commands.refills()
    commands.sweep()
    commands.serve()
    commands.policy()
    for hook in COMMAND_HOOKS:
        hook(commands.add)
    parser.commands = commands.parsers
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse `argv`; a usage problem raises `UsageError` naming the parser it belongs to;
    `--help` and `--version` print and raise SystemExit(0), as argparse does."""
    parser = build_parser()
    args, extras = parser.parse_known_args(list(argv))
    if extras:
        name = f"policy {args.policy_command}" if args.command == "policy" else args.command
        target = parser.commands.get(name, parser)
        words = list(argv)
        first = words.index(extras[0]) if extras[0] in words else len(words)
        if args.command not in words[:first]:  # given before the command
            target = parser
        target.error(f"unrecognized arguments: {' '.join(extras)}")
    args.verbose += getattr(args, "verbose_after", 0)
    return args
