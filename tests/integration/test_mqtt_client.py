"""The ingest MQTT client against a broker that hangs, refuses or talks nonsense.

The broker is the real Mosquitto, behind a proxy that can freeze the connection; a refusing or
malformed broker is a few lines of asyncio server, because Mosquitto cannot be made to send
those answers. Everything else about the client is proven end to end by the pipeline tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from citytel.config import Settings
from citytel.ingest import wire
from citytel.ingest.mqtt import MqttConsumer, probe_broker
from tests.integration.conftest import publish_raw
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def fake_broker() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start an asyncio server speaking as a broker would; yields a function returning its URL."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"mqtt://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
    # A handler still waiting on its client holds the connection open: closing the server does
    # not close it, and the socket left to the garbage collector fails a later test (unclosed).
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(2):
                await writer.wait_closed()
    for server in servers:
        await server.wait_closed()


def connack(reason: int, reason_string: str = "") -> bytes:
    properties = b""
    if reason_string:
        raw = reason_string.encode()
        properties = b"\x1f" + len(raw).to_bytes(2, "big") + raw
    body = b"\x00" + bytes([reason, len(properties)]) + properties
    return b"\x20" + bytes([len(body)]) + body


async def run_until(settings: Settings, url: str, done: Callable[[], bool]) -> MqttConsumer:
    """Run a consumer against ``url`` until ``done()`` holds (10 s at most), then stop it."""
    consumer = MqttConsumer(settings.model_copy(update={"mqtt_url": url}), ["t/#"])
    consumer.start()
    try:
        async with asyncio.timeout(10):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    return consumer


async def test_hung_broker_is_left_after_keepalive_and_nothing_is_lost(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that stops answering is dropped within 1.5 keepalives; then all is delivered."""
    host, port = settings.mqtt_host_port
    proxy = TcpProxy(port)
    await proxy.start()
    through = settings.model_copy(
        update={"mqtt_url": f"mqtt://{host}:{proxy.port}", "mqtt_keepalive_s": 5}
    )
    topic = f"{settings.mqtt_topic_root}/gw/waste/C1"
    consumer = MqttConsumer(through, [topic])
    consumer.start()
    try:
        async with asyncio.timeout(10):
            await consumer.wait_subscribed()
        proxy.freeze()
        await asyncio.to_thread(publish_raw, settings, [(topic, b"%d" % i) for i in range(50)])
        with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
            async with asyncio.timeout(12):
                while consumer.connected:
                    await asyncio.sleep(0.1)
        assert "the broker sent nothing for 8 s" in caplog.text
        proxy.thaw()
        received: list[bytes] = []
        async with asyncio.timeout(30):
            while len(received) < 50:
                batch = await consumer.inbox.get_batch(100, max_wait=0.1)
                received += [m.payload for m in batch]
                consumer.ack(batch)
        assert sorted(received) == sorted(b"%d" % i for i in range(50))
    finally:
        await consumer.stop()
        await proxy.cut()


async def test_refused_connection_is_reported_and_retried(
    settings: Settings,
    fake_broker: Callable[[Handler], Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CONNACK refusal is logged with its reason in words, and the client keeps trying."""
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.read(1024)
        writer.write(connack(0x86, "who are you?"))
        await writer.drain()

    url = await fake_broker(refuse)
    with caplog.at_level(logging.ERROR, logger="citytel.ingest.mqtt"):
        consumer = await run_until(settings, url, lambda: attempts >= 2)
    assert not consumer.connected
    assert "refused the connection: bad user name or password (0x86): who are you?" in caplog.text
    refused = await probe_broker(settings.model_copy(update={"mqtt_url": url}))
    assert refused is not None
    assert "refused the connection: bad user name or password (0x86)" in refused


async def test_malformed_stream_drops_the_connection_and_reconnects(
    settings: Settings,
    fake_broker: Callable[[Handler], Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed packet ends the connection with a clear log line; the client comes back."""
    attempts = 0

    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.read(1024)
        writer.write(connack(0))
        # A PUBLISH at QoS 3, which MQTT does not have.
        writer.write(b"\x36\x05\x00\x01t\x00\x01")
        await writer.drain()
        await reader.read(1024)

    url = await fake_broker(garble)
    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        consumer = await run_until(settings, url, lambda: attempts >= 2)
    assert "protocol error: PUBLISH with QoS 3" in caplog.text
    assert len(consumer.inbox) == 0


async def test_probe_accepts_the_real_broker(settings: Settings) -> None:
    """The readiness probe's CONNECT is accepted by Mosquitto, and a closed port is reported."""
    assert await probe_broker(settings) is None
    closed = await probe_broker(settings.model_copy(update={"mqtt_url": "mqtt://127.0.0.1:9"}))
    assert closed is not None
    assert "unreachable" in closed
    assert wire.DISCONNECT == b"\xe0\x00"
