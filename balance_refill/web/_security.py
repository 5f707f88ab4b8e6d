"""The page's safety nets: security headers, CSRF tokens, and the used-form store that
makes a replayed form apply once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def csrf_token(request: Request) -> tuple[str, bool]:
    """The request's CSRF token (from its cookie), or a new one; True when it is new and
    must be set on the response."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(current) <= 100 and current.replace("-", "").replace("_", "").isalnum():
        return current, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=cookie_path(request),
        secure=request.url.scheme == "https" or _loopback(request),
        httponly=True,
        samesite="strict",
    )


def _loopback(request: Request) -> bool:
    host = request.url.hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def csrf_ok(request: Request, submitted: object) -> bool:
    """The double-submit check: the form's token equals the cookie's (constant time), and
    a browser-sent Origin, when present, is this site."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not isinstance(submitted, str) or not submitted:
        return False
    if not hmac.compare_digest(cookie.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            return False
    return True


def new_form_id() -> str:
    return secrets.token_urlsafe(16)


def replay_key(csrf: str, form_id: str) -> str:
    """The used-form store's key for one (CSRF token, form id) pair."""
    return hashlib.sha256(f"{csrf}\x00{form_id}".encode()).hexdigest()


class UsedForms:
    """Remembers which forms were applied, so a replayed form (same CSRF token and form
    id) applies once.

    With a collection (`balance_refill_web_forms` beside the balances), the claim is one
    atomic upsert on `_id`: it works across processes and replicas. Without one, a
    bounded in-process map (the last `size` forms) is used: enough against a double
    click, not across replicas.

    Each document records the action, user, actor and reason of one applied form, so the
    collection is also the web page's audit trail (it keeps the reason of a tier change
    or a pause, which the library's ledger row has no field for). It is never pruned;
    add a TTL index on `createdAt` if you want it to be.
    """

    def __init__(self, collection: Any | None, size: int = 10_000) -> None:
        self.collection = collection
        self.size = size
        self.memory: MutableMapping[str, dict[str, object]] = OrderedDict()

    async def claim(self, key: str, info: dict[str, object]) -> dict[str, object] | None:
        """Record `key` as used; None if it was new, else what its first use recorded."""
        now = datetime.now(UTC)
        if self.collection is None:
            if key in self.memory:
                return self.memory[key]
            self.memory[key] = {**info, "createdAt": now, "state": "applying"}
            while len(self.memory) > self.size:
                self.memory.pop(next(iter(self.memory)))
            return None
        before = await self.collection.find_one_and_update(
            {"_id": key},
            {"$setOnInsert": {**info, "createdAt": now, "state": "applying"}},
            upsert=True,
            return_document=False,  # ReturnDocument.BEFORE: None when this call inserted
        )
        return None if before is None else dict(before)

    async def finish(self, key: str, result: dict[str, object]) -> None:
        if self.collection is None:
            if key in self.memory:
                self.memory[key].update(result, state="applied")
            return
        await self.collection.update_one({"_id": key}, {"$set": {**result, "state": "applied"}})

    async def release(self, key: str) -> None:
        """Forget a claim whose operation was refused (nothing was applied)."""
        if self.collection is None:
            self.memory.pop(key, None)
            return
        await self.collection.delete_one({"_id": key, "state": "applying"})
