"""The ingest MQTT client's failure paths, against a scripted broker (fake_broker.py).

Each test is one way a broker (or the network, or a second worker) can misbehave; each was
first written against the client that did not handle it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

import pytest

from citytel.config import Settings
from citytel.ingest import mqtt, wire
from citytel.ingest.mqtt import MqttConsumer, probe_broker
from tests.integration.fake_broker import BrokerSide, connack, disconnect, fake_broker

pytestmark = pytest.mark.integration

FILTER = "t/#"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds instead of tens of seconds for every timeout and backoff of the client."""
    monkeypatch.setattr(mqtt, "_CONNECT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(mqtt, "_MIN_RECONNECT_S", 0.02)
    monkeypatch.setattr(mqtt, "_MAX_RECONNECT_S", 0.1)


def client_settings(url: str, **update: object) -> Settings:
    """Settings for a consumer of ``url`` that needs no database."""
    return Settings(mqtt_url=url, mqtt_client_id="citytel-fake-test", **update)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    url: str, filters: list[str] | None = None, **update: object
) -> AsyncIterator[MqttConsumer]:
    """A consumer of ``url`` for the duration of the block; stopping it must not raise."""
    consumer = MqttConsumer(client_settings(url, **update), filters or [FILTER])
    consumer.start()
    try:
        yield consumer
    finally:
        async with asyncio.timeout(10):
            await consumer.stop()


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.01)


async def test_refused_subscription_is_retried_and_never_subscribed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SUBACK 0x87: logged with the filter each time, reconnected with backoff, not subscribed."""

    async def refuse(side: BrokerSide) -> None:
        await side.handshake(0x87)
        await side.until_closed()

    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        async with fake_broker(refuse) as broker, running(broker.url) as consumer:
            await until(lambda: len(broker.connections) >= 3)
            assert not consumer.subscribed_all
            assert "not subscribed" in consumer.status
    refusals = caplog.text.count(f"the broker refused the subscription to {FILTER}: not authorized")
    assert refusals >= 2


async def test_qos0_grant_is_a_failure() -> None:
    """A SUBACK granting QoS 0 would make delivery at-most-once: refused, retried, not ready."""

    async def grant_qos0(side: BrokerSide) -> None:
        await side.handshake(0x00)
        await side.until_closed()

    async with fake_broker(grant_qos0) as broker, running(broker.url) as consumer:
        await until(lambda: len(broker.connections) >= 2)
        assert not consumer.subscribed_all
        assert "QoS 0" in consumer.status


async def test_unexpected_error_is_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception nobody planned for is logged with its traceback; the client keeps going."""
    calls = 0
    real = wire.encode_connect

    def broken_once(*args: object, **kwargs: object) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            message = "a bug"
            raise RuntimeError(message)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "encode_connect", broken_once)

    async def serve(side: BrokerSide) -> None:
        await side.handshake()
        await side.until_closed()

    with caplog.at_level(logging.ERROR, logger="citytel.ingest.mqtt"):
        async with fake_broker(serve) as broker, running(broker.url) as consumer:
            await until(lambda: consumer.subscribed_all)
    assert "RuntimeError: a bug" in caplog.text  # the traceback is in the record
    assert any(r.exc_info for r in caplog.records)


async def test_truncated_connack_properties_are_a_protocol_error() -> None:
    """A CONNACK whose property block ends mid-property drops the connection, not the client."""

    async def truncated(side: BrokerSide) -> None:
        await side.expect(wire.PacketType.CONNECT)
        # A property block of one byte: Maximum QoS (0x24) without its value.
        side.send(b"\x20\x04\x00\x00\x01\x24")
        await side.flush()
        await side.until_closed()

    async with fake_broker(truncated) as broker:
        async with running(broker.url):
            await until(lambda: len(broker.connections) >= 2)
        why = await probe_broker(client_settings(broker.url))
    assert why is not None
    assert "protocol error" in why


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connack_timeout_closes_the_socket() -> None:
    """A broker that accepts TCP but never answers CONNECT costs no socket per attempt."""

    async def silent(side: BrokerSide) -> None:
        await side.until_closed()

    async with fake_broker(silent) as broker:
        before = open_fds()
        async with running(broker.url):
            await until(lambda: len(broker.connections) >= 6)
            await until(lambda: broker.open_connections <= 1)
        await until(lambda: broker.open_connections == 0)
        # Both ends of every connection are in this process: nothing may be left open.
        await until(lambda: open_fds() <= before)


async def test_pings_when_nothing_is_read_even_while_acking() -> None:
    """A quiet broker and a busy acker: the client pings on silence and keeps the connection."""

    async def quiet(side: BrokerSide) -> None:
        await side.handshake(connack_packet=connack(server_keep_alive=2))
        for mid in range(1, 101):
            side.send(wire.encode_publish("t/a", b"x", packet_id=mid))
        await side.flush()
        await side.until_closed()

    async with fake_broker(quiet) as broker, running(broker.url) as consumer:
        taken: list[mqtt.InboundMessage] = []
        async with asyncio.timeout(10):
            while len(taken) < 100:
                taken += await consumer.inbox.get_batch(100, 0.05)
        # Acknowledge one message every 50 ms for 5 s: the client writes all the time, and
        # reads nothing but what it asks for.
        for message in taken:
            consumer.ack([message])
            await asyncio.sleep(0.05)
        assert consumer.connected
        assert len(broker.connections) == 1
        sent = [p.kind for p in broker.connections[0].received]
        assert wire.PacketType.PINGREQ in sent


async def test_session_takeover_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """DISCONNECT 0x8E says plainly that another process uses our client id."""

    async def take_over(side: BrokerSide) -> None:
        await side.handshake()
        side.send(disconnect(0x8E))
        await side.flush()

    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        async with fake_broker(take_over) as broker, running(broker.url):
            await until(lambda: len(broker.connections) >= 2)
    assert (
        "session taken over (0x8e): another process uses client id citytel-fake-test" in caplog.text
    )


async def test_lost_session_is_a_counted_warning(caplog: pytest.LogCaptureFixture) -> None:
    """session_present=0 on a reconnect: messages may have been lost while away; say so, count."""

    async def forgetful(side: BrokerSide) -> None:
        await side.handshake()
        side.send(disconnect(0x8B))  # server shutting down
        await side.flush()

    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        async with fake_broker(forgetful) as broker, running(broker.url) as consumer:
            await until(lambda: len(broker.connections) >= 3)
            assert consumer.sessions_lost >= 1
    assert "the broker has no session for citytel-fake-test" in caplog.text


async def test_stop_counts_the_messages_left_to_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten delivered, four acknowledged: the stop log says six are left to the session."""

    async def ten(side: BrokerSide) -> None:
        await side.handshake()
        for mid in range(1, 11):
            side.send(wire.encode_publish("t/a", b"z", packet_id=mid))
        await side.flush()
        await side.until_closed()

    with caplog.at_level(logging.INFO, logger="citytel.ingest.mqtt"):
        async with fake_broker(ten) as broker, running(broker.url) as consumer:
            await until(lambda: len(consumer.inbox) == 10)
            batch = await consumer.inbox.get_batch(4, 5)
            consumer.ack(batch)
            await until(lambda: len(broker.connections[0].pubacks()) == 4)
    assert "6 messages not acknowledged are left to the broker's session" in caplog.text
