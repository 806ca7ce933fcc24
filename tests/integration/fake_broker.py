"""A scripted MQTT broker: a small asyncio server that answers as a test tells it to.

Mosquitto cannot be made to refuse a subscription by script, grant QoS 0, never answer
CONNECT, send truncated properties or reuse packet ids; these are the failures the ingest client
must survive, so a test writes the broker's side of the conversation here. Everything a real
broker does correctly is tested against the real Mosquitto instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from citytel.ingest import wire

CONNACK_PROPERTIES = {
    "server_keep_alive": (0x13, 2),
    "maximum_qos": (0x24, 1),
    "shared_subscriptions": (0x2A, 1),
}


def connack(
    reason: int = 0, *, session_present: bool = False, reason_string: str = "", **props: int
) -> bytes:
    """A CONNACK; ``props`` by name (server_keep_alive, maximum_qos, shared_subscriptions)."""
    properties = b""
    for name, value in props.items():
        ident, size = CONNACK_PROPERTIES[name]
        properties += bytes([ident]) + value.to_bytes(size, "big")
    if reason_string:
        raw = reason_string.encode()
        properties += b"\x1f" + len(raw).to_bytes(2, "big") + raw
    body = bytes([int(session_present), reason, len(properties)]) + properties
    return b"\x20" + bytes([len(body)]) + body


def suback(packet_id: int, *codes: int) -> bytes:
    """A SUBACK with one reason code per filter."""
    body = packet_id.to_bytes(2, "big") + b"\x00" + bytes(codes)
    return b"\x90" + bytes([len(body)]) + body


def disconnect(reason: int) -> bytes:
    """A DISCONNECT with a reason code and no properties."""
    return b"\xe0\x02" + bytes([reason, 0])


@dataclass
class BrokerSide:
    """One client connection as the fake broker sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: list[wire.Packet] = field(default_factory=list)
    _parser: wire.PacketReader = field(default_factory=wire.PacketReader)
    _pending: list[wire.Packet] = field(default_factory=list)
    eof: bool = False
    reset: bool = False

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def flush(self) -> None:
        await self.writer.drain()

    async def next_packet(self) -> wire.Packet | None:
        """The client's next packet; None once it closed the connection."""
        while not self._pending:
            try:
                data = await self.reader.read(65536)
            except ConnectionResetError:
                self.reset = True
                data = b""
            if not data:
                self.eof = True
                return None
            for packet in self._parser.feed(data):
                assert isinstance(packet, wire.Packet), "clients do not publish to citytel"
                self.received.append(packet)
                self._pending.append(packet)
        return self._pending.pop(0)

    async def expect(self, kind: wire.PacketType) -> wire.Packet:
        """Read until a packet of ``kind`` arrives (answering PINGREQs on the way)."""
        while True:
            packet = await self.next_packet()
            assert packet is not None, f"the client closed before sending {kind.name}"
            if packet.kind == kind:
                return packet
            if packet.kind == wire.PacketType.PINGREQ:
                self.send(b"\xd0\x00")

    async def handshake(self, *codes: int, connack_packet: bytes | None = None) -> None:
        """Accept CONNECT and answer SUBSCRIBE with ``codes`` (QoS 1 for each filter if none)."""
        await self.expect(wire.PacketType.CONNECT)
        self.send(connack_packet if connack_packet is not None else connack())
        subscribe = await self.expect(wire.PacketType.SUBSCRIBE)
        packet_id = int.from_bytes(subscribe.body[:2], "big")
        self.send(suback(packet_id, *(codes or (1,))))
        await self.flush()

    async def until_closed(self) -> None:
        """Read (answering pings) until the client closes the connection."""
        while (packet := await self.next_packet()) is not None:
            if packet.kind == wire.PacketType.PINGREQ:
                self.send(b"\xd0\x00")

    def pubacks(self) -> list[int]:
        """The packet ids the client acknowledged on this connection, in order."""
        return [
            int.from_bytes(p.body[:2], "big")
            for p in self.received
            if p.kind == wire.PacketType.PUBACK
        ]


Script = Callable[[BrokerSide], Awaitable[None]]


@dataclass
class FakeBroker:
    """The server: every connection runs ``script``; connections are kept for the test to read."""

    script: Script
    connections: list[BrokerSide] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"mqtt://127.0.0.1:{port}"

    @property
    def open_connections(self) -> int:
        """Connections the client has not closed (the fake never closes first unless told)."""
        return sum(1 for c in self.connections if not (c.eof or c.writer.is_closing()))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        side = BrokerSide(reader, writer)
        self.connections.append(side)
        try:
            await self.script(side)
        except (ConnectionError, AssertionError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.url

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            # A connection accepted just before has its handler scheduled but not yet run: let
            # it register, so that it is closed below rather than left to the collector.
            for _ in range(3):
                await asyncio.sleep(0)
            for side in self.connections:
                side.writer.close()
            for side in self.connections:
                # Closed before the test's event loop ends, or the socket is reported unclosed.
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async with asyncio.timeout(2):
                        await side.writer.wait_closed()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def fake_broker(script: Script) -> AsyncIterator[FakeBroker]:
    """A scripted broker for the duration of the block."""
    broker = FakeBroker(script)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()
