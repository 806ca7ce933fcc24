"""The ingest MQTT client's failure paths, against a scripted broker (fake_broker.py).

Each test is one way a broker (or the network, or a second worker) can misbehave; each was
first written against the client that did not handle it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
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


def publishes(first: int, last: int, topic: str = "t/a", payload: bytes = b"x") -> bytes:
    """QoS 1 PUBLISH packets with ids ``first`` to ``last``."""
    return b"".join(
        wire.encode_publish(topic, payload, packet_id=mid) for mid in range(first, last + 1)
    )


async def test_pubacks_leave_in_arrival_order() -> None:
    """Batches committed out of order: PUBACKs still leave in the order the messages arrived."""

    async def thirty(side: BrokerSide) -> None:
        await side.handshake()
        side.send(publishes(1, 30))
        await side.flush()
        await side.until_closed()

    async with fake_broker(thirty) as broker, running(broker.url) as consumer:
        await until(lambda: len(consumer.inbox) == 30)
        first = await consumer.inbox.get_batch(10, 5)
        second = await consumer.inbox.get_batch(10, 5)
        third = await consumer.inbox.get_batch(10, 5)
        consumer.ack(third)
        consumer.ack(first)
        await until(lambda: len(broker.connections[0].pubacks()) == 10)
        assert consumer.in_flight_unacked == 20
        consumer.ack(second)
        await until(lambda: len(broker.connections[0].pubacks()) == 30)
        assert consumer.in_flight_unacked == 0
    assert broker.connections[0].pubacks() == list(range(1, 31))


async def test_acks_of_an_old_connection_are_never_sent_on_a_new_one() -> None:
    """A batch from a dropped connection is acknowledged after the reconnect: nothing is sent."""

    async def drop_first(side: BrokerSide) -> None:
        await side.handshake(connack_packet=connack(session_present=True))
        side.send(publishes(1, 5))
        await side.flush()
        await side.until_closed()

    async with fake_broker(drop_first) as broker, running(broker.url) as consumer:
        await until(lambda: len(consumer.inbox) == 5)
        old = await consumer.inbox.get_batch(5, 5)
        broker.connections[0].writer.close()
        await until(lambda: len(broker.connections) == 2 and consumer.subscribed_all)
        await until(lambda: len(consumer.inbox) == 5)
        assert consumer.ack(old) == 0
        new = await consumer.inbox.get_batch(5, 5)
        assert consumer.ack(new) == 5
        await until(lambda: len(broker.connections[1].pubacks()) == 5)
    assert broker.connections[1].pubacks() == [1, 2, 3, 4, 5]


async def test_qos0_flood_is_bounded_by_pausing_the_socket() -> None:
    """A broker flooding QoS 0 cannot grow the inbox past its bound; every message still arrives."""
    count, payload = 4000, b"p" * 1000
    packet = wire.encode_publish("t/a", payload, qos=0)

    async def flood(side: BrokerSide) -> None:
        await side.handshake()
        side.send(packet * count)
        await side.flush()
        await side.until_closed()

    async with fake_broker(flood) as broker, running(broker.url, mqtt_receive_maximum=100) as c:
        received = 0
        async with asyncio.timeout(30):
            while received < count:
                received += len(await c.inbox.get_batch(50, 0.05))
                await asyncio.sleep(0.002)  # a consumer slower than the socket
    # The bound, plus what one read of the socket (at most 256 KiB) may hold beyond it.
    assert c.inbox.peak <= 100 + 262_144 // len(packet) + 1
    assert len(broker.connections) == 1


def reconnect_waits(caplog: pytest.LogCaptureFixture) -> list[tuple[float, int, float]]:
    """(wait, attempt, ceiling) of each "reconnecting in" log line, in order."""
    waits = []
    for record in caplog.records:
        if "reconnecting in" in record.getMessage() and isinstance(record.args, tuple):
            delay, attempt, ceiling = record.args[-3:]
            assert isinstance(delay, float)
            assert isinstance(attempt, int)
            assert isinstance(ceiling, float)
            waits.append((delay, attempt, ceiling))
    return waits


async def test_backoff_is_not_reset_by_a_takeover(caplog: pytest.LogCaptureFixture) -> None:
    """Two workers with one client id: each takeover waits longer (full jitter up to a cap)."""

    async def take_over(side: BrokerSide) -> None:
        await side.handshake()
        side.send(disconnect(0x8E))
        await side.flush()

    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        async with fake_broker(take_over) as broker, running(broker.url) as consumer:
            await until(lambda: len(broker.connections) >= 6)
            assert consumer.reconnects["session taken over"] >= 5
    waits = reconnect_waits(caplog)
    assert [attempt for _, attempt, _ in waits[:5]] == [1, 2, 3, 4, 5]
    # The ceiling doubles up to the cap (0.1 s in these tests); each wait is drawn below it.
    assert [ceiling for _, _, ceiling in waits[:4]] == [0.02, 0.04, 0.08, 0.1]
    assert all(0 <= delay <= ceiling for delay, _, ceiling in waits)


async def test_backoff_resets_after_a_healthy_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that stayed up long enough starts the backoff again from the first attempt."""
    monkeypatch.setattr(mqtt, "_HEALTHY_AFTER_S", 0.3)

    async def healthy_then_gone(side: BrokerSide) -> None:
        await side.handshake()
        await asyncio.sleep(0.5)
        side.send(disconnect(0x8B))
        await side.flush()

    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        async with fake_broker(healthy_then_gone) as broker, running(broker.url):
            await until(lambda: len(broker.connections) >= 3)
    assert [attempt for _, attempt, _ in reconnect_waits(caplog)[:2]] == [1, 1]


def test_full_jitter_spreads_over_the_whole_range() -> None:
    """Each delay is drawn from zero to the attempt's ceiling, and the ceiling doubles to a cap."""
    rng = random.Random(7)
    delays = [mqtt.backoff_delay(4, rng, base=1.0, cap=60.0) for _ in range(2000)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5
    assert max(delays) > 7.5
    assert mqtt.backoff_ceiling(1, base=1.0, cap=60.0) == 1.0
    assert mqtt.backoff_ceiling(30, base=1.0, cap=60.0) == 60.0


def flood_until_closed(side: BrokerSide, first: bytes) -> asyncio.Task[None]:
    """Send ``first``, then QoS 0 messages every millisecond until the client goes away."""

    async def keep_sending() -> None:
        side.send(first)
        with contextlib.suppress(ConnectionError):
            while not side.writer.is_closing():
                side.send(wire.encode_publish("t/b", b"q" * 2000, qos=0) * 20)
                await side.flush()
                await asyncio.sleep(0.001)

    return asyncio.create_task(keep_sending())


async def test_clean_stop_under_traffic_delivers_its_last_pubacks() -> None:
    """Stopping while the broker still sends: the last PUBACKs and a DISCONNECT 0x00 arrive."""

    async def busy(side: BrokerSide) -> None:
        await side.handshake()
        sender = flood_until_closed(side, publishes(1, 200))
        try:
            await side.until_closed()
        finally:
            sender.cancel()

    async with fake_broker(busy) as broker:
        async with running(broker.url) as consumer:
            taken: list[mqtt.InboundMessage] = []
            async with asyncio.timeout(10):
                while len([m for m in taken if m.qos]) < 200:
                    taken += await consumer.inbox.get_batch(1000, 0.05)
            consumer.ack(taken)
        side = broker.connections[0]
        await until(lambda: side.eof)
    assert not side.reset
    assert side.pubacks() == list(range(1, 201))
    assert side.received[-1].kind == wire.PacketType.DISCONNECT
    assert side.received[-1].body[:1] in (b"", b"\x00")


async def test_protocol_error_sends_disconnect_with_a_reason() -> None:
    """A malformed packet from the broker: DISCONNECT with a reason code, then the socket closes."""

    async def malformed(side: BrokerSide) -> None:
        await side.handshake()
        side.send(wire.encode_publish("t/a", b"x", packet_id=0))  # QoS 1 with packet id 0
        await side.flush()
        await side.until_closed()

    async with fake_broker(malformed) as broker, running(broker.url):
        await until(lambda: bool(broker.connections) and broker.connections[0].eof)
    last = broker.connections[0].received[-1]
    assert last.kind == wire.PacketType.DISCONNECT
    assert last.body[0] in (0x81, 0x82)


async def test_maximum_qos_0_is_refused_clearly() -> None:
    """A broker whose CONNACK says Maximum QoS 0 cannot give at-least-once delivery: not ready."""

    async def qos0_only(side: BrokerSide) -> None:
        await side.expect(wire.PacketType.CONNECT)
        side.send(connack(maximum_qos=0))
        await side.flush()
        await side.until_closed()

    async with fake_broker(qos0_only) as broker, running(broker.url) as consumer:
        await until(lambda: len(broker.connections) >= 2)
        assert not consumer.subscribed_all
        assert "Maximum QoS 0" in consumer.status
    assert all(
        p.kind != wire.PacketType.SUBSCRIBE for side in broker.connections for p in side.received
    )


async def test_shared_subscriptions_unavailable_is_refused_clearly() -> None:
    """Shared subscriptions configured, CONNACK says the broker has none: a clear status."""

    async def no_shared(side: BrokerSide) -> None:
        await side.expect(wire.PacketType.CONNECT)
        side.send(connack(shared_subscriptions=0))
        await side.flush()
        await side.until_closed()

    filters = ["$share/citytel/t/#"]
    async with fake_broker(no_shared) as broker, running(broker.url, filters) as consumer:
        await until(lambda: len(broker.connections) >= 2)
        assert not consumer.subscribed_all
        assert "shared subscriptions" in consumer.status


async def test_suback_timeout_drops_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SUBACK within the timeout: the connection is dropped and the client tries again."""
    monkeypatch.setattr(mqtt, "_SUBACK_TIMEOUT_S", 0.3)

    async def never_suback(side: BrokerSide) -> None:
        await side.expect(wire.PacketType.CONNECT)
        side.send(connack())
        await side.flush()
        await side.until_closed()

    async with fake_broker(never_suback) as broker, running(broker.url) as consumer:
        await until(lambda: len(broker.connections) >= 2)
        assert not consumer.subscribed_all
        assert "SUBACK" in consumer.status
