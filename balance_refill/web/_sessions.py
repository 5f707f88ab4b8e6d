"""The standalone server's sign-in: the admin token check, server-side sessions that
end at sign-out or expiry, and the rate limits on sign-in attempts.

Settings (the defaults of `Sessions` and `SignInLimits`):

* a session lasts at most 8 hours from sign-in, and ends after 30 minutes without a
  request; signing out deletes it on the server, so the old cookie no longer works;
* at most 1,000 sessions are kept (the oldest ends first); they live in the server's
  memory, so a restart signs everyone out (the server runs as one process);
* sign-in attempts: 5 per client address, one more every 12 seconds (5 a minute), and
  30 in total, one more every 2 seconds (30 a minute); beyond that 429 with
  `Retry-After`. A successful sign-in refills its address's allowance.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "br_session"
SESSION_TTL = 8 * 3600.0
SESSION_IDLE = 30 * 60.0
MAX_SESSIONS = 1_000

Clock = Callable[[], float]
"""Seconds, monotonic (time.monotonic by default; a fake one in tests)."""


def token_matches(given: str, token: str) -> bool:
    """The admin token check in constant time: both sides are hashed first, so neither
    the length nor the content of a wrong token changes how long it takes."""
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


@dataclass
class Session:
    actor: str
    started: float
    seen: float


class Sessions:
    """Server-side sessions: the cookie holds a random id, the server its hash and actor."""

    def __init__(
        self,
        *,
        ttl: float = SESSION_TTL,
        idle: float = SESSION_IDLE,
        size: int = MAX_SESSIONS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ttl, self.idle, self.size, self.clock = ttl, idle, size, clock
        self.live: OrderedDict[str, Session] = OrderedDict()

    def start(self, actor: str) -> str:
        """A new session for `actor`; returns the cookie value."""
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        self.live[_key(cookie)] = Session(actor, now, now)
        while len(self.live) > self.size:
            self.live.popitem(last=False)
        return cookie

    def actor(self, cookie: str | None) -> str | None:
        """The actor of a live session (and the session's idle timer restarts)."""
        if not cookie or len(cookie) > 100:
            return None
        key = _key(cookie)
        session = self.live.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.started > self.ttl or now - session.seen > self.idle:
            del self.live[key]
            return None
        session.seen = now
        return session.actor

    def binding(self, cookie: str | None) -> str:
        """What the CSRF token is bound to: this session (empty before sign-in)."""
        return _key(cookie) if cookie and self.actor(cookie) is not None else ""

    def end(self, cookie: str | None) -> None:
        if cookie:
            self.live.pop(_key(cookie), None)


class Bucket:
    """A token bucket: `size` attempts at once, one more every `every` seconds."""

    def __init__(self, size: int, every: float, now: float) -> None:
        self.size, self.every = size, every
        self.level, self.at = float(size), now

    def take(self, now: float) -> float:
        """0 if an attempt is allowed (and taken), else the seconds until one is."""
        self.level = min(self.size, self.level + (now - self.at) / self.every)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) * self.every


class SignInLimits:
    """Sign-in attempts per client address and in total."""

    def __init__(
        self,
        *,
        per_address: int = 5,
        address_every: float = 12.0,
        total: int = 30,
        total_every: float = 2.0,
        clock: Clock = time.monotonic,
        size: int = 10_000,
    ) -> None:
        self.per_address, self.address_every = per_address, address_every
        self.clock, self.size = clock, size
        self.total = Bucket(total, total_every, clock())
        self.addresses: OrderedDict[str, Bucket] = OrderedDict()

    def attempt(self, address: str) -> int:
        """0 if this address may try now (the attempt is counted), else `Retry-After`."""
        now = self.clock()
        bucket = self.addresses.get(address)
        if bucket is None:
            bucket = self.addresses[address] = Bucket(self.per_address, self.address_every, now)
            while len(self.addresses) > self.size:
                self.addresses.popitem(last=False)
        wait = bucket.take(now)
        if wait:
            return max(1, math.ceil(wait))
        wait = self.total.take(now)
        if wait:
            bucket.level += 1  # not this address's fault: give its attempt back
            return max(1, math.ceil(wait))
        return 0

    def succeeded(self, address: str) -> None:
        self.addresses.pop(address, None)
