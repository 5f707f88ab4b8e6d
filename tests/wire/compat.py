"""Server-side fixes that let Node's `mongodb` driver (and so Mongoose and LibreChat's
`@librechat/data-schemas`) talk to a mongoeco wire server.

Runs inside the wire-server process (Python 3.13, beside mongoeco); it imports nothing
from `balance_refill`. Call `apply()` once before the server starts; calling it again
does nothing. Checked with mongoeco 4.11.0: any other version is refused, because the
patched method is private and may change.

Two differences from a real server, both in the replies, fixed in one place
(`AsyncMongoEcoProxyServer._render_wire_result`, which encodes every reply):

1. A cursor's `id` is sent as a 32-bit int. A server always sends a 64-bit long, and the
   Node driver reads it as a `Long` only: every find, aggregate, listIndexes and
   listCollections from Node fails with `BSON element "id" is missing`. PyMongo accepts
   either, so sending int64 changes nothing for the Python side.
2. `create` of a collection that already exists answers without an error code. A server
   answers code 48 (`NamespaceExists`), which Mongoose's `Model.init()` (and
   `createCollection`) treat as success; without the code, model creation rejects.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

CHECKED = ((4, 11), (4, 12))
"""mongoeco versions this module was checked with: >= 4.11, < 4.12."""

NAMESPACE_EXISTS = 48

_PATCHED = "_balance_refill_compat"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_version() -> str:
    """Return the installed mongoeco version; raise if it is outside the checked range."""
    installed = version("mongoeco")
    low, high = CHECKED
    if not low <= _version_tuple(installed) < high:
        raise RuntimeError(
            f"tests/wire/compat.py was checked with mongoeco >= {'.'.join(map(str, low))}, "
            f"< {'.'.join(map(str, high))}; found {installed}. Check that the two reply "
            "fixes (int64 cursor id, code 48 on create) are still needed and still apply "
            "to AsyncMongoEcoProxyServer._render_wire_result, then widen CHECKED."
        )
    return installed


def fix_reply(command_name: str, reply: dict[str, Any]) -> None:
    """Rewrite one reply document in place as a real server would have sent it."""
    from bson.int64 import Int64

    cursor = reply.get("cursor")
    if isinstance(cursor, dict):
        cursor_id = cursor.get("id")
        if isinstance(cursor_id, int) and not isinstance(cursor_id, bool | Int64):
            cursor["id"] = Int64(cursor_id)
    if (
        command_name.lower() == "create"
        and not reply.get("ok")
        and "code" not in reply
        and "already exists" in str(reply.get("errmsg", ""))
    ):
        reply["code"] = NAMESPACE_EXISTS
        reply["codeName"] = "NamespaceExists"


def apply() -> None:
    """Patch mongoeco's wire server (idempotent)."""
    check_version()
    from mongoeco.wire import proxy

    server_class = proxy.AsyncMongoEcoProxyServer
    if getattr(server_class, _PATCHED, False):
        return
    render = server_class._render_wire_result

    def _render_wire_result(self: Any, header: Any, request_id: int, state: Any) -> Any:
        if isinstance(state.result, dict):
            fix_reply(state.command_name, state.result)
        return render(self, header, request_id, state)

    server_class._render_wire_result = _render_wire_result
    setattr(server_class, _PATCHED, True)
