"""The MQTT side of ingestion: a persistent, shared, manually acknowledged QoS 1 subscription.

The client speaks MQTT 5 over an asyncio transport on the service's own event loop (packets in
:mod:`citytel.ingest.wire`). Messages wait in :class:`Inbox` until the pipeline takes them in
batches; acknowledgements go back through :meth:`MqttConsumer.ack`, which the pipeline calls only
after the transaction holding those messages has committed, as one write for the whole batch.

Why not paho-mqtt's client here (the simulators and benchmarks still use it): its network
thread read each packet with several small socket reads, built MQTT 5 property objects and woke
the socket once per acknowledgement; profiled, it was more than half of an ingest process's
time, and its thread competed with the event loop for the interpreter.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from citytel.config import Settings
from citytel.errors import MqttProtocolError
from citytel.ingest import wire

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10.0
_MIN_RECONNECT_S = 1.0
_MAX_RECONNECT_S = 15.0


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message as it came off the wire, with what is needed to acknowledge it later."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int
    qos: int
    # Which connection delivered it. After a reconnect the broker redelivers what was not
    # acknowledged, and packet ids of the old connection may be reused for new messages, so an
    # ack from an old connection must never be sent on a new one.
    connection: int


class Inbox:
    """Messages received and not yet taken, handed out in batches.

    The loop is woken once per batch, not once per message: a waiting consumer says how many
    messages it wants, and only the delivery that reaches that count wakes it.
    """

    def __init__(self) -> None:
        self._items: deque[InboundMessage] = deque()
        self._ready = asyncio.Event()
        self._wake_at = 0  # 0: nobody waits; else wake when this many messages are here

    def put(self, items: list[InboundMessage]) -> None:
        """Add what one read from the broker delivered."""
        self._items.extend(items)
        if 0 < self._wake_at <= len(self._items):
            self._wake_at = 0
            self._ready.set()

    def discard_connection(self, connection: int) -> int:
        """Drop what an old connection delivered: the broker redelivers it on the new one."""
        kept = deque(m for m in self._items if m.connection != connection)
        dropped = len(self._items) - len(kept)
        self._items = kept
        return dropped

    def _arm(self, count: int) -> bool:
        """Ask to be woken at ``count`` messages; False when they are already here."""
        if len(self._items) >= count:
            self._wake_at = 0
            return False
        self._wake_at = count
        self._ready.clear()
        return True

    def _take(self, limit: int) -> list[InboundMessage]:
        self._wake_at = 0
        count = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._items)

    async def get_batch(self, max_size: int, max_wait: float) -> list[InboundMessage]:
        """Wait for a first message, then gather until ``max_size`` or ``max_wait`` seconds."""
        while self._arm(1):
            await self._ready.wait()
        if self._arm(max_size):
            try:
                async with asyncio.timeout(max_wait):
                    await self._ready.wait()
            except TimeoutError:
                pass
        return self._take(max_size)


class _Connection(asyncio.Protocol):
    """One TCP connection to the broker: bytes in, packets out to the consumer."""

    def __init__(self, consumer: MqttConsumer, number: int) -> None:
        self._consumer = consumer
        self.number = number
        self.reader = wire.PacketReader()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[wire.ConnAck] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_read = time.monotonic()
        self.last_write = time.monotonic()
        # QoS 1 messages delivered on this connection and not yet acknowledged.
        self.unacked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport; uvloop's does not derive from asyncio.Transport, hence no isinstance.
        self.transport = cast("asyncio.Transport", transport)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_write = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        try:
            packets = self.reader.feed(data)
        except MqttProtocolError as exc:
            self.abort(f"protocol error: {exc}")
            return
        received_at = datetime.now(UTC)
        messages: list[InboundMessage] = []
        for packet in packets:
            if isinstance(packet, wire.Publish):
                messages.append(
                    InboundMessage(
                        packet.topic,
                        packet.payload,
                        received_at,
                        packet.packet_id,
                        packet.qos,
                        self.number,
                    )
                )
            else:
                self._control(packet)
        if messages:
            self.unacked += len(messages)
            self._consumer.deliver(messages)

    def _control(self, packet: wire.Packet) -> None:
        try:
            if packet.kind == wire.PacketType.CONNACK and not self.connack.done():
                self.connack.set_result(wire.parse_connack(packet.body))
            elif packet.kind == wire.PacketType.SUBACK:
                self._consumer.subscribed(wire.parse_suback(packet.body))
            elif packet.kind == wire.PacketType.DISCONNECT:
                if packet.body[:1] == b"\x8e":
                    client_id = self._consumer.client_id
                    self.abort(
                        f"session taken over (0x8e): another process uses client id {client_id}"
                    )
                else:
                    why = wire.disconnect_reason(packet.body)
                    self.abort(f"the broker disconnected us: {why}")
            elif packet.kind == wire.PacketType.PUBREL:
                # Only QoS 2 flows send PUBREL, and we subscribe at QoS 1: answer so that a
                # misbehaving broker cannot stall, but say so.
                log.warning("the broker sent PUBREL on a QoS 1 subscription; answering it")
                self.write(b"\x70\x02" + packet.body[:2])
        except MqttProtocolError as exc:
            self.abort(f"protocol error: {exc}")

    def abort(self, why: str) -> None:
        if not self.closed.done():
            self.closed.set_result(why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(f"connection lost: {exc}" if exc else "connection closed")
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed before CONNACK"))
            self.connack.exception()  # retrieved: the waiter may already be gone


class MqttConsumer:
    """A persistent-session, manual-ack subscriber, reconnecting by itself after any loss."""

    def __init__(self, settings: Settings, subscriptions: list[str]) -> None:
        self._settings = settings
        self._subscriptions = subscriptions
        self._inbox = Inbox()
        self._number = 0
        self._current: _Connection | None = None
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._status = "not subscribed: not connected yet"
        self._had_session = False
        self.sessions_lost = 0
        """Reconnects on which the broker no longer had our session (messages may be lost)."""

    @property
    def client_id(self) -> str:
        """The MQTT client id, which names the persistent session."""
        return self._settings.mqtt_client_id

    @property
    def subscribed_all(self) -> bool:
        """Whether the broker granted every subscription at QoS 1 on the current connection."""
        return self._subscribed.is_set()

    @property
    def status(self) -> str:
        """``subscribed`` or, for readiness checks and logs, why not."""
        return "subscribed" if self._subscribed.is_set() else self._status

    @property
    def inbox(self) -> Inbox:
        return self._inbox

    @property
    def connected(self) -> bool:
        return self._current is not None

    async def wait_subscribed(self) -> None:
        """Wait until the broker has granted our subscriptions on the current connection."""
        await self._subscribed.wait()

    def start(self) -> None:
        """Connect in the background; reconnect after any loss, until :meth:`stop`."""
        self._task = asyncio.create_task(self._run(), name="mqtt-consumer")

    async def stop(self) -> None:
        """Disconnect without acknowledging anything more; the session keeps the rest."""
        self._stopping = True
        connection = self._current
        if connection is not None and connection.transport is not None:
            connection.write(wire.DISCONNECT)
            connection.transport.close()  # flushes what is buffered, then closes
            with suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.shield(connection.closed)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                # Stopping must not fail: the caller still has a pool to close.
                log.exception("the MQTT client had failed before it was stopped")
        left = connection.unacked if connection else 0
        if connection:
            self._inbox.discard_connection(connection.number)
        log.info(
            "disconnected from the broker; %d messages not acknowledged are left to the "
            "broker's session",
            left,
        )

    def ack(self, messages: list[InboundMessage]) -> int:
        """Acknowledge messages whose data is committed, in one write; returns how many."""
        connection = self._current
        if connection is None:
            return 0
        current = connection.number
        ids = [m.mid for m in messages if m.connection == current and m.qos]
        if ids:
            connection.write(wire.encode_pubacks(ids))
            connection.unacked -= len(ids)
        return len(ids)

    def deliver(self, messages: list[InboundMessage]) -> None:
        """Called by the connection with what one read delivered."""
        self._inbox.put(messages)

    def subscribed(self, suback: wire.SubAck) -> None:
        """Called by the connection when the broker answers our SUBSCRIBE."""
        failures = []
        for topic, code in zip(self._subscriptions, suback.reasons, strict=False):
            if code >= 0x80:
                failures.append(
                    f"the broker refused the subscription to {topic}: {wire.describe_reason(code)}"
                )
            elif code == 0:
                failures.append(f"the broker granted {topic} at QoS 0 only (at-most-once delivery)")
        if len(suback.reasons) != len(self._subscriptions):
            failures.append("the broker answered SUBSCRIBE with the wrong number of reason codes")
        if failures:
            # Connected but not subscribed is not a state to idle in: drop the connection and
            # try again with backoff, so that a fixed ACL or broker is picked up by itself.
            for failure in failures:
                log.error("%s; reconnecting", failure)
            self._status = "not subscribed: " + "; ".join(failures)
            if self._current is not None:
                self._current.write(wire.DISCONNECT)
                self._current.abort("subscription not granted at QoS 1")
            return
        log.info("subscribed to %s", ", ".join(self._subscriptions))
        self._subscribed.set()

    async def _run(self) -> None:
        delay = _MIN_RECONNECT_S
        while True:
            why = ""
            try:
                why = await self._session()
                delay = _MIN_RECONNECT_S
            except (OSError, TimeoutError, MqttProtocolError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                # A bug of ours or a case nobody foresaw: say so with the traceback, and keep
                # reconnecting rather than end ingestion silently.
                log.exception("unexpected error in the MQTT client")
                why = f"unexpected {type(exc).__name__}: {exc}"
            finally:
                self._lost()
            if self._stopping:
                return
            host, port = self._settings.mqtt_host_port
            log.warning(
                "broker %s:%d: connection ended (%s); reconnecting in %.1f s",
                host,
                port,
                why,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RECONNECT_S)

    async def _session(self) -> str:
        """One connection, from CONNECT to its loss; returns why it ended."""
        self._number += 1
        connection = _Connection(self, self._number)
        try:
            return await self._handshake_and_serve(connection)
        finally:
            # Every way out (CONNACK timeout, refusal, error) closes the socket: a broker that
            # accepts TCP and never answers must not cost a file descriptor per attempt.
            if self._current is not connection:
                connection.abort("connection attempt ended")

    async def _handshake_and_serve(self, connection: _Connection) -> str:
        settings = self._settings
        host, port = settings.mqtt_host_port
        loop = asyncio.get_running_loop()
        self._status = "not subscribed: connecting"
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            await loop.create_connection(lambda: connection, host, port)
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            connection.write(
                wire.encode_connect(
                    settings.mqtt_client_id,
                    keepalive=settings.mqtt_keepalive_s,
                    clean_start=False,
                    session_expiry=settings.mqtt_session_expiry_s,
                    # The broker sends at most this many unacknowledged messages. It must
                    # exceed a batch, or a batch could never fill while its first messages wait
                    # for their ack.
                    receive_maximum=settings.mqtt_receive_maximum,
                    username=settings.mqtt_username,
                    password=password,
                )
            )
            try:
                connack = await connection.connack
            except ConnectionError:
                return await connection.closed
        if connack.reason >= 0x80:
            detail = f": {connack.reason_string}" if connack.reason_string else ""
            log.error(
                "the broker refused the connection: %s%s",
                wire.describe_reason(connack.reason),
                detail,
            )
            connection.abort("refused")
            return "refused"
        self._current = connection
        if self._had_session and not connack.session_present:
            self.sessions_lost += 1
            log.warning(
                "the broker has no session for %s any more (expired or broker restarted without "
                "persistence): messages published while we were away may have been lost",
                settings.mqtt_client_id,
            )
        self._had_session = True
        connection.write(wire.encode_subscribe(1, self._subscriptions))
        log.info(
            "connected to the broker as %s (%s session)",
            settings.mqtt_client_id,
            "resumed" if connack.session_present else "new",
        )
        keepalive = connack.server_keep_alive or settings.mqtt_keepalive_s
        pinger = asyncio.create_task(self._keep_alive(connection, keepalive))
        try:
            return await connection.closed
        finally:
            pinger.cancel()

    @staticmethod
    async def _keep_alive(connection: _Connection, keepalive: int) -> None:
        """Ping when idle; drop a connection on which the broker has gone silent."""
        while True:
            await asyncio.sleep(keepalive / 4)
            now = time.monotonic()
            if now - connection.last_read > keepalive * 1.5:
                connection.abort(f"the broker sent nothing for {keepalive * 1.5:.0f} s")
                return
            # Ping on silence from the broker (what decides it is dead), and on our own silence
            # (what makes the broker decide we are).
            if (
                now - connection.last_read >= keepalive / 2
                or now - connection.last_write >= keepalive / 2
            ):
                connection.write(wire.PINGREQ)

    def _lost(self) -> None:
        connection, self._current = self._current, None
        self._subscribed.clear()
        if connection is None:
            return
        connection.abort("closing")
        dropped = self._inbox.discard_connection(connection.number)
        if not self._stopping and dropped:
            log.warning("%d unacknowledged messages will be redelivered", dropped)


async def probe_broker(
    settings: Settings, *, within: float = 2.0, client_id: str | None = None
) -> str | None:
    """Check that the broker accepts an MQTT connection; None when it does, else why not.

    A bare CONNECT/CONNACK exchange with a clean session that ends with the connection: it
    proves more than an open TCP port, and leaves nothing behind on the broker. Given the
    ``client_id`` of a persistent session, the clean start ends that session (what the demo does
    to its own on a clean exit).
    """
    host, port = settings.mqtt_host_port
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    # A client id of its own: a shared one would make concurrent probes disconnect each other.
    packet = wire.encode_connect(
        client_id or f"citytel-probe-{secrets.token_hex(6)}",
        keepalive=10,
        clean_start=True,
        username=settings.mqtt_username,
        password=password,
    )
    reader = wire.PacketReader()
    writer = None
    try:
        async with asyncio.timeout(within):
            stream, writer = await asyncio.open_connection(host, port)
            writer.write(packet)
            await writer.drain()
            packets: list[wire.Publish | wire.Packet] = []
            while not packets:
                data = await stream.read(4096)
                if not data:
                    break
                packets = reader.feed(data)
            if packets:
                writer.write(wire.DISCONNECT)
                await writer.drain()
        if not packets:
            return f"broker {host}:{port} closed the connection without answering CONNECT"
        first = packets[0]
        if not isinstance(first, wire.Packet) or first.kind != wire.PacketType.CONNACK:
            return f"broker {host}:{port} answered CONNECT with something other than CONNACK"
        connack = wire.parse_connack(first.body)
    except MqttProtocolError as exc:
        return f"broker {host}:{port} protocol error: {exc}"
    except (OSError, TimeoutError) as exc:
        return f"broker {host}:{port} unreachable: {type(exc).__name__} {exc}".strip()
    finally:
        if writer is not None:
            writer.close()
    if connack.reason >= 0x80:
        why = wire.describe_reason(connack.reason)
        return f"broker {host}:{port} refused the connection: {why}"
    return None
