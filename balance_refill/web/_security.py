"""The page's safety nets: security headers, CSRF tokens, and the used-form store that
makes a replayed form apply once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from balance_refill._store import Store

CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

CSRF_COOKIE = "br_csrf"
CSRF_FIELD = "csrf"


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (pages, errors, static
    files), and `Cache-Control: no-store` on everything but static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if not static and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cookie_path(request: Request) -> str:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + "/" if root else "/"


def csrf_secret(request: Request) -> tuple[str, bool]:
    """The request's CSRF secret (from its HttpOnly cookie), or a new one; True when it is
    new and must be set on the response."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(current) <= 100 and current.replace("-", "").replace("_", "").isalnum():
        return current, False
    return secrets.token_urlsafe(32), True


def csrf_token(secret: str, binding: str) -> str:
    """The form token: the cookie's secret bound to the session (or, in a host's app, to
    the signed-in actor), so a token from another session is refused."""
    mac = hmac.new(secret.encode(), b"csrf\x00" + binding.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=cookie_path(request),
        secure=request.url.scheme == "https" or loopback(request),
        httponly=True,
        samesite="strict",
    )


def loopback(request: Request) -> bool:
    host = request.url.hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def origin_ok(request: Request) -> bool:
    """A browser-sent Origin, when present, is exactly this site: scheme and host; the
    opaque `null` origin (sandboxed frames, some redirects) is refused."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or a browser that sends none: the token still counts
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return hmac.compare_digest(origin.strip().lower().encode(), expected.lower().encode())


def csrf_ok(request: Request, submitted: object, binding: str) -> bool:
    """The form's token matches the cookie's secret bound to `binding` (constant time),
    and the Origin is this site."""
    secret = request.cookies.get(CSRF_COOKIE, "")
    if not secret or not isinstance(submitted, str) or not submitted:
        return False
    expected = csrf_token(secret, binding)
    if not hmac.compare_digest(expected.encode(), submitted.encode()):
        return False
    return origin_ok(request)


def new_form_id() -> str:
    return secrets.token_urlsafe(16)


class UsedForms:
    """Remembers which intents were applied, so a replayed or repeated confirmation
    (same user, operation, values and reviewed state) applies once.

    With a collection (`balance_refill_web_forms` beside the balances), the claim is one
    insert with the intent key as `_id`: it works across processes and replicas. Without
    one, a bounded in-process map (the last `size` intents) is used. Every call goes
    through the library's store (its retries and `StorageError`).

    Each document records the action, user, actor and reason of one applied intent, so
    the collection is also the web page's audit trail: it keeps the reason of a tier
    change or a pause, which the library's ledger row has no field for, and a second
    document `row:<ledger row id>` finds it from the row. It is never pruned; add a TTL
    index on `createdAt` if you want it to be.
    """

    def __init__(self, collection: Any | None, size: int = 10_000) -> None:
        self.collection: Any = collection  # checked through self.store
        self.store = None if collection is None else Store(collection)
        self.size = size
        self.memory: MutableMapping[str, dict[str, object]] = OrderedDict()

    def _remember(self, key: str, doc: dict[str, object]) -> None:
        self.memory[key] = doc
        while len(self.memory) > self.size:
            self.memory.pop(next(iter(self.memory)))

    async def claim(self, key: str, info: dict[str, object]) -> dict[str, object] | None:
        """Record `key` as applying; None if it was new, else what its first use recorded."""
        doc = {**info, "createdAt": datetime.now(UTC), "state": "applying"}
        if self.store is None:
            if key in self.memory:
                return self.memory[key]
            self._remember(key, doc)
            return None
        if await self.store.try_insert(self.collection, {"_id": key, **doc}):
            return None
        prior = await self.store.find_one(self.collection, {"_id": key})
        return dict(prior) if prior is not None else {"state": "applying"}

    async def get(self, key: str) -> dict[str, object] | None:
        if self.store is None:
            return self.memory.get(key)
        found = await self.store.find_one(self.collection, {"_id": key})
        return None if found is None else dict(found)

    async def finish(self, key: str, result: dict[str, object]) -> None:
        """Mark `key` applied with its result; a ledger row also gets a `row:` document
        holding the reason, for the history."""
        if self.store is None:
            if key in self.memory:
                self.memory[key].update(result, state="applied")
                row = result.get("row")
                if row:
                    self._remember(f"row:{row}", dict(self.memory[key]))
            return
        await self.store.update_one(
            self.collection, {"_id": key}, {"$set": {**result, "state": "applied"}}
        )
        row = result.get("row")
        if row:
            applied = await self.store.find_one(self.collection, {"_id": key})
            if applied is not None:
                await self.store.try_insert(
                    self.collection, {**applied, "_id": f"row:{row}", "intent": key}
                )

    async def reasons(self, rows: list[str]) -> dict[str, str]:
        """The reasons recorded for these ledger row ids (one read on `_id`)."""
        keys = [f"row:{r}" for r in rows if r]
        if not keys:
            return {}
        if self.store is None:
            docs: list[Mapping[str, Any]] = [
                self.memory[k] | {"_id": k} for k in keys if k in self.memory
            ]
        else:
            docs = await self.store.iterate(self.collection, {"_id": {"$in": keys}})
        return {
            str(d["_id"])[4:]: str(d["reason"]) for d in docs if isinstance(d.get("reason"), str)
        }

    async def release(self, key: str) -> None:
        """Forget a claim whose operation was refused (nothing was applied)."""
        if self.store is None:
            self.memory.pop(key, None)
            return
        await self.store.delete_one(self.collection, {"_id": key, "state": "applying"})
