"""The cutting proxy (tests/wire/proxy.py) on its own: forwarding, delay, cuts before and
after the server applied a request, its bounds; one test through the real driver."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import bson
import pytest

from .wire import backend
from .wire.proxy import COARSE, HEADER, OP_MSG, OP_QUERY, Proxy, _Pipe, command_name


def op_msg(request_id: int, doc: dict[str, Any], response_to: int = 0) -> bytes:
    body = struct.pack("<I", 0) + b"\x00" + bson.encode(doc)
    return HEADER.pack(HEADER.size + len(body), request_id, response_to, OP_MSG) + body


def op_query(request_id: int, doc: dict[str, Any]) -> bytes:
    body = struct.pack("<I", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + bson.encode(doc)
    return HEADER.pack(HEADER.size + len(body), request_id, 0, OP_QUERY) + body


class EchoServer:
    """A wire-framed server that records each request (it 'applies' it) and answers it."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handlers: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                length, request_id, _, _ = HEADER.unpack(header)
                message = header + await reader.readexactly(length - HEADER.size)
                self.applied.append(command_name(message))
                writer.write(op_msg(request_id + 1000, {"ok": 1}, response_to=request_id))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = server.server.sockets[0].getsockname()[1]
    yield server
    server.server.close()
    for task in server.handlers:
        task.cancel()
    await asyncio.gather(*server.handlers, return_exceptions=True)


async def roundtrip(
    proxy: Proxy, *messages: bytes
) -> tuple[list[int], asyncio.StreamReader, asyncio.StreamWriter]:
    """Send each message, read each reply; the ids the replies answer (stops at EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    answered: list[int] = []
    for message in messages:
        writer.write(message)
        await writer.drain()
        try:
            header = await reader.readexactly(HEADER.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        length, _, response_to, _ = HEADER.unpack(header)
        await reader.readexactly(length - HEADER.size)
        answered.append(response_to)
    return answered, reader, writer


async def at_eof(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


def test_command_name_reads_op_msg_and_op_query() -> None:
    """The command is the first key of the body, in OP_MSG and in legacy OP_QUERY."""
    assert command_name(op_msg(1, {"findAndModify": "balances", "query": {}})) == "findAndModify"
    assert command_name(op_query(1, {"isMaster": 1})) == "isMaster"
    assert command_name(b"short") == ""


async def test_forwards_requests_and_replies_in_order(echo: EchoServer) -> None:
    """Without cuts every request reaches the server and every reply the client."""
    async with Proxy("127.0.0.1", echo.port) as proxy:
        answered, _, writer = await roundtrip(
            proxy, op_msg(1, {"insert": "t"}), op_msg(2, {"find": "t"}), op_msg(3, {"ping": 1})
        )
        writer.close()
    assert answered == [1, 2, 3]
    assert echo.applied == ["insert", "find", "ping"]
    assert (proxy.stats.requests, proxy.stats.replies, proxy.stats.cuts) == (3, 3, 0)


async def test_cut_after_apply_drops_the_reply_of_an_applied_request(echo: EchoServer) -> None:
    """A cut after apply: the server got the request, the client gets no reply, only EOF."""
    async with Proxy("127.0.0.1", echo.port) as proxy:
        proxy.cut_next(after_apply=True)
        answered, reader, writer = await roundtrip(proxy, op_msg(7, {"update": "t"}))
        assert await at_eof(reader)
        writer.close()
    assert answered == []
    assert echo.applied == ["update"]
    assert (proxy.stats.cuts_after_apply, proxy.stats.cuts_before_send) == (1, 0)


async def test_cut_before_send_never_reaches_the_server(echo: EchoServer) -> None:
    """A cut before send: the connection closes and the server never sees the request."""
    async with Proxy("127.0.0.1", echo.port) as proxy:
        proxy.cut_next(after_apply=False)
        answered, reader, writer = await roundtrip(proxy, op_msg(7, {"update": "t"}))
        assert await at_eof(reader)
        writer.close()
    assert answered == []
    assert echo.applied == []
    assert (proxy.stats.cuts_after_apply, proxy.stats.cuts_before_send) == (0, 1)


async def test_rate_cuts_only_the_commands_named(echo: EchoServer) -> None:
    """With rate 1 and `commands`, a named command is cut and the others pass."""
    async with Proxy("127.0.0.1", echo.port, cut_rate=1.0, commands={"delete"}) as proxy:
        answered, _, writer = await roundtrip(
            proxy, op_msg(1, {"find": "t"}), op_msg(2, {"delete": "t"}), op_msg(3, {"find": "t"})
        )
        writer.close()
    assert answered == [1]
    assert echo.applied == ["find", "delete"]
    assert proxy.stats.cut_commands == {"delete": 1}


async def test_the_handshake_is_never_cut_by_default(echo: EchoServer) -> None:
    """By default a rate cuts anything but `hello`/`isMaster`."""
    async with Proxy("127.0.0.1", echo.port, cut_rate=1.0, after_apply=0.0) as proxy:
        answered, _, writer = await roundtrip(
            proxy, op_query(1, {"isMaster": 1}), op_msg(2, {"hello": 1}), op_msg(3, {"ping": 1})
        )
        writer.close()
    assert answered == [1, 2]
    assert proxy.stats.cuts_before_send == 1


async def test_delay_is_added_in_each_direction(echo: EchoServer) -> None:
    """A round trip through a proxy with `delay` d takes 2d (a wait may end up to
    COARSE early, to make up for waking the loop late)."""
    loop = asyncio.get_running_loop()
    async with Proxy("127.0.0.1", echo.port, delay=0.05) as proxy:
        started = loop.time()
        answered, _, writer = await roundtrip(proxy, op_msg(1, {"ping": 1}))
        took = loop.time() - started
        writer.close()
    assert answered == [1]
    assert took >= 2 * (0.05 - COARSE)
    assert proxy.stats.mean_hold >= 0.05 - COARSE


async def test_a_sub_millisecond_delay_is_honoured(echo: EchoServer) -> None:
    """A 0.3 ms delay (below the event loop's timer resolution) is still added each way:
    on average at least 0.2 ms per message."""
    async with Proxy("127.0.0.1", echo.port, delay=0.0003) as proxy:
        answered, _, writer = await roundtrip(proxy, *(op_msg(n, {"ping": 1}) for n in range(20)))
        writer.close()
    assert len(answered) == 20
    assert proxy.stats.forwarded == 40
    assert proxy.stats.mean_hold >= 0.0002


async def test_connections_beyond_the_limit_are_refused(echo: EchoServer) -> None:
    """At most `max_connections` at a time; another is closed at once and counted."""
    async with Proxy("127.0.0.1", echo.port, max_connections=1) as proxy:
        first, _, kept = await roundtrip(proxy, op_msg(1, {"ping": 1}))
        second, reader, writer = await roundtrip(proxy, op_msg(2, {"ping": 1}))
        assert await at_eof(reader)
        kept.close()
        writer.close()
    assert (first, second) == ([1], [])
    assert proxy.stats.refused == 1


async def test_cut_all_closes_every_connection(echo: EchoServer) -> None:
    """`cut_all` closes the open connections at once."""
    async with Proxy("127.0.0.1", echo.port) as proxy:
        _, reader, writer = await roundtrip(proxy, op_msg(1, {"ping": 1}))
        assert proxy.cut_all() == 1
        assert await at_eof(reader)
        writer.close()


async def test_oversized_message_closes_the_connection(echo: EchoServer) -> None:
    """A message longer than `max_message` is not forwarded; the connection closes."""
    async with Proxy("127.0.0.1", echo.port, max_message=64) as proxy:
        big = op_msg(1, {"insert": "t", "pad": "x" * 100})
        answered, _, writer = await roundtrip(proxy, big)
        writer.close()
    assert answered == []
    assert echo.applied == []
    assert proxy.stats.oversized == 1


class StalledWriter:
    """A writer whose peer reads nothing until released."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.released = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        await self.released.wait()


async def test_queued_bytes_stay_within_the_bound() -> None:
    """A direction holds at most `max_buffered` bytes: the reader waits until it drains."""
    peer = StalledWriter()
    pipe = _Pipe(cast(asyncio.StreamWriter, peer), Proxy("127.0.0.1", 1, max_buffered=100))
    runner = asyncio.create_task(pipe.run())
    await pipe.put(b"a" * 60)
    second = asyncio.create_task(pipe.put(b"b" * 60))
    await asyncio.sleep(0)
    assert not second.done()
    assert pipe.buffered == 60
    peer.released.set()
    await second
    pipe.queue.put_nowait(None)
    await runner
    assert peer.written == [b"a" * 60, b"b" * 60]
    assert pipe.buffered == 0


def test_bad_settings_are_refused() -> None:
    """Negative delays, rates outside [0, 1] and zero bounds are a ValueError."""
    with pytest.raises(ValueError, match="within"):
        Proxy("127.0.0.1", 1, delay=-1.0)
    with pytest.raises(ValueError, match="within"):
        Proxy("127.0.0.1", 1, cut_rate=1.5)
    with pytest.raises(ValueError, match="within"):
        Proxy("127.0.0.1", 1, after_apply=-0.1)
    with pytest.raises(ValueError, match="positive"):
        Proxy("127.0.0.1", 1, max_connections=0)


@pytest.mark.skipif(backend.is_mock(), reason="needs a wire server and the real driver")
async def test_real_driver_sees_a_lost_reply_for_an_applied_insert() -> None:
    """Through the proxy, pymongo gets AutoReconnect for an insert the server applied."""
    from urllib.parse import urlsplit

    from pymongo import AsyncMongoClient
    from pymongo.errors import AutoReconnect

    target = urlsplit(backend.uri())
    name = backend.unique_name("proxy")
    async with Proxy(target.hostname or "127.0.0.1", target.port or 27017) as proxy:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            proxy.uri, retryWrites=False, serverSelectionTimeoutMS=5000
        )
        try:
            await client[name]["t"].insert_one({"_id": 0})
            proxy.cut_next(after_apply=True)
            with pytest.raises(AutoReconnect):
                await client[name]["t"].insert_one({"_id": 1})
        finally:
            await client.close()
    direct: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backend.uri())
    try:
        assert await direct[name]["t"].count_documents({}) == 2
        await direct.drop_database(name)
    finally:
        await direct.close()
    assert proxy.stats.cuts_after_apply == 1
