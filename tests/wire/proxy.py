"""A small TCP forwarder on 127.0.0.1 that adds latency and cuts connections mid-stream.

It sits between a MongoDB driver and a wire server and frames the MongoDB wire protocol
(every message starts with its int32 length), so it can act on whole requests:

- `delay`: seconds added to each message in each direction (a round trip gains twice
  that; sub-millisecond delays are honoured, see `_sleep_until`); messages keep their
  order and are not throttled (a queue per direction); `stats.mean_hold` is the latency
  really added per message;
- `cut_rate`: the chance that an eligible request (`commands`; by default anything but
  the handshake) is cut. A cut is, with chance `after_apply`, made *after* the server
  applied the request: the request is forwarded, its reply is dropped and both sides
  are closed (the driver sees a lost reply); otherwise the request is dropped and both
  sides are closed before the server sees it;
- `cut_next()` cuts the next eligible request on demand, `cut_all()` closes every
  connection now.

Bounded: at most `max_connections` at a time (more are closed at once and counted as
refused), at most `max_buffered` bytes queued per direction of a connection (reading
pauses until the queue drains), and no message larger than `max_message` (the
connection is closed).

    async with Proxy("127.0.0.1", 27017, delay=0.001, cut_rate=0.01) as proxy:
        client = AsyncMongoClient(proxy.uri)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
OP_MSG, OP_QUERY, OP_COMPRESSED = 2013, 2004, 2012
HANDSHAKE = frozenset({"hello", "ismaster", "isMaster"})
DEFAULT_MAX_MESSAGE = 48 * 1024 * 1024  # MongoDB's own limit
COARSE = 0.002  # seconds: below this a delay's wait is slept in a thread (`_sleep_until`)
SLEEPERS = 32  # threads for those waits (one per direction of a busy connection)


def command_name(message: bytes) -> str:
    """The command a request message carries ('' when it cannot be read)."""
    if len(message) < HEADER.size:
        return ""
    opcode = HEADER.unpack_from(message)[3]
    if opcode == OP_MSG:
        at = HEADER.size + 4  # flagBits
        if len(message) <= at or message[at] != 0:  # first section: kind 0, the body
            return ""
        at += 1 + 4  # kind, then the document's int32 size
    elif opcode == OP_QUERY:
        at = HEADER.size + 4
        end = message.find(b"\x00", at)  # fullCollectionName
        if end < 0:
            return ""
        at = end + 1 + 4 + 4 + 4  # numberToSkip, numberToReturn, the document's size
    elif opcode == OP_COMPRESSED:
        return "compressed"
    else:
        return ""
    at += 1  # the first element's type byte; its name follows
    end = message.find(b"\x00", at)
    if end < 0:
        return ""
    return message[at:end].decode("utf-8", "replace")


@dataclass
class ProxyStats:
    """What the proxy did (counts since it started)."""

    connections: int = 0
    refused: int = 0
    requests: int = 0
    replies: int = 0
    cuts_before_send: int = 0
    cuts_after_apply: int = 0
    oversized: int = 0
    cut_commands: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0  # messages written on, either way
    held_seconds: float = 0.0  # their total time inside the proxy (delay and queueing)

    @property
    def mean_hold(self) -> float:
        """Seconds a forwarded message spent in the proxy, on average: the latency it
        really added per direction (at least `delay`)."""
        return self.held_seconds / self.forwarded if self.forwarded else 0.0

    @property
    def cuts(self) -> int:
        return self.cuts_before_send + self.cuts_after_apply


class _Pipe:
    """One direction of one connection: messages queued with the time they arrived."""

    def __init__(self, writer: asyncio.StreamWriter, proxy: Proxy) -> None:
        self.writer = writer
        self.proxy = proxy
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.buffered = 0
        self.room = asyncio.Event()
        self.room.set()

    async def put(self, message: bytes) -> None:
        arrived = asyncio.get_running_loop().time()
        while self.buffered and self.buffered + len(message) > self.proxy.max_buffered:
            self.room.clear()
            await self.room.wait()
        self.buffered += len(message)
        self.queue.put_nowait((arrived, message))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.proxy.stats
        while (item := await self.queue.get()) is not None:
            arrived, message = item
            await self.proxy._sleep_until(arrived + self.proxy.delay)
            self.writer.write(message)
            stats.forwarded += 1
            stats.held_seconds += loop.time() - arrived
            await self.writer.drain()
            self.buffered -= len(message)
            self.room.set()


class _Connection:
    """A client connection and its server connection, forwarded message by message."""

    def __init__(
        self,
        proxy: Proxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.up = _Pipe(self.server_writer, proxy)
        self.down = _Pipe(self.client_writer, proxy)
        self.drop_reply_to: int | None = None  # the request whose reply is to be dropped
        self.closed = asyncio.Event()

    async def _read(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            header = await reader.readexactly(HEADER.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = HEADER.unpack_from(header)[0]
        if length < HEADER.size or length > self.proxy.max_message:
            self.proxy.stats.oversized += 1
            return None
        try:
            return header + await reader.readexactly(length - HEADER.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _upstream(self) -> None:
        while (message := await self._read(self.client_reader)) is not None:
            if self.drop_reply_to is not None:
                continue  # cut: nothing more goes through
            self.proxy.stats.requests += 1
            cut = self.proxy._cut_decision(command_name(message))
            if cut == "before":
                return  # dropped unsent; the connection closes
            if cut == "after":
                self.drop_reply_to = HEADER.unpack_from(message)[1]
            await self.up.put(message)

    async def _downstream(self) -> None:
        while (message := await self._read(self.server_reader)) is not None:
            if self.drop_reply_to is not None and HEADER.unpack_from(message)[2] == (
                self.drop_reply_to
            ):
                self.proxy.stats.cuts_after_apply += 1
                self.close()  # the server applied it; its reply never arrives
                return
            self.proxy.stats.replies += 1
            await self.down.put(message)
        self.down.queue.put_nowait(None)  # deliver what the server sent, then close

    def close(self) -> None:
        self.closed.set()

    async def _closing_after(self, part: Coroutine[Any, Any, None]) -> None:
        """Run one part of the forwarding; when it ends (or its peer is gone), close."""
        with contextlib.suppress(ConnectionError):
            await part
        self.close()

    async def serve(self) -> None:
        parts = (self._upstream(), self._downstream(), self.up.run(), self.down.run())
        tasks = [asyncio.create_task(self._closing_after(part)) for part in parts]
        try:
            await self.closed.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for writer in (self.client_writer, self.server_writer):
                _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once, unsent bytes dropped (a reset, as a cut cable or a killed peer gives)."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


class Proxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` (see the module doc)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        cut_rate: float = 0.0,
        after_apply: float = 1.0,
        commands: Iterable[str] | None = None,
        max_connections: int = 256,
        max_buffered: int = 1024 * 1024,
        max_message: int = DEFAULT_MAX_MESSAGE,
        seed: int | None = None,
    ) -> None:
        if delay < 0 or not 0 <= cut_rate <= 1 or not 0 <= after_apply <= 1:
            raise ValueError("delay must be >= 0, cut_rate and after_apply within [0, 1]")
        if max_connections < 1 or max_buffered < 1 or max_message < HEADER.size:
            raise ValueError("max_connections, max_buffered and max_message must be positive")
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.delay = delay
        self.cut_rate = cut_rate
        self.after_apply = after_apply
        self.commands = frozenset(commands) if commands is not None else None
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.max_message = max_message
        self.stats = ProxyStats()
        self._random = random.Random(seed)
        self._on_demand: list[bool] = []  # after_apply of each requested cut, in order
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._sleeper: ThreadPoolExecutor | None = None

    @property
    def uri(self) -> str:
        """A driver URI through the proxy (a direct connection: the proxy is one server)."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def eligible(self, command: str) -> bool:
        if self.commands is not None:
            return command in self.commands
        return command not in HANDSHAKE

    def cut_next(self, *, after_apply: bool = True, count: int = 1) -> None:
        """Cut the next `count` eligible requests, whatever the rate."""
        self._on_demand.extend([after_apply] * count)

    def cut_all(self) -> int:
        """Close every open connection now; returns how many."""
        for connection in self._connections:
            connection.close()
        return len(self._connections)

    async def _sleep_until(self, due: float) -> None:
        """Wait until loop time `due`. The event loop's timers are only good to about a
        millisecond (epoll's resolution), too coarse for a 0.25 ms delay: the last
        stretch is slept in a thread, whose `time.sleep` is good to tens of microseconds."""
        loop = asyncio.get_running_loop()
        wait = due - loop.time()
        if wait > COARSE:
            await asyncio.sleep(wait - COARSE)
            wait = due - loop.time()
        if wait > 0:
            if self._sleeper is None:
                self._sleeper = ThreadPoolExecutor(SLEEPERS, thread_name_prefix="proxy-delay")
            await loop.run_in_executor(self._sleeper, time.sleep, wait)

    def _cut_decision(self, command: str) -> str | None:
        if not self.eligible(command):
            return None
        if self._on_demand:
            after = self._on_demand.pop(0)
        elif self.cut_rate and self._random.random() < self.cut_rate:
            after = self._random.random() < self.after_apply
        else:
            return None
        self.stats.cut_commands[command] += 1
        if not after:
            self.stats.cuts_before_send += 1
            return "before"
        return "after"  # counted when the reply is dropped

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            self.stats.refused += 1
            _abort(writer)
            return
        try:
            server = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self.stats.connections += 1
        connection = _Connection(self, (reader, writer), server)
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)

    async def start(self) -> Proxy:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(self._accept(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._server = await asyncio.start_server(accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut_all()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()
        if self._sleeper is not None:
            self._sleeper.shutdown(wait=True)
            self._sleeper = None

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
