"""The MQTT side of ingestion: a persistent, shared, manually acknowledged QoS 1 subscription.

The client speaks MQTT 5 over an asyncio transport on the service's own event loop (packets in
:mod:`citytel.ingest.wire`), in clear or over TLS (``mqtts://``). Messages wait in :class:`Inbox`
until the pipeline takes them in batches; acknowledgements go back through
:meth:`MqttConsumer.ack`, which the pipeline calls only after the transaction holding those
messages has committed. Batches may commit in any order, but PUBACKs leave in the order the
messages arrived (an MQTT 5 MUST): each connection writes only the committed prefix.

Why not paho-mqtt's client here (the simulators and benchmarks still use it): its network
thread read each packet with several small socket reads, built MQTT 5 property objects and woke
the socket once per acknowledgement; profiled, it was more than half of an ingest process's
time, and its thread competed with the event loop for the interpreter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from citytel.config import Settings
from citytel.errors import ConfigurationError, MqttProtocolError
from citytel.ingest import wire

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10.0
_SUBACK_TIMEOUT_S = 10.0
# Reconnection waits a random time between zero and a ceiling that doubles with each attempt
# from the first to the cap ("full jitter"): workers that lost the broker together, or two that
# share a client id by mistake, spread out instead of retrying in step.
_MIN_RECONNECT_S = 1.0
_MAX_RECONNECT_S = 60.0
# Only a connection that stayed subscribed this long starts the backoff again from the first
# attempt: one that is taken over or refused right after connecting does not.
_HEALTHY_AFTER_S = 60.0
# How long a clean stop waits for the broker to close the connection after our DISCONNECT.
_STOP_TIMEOUT_S = 5.0


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The longest wait before reconnection attempt ``attempt`` (1 for the first)."""
    return min(cap, base * 2.0 ** min(attempt - 1, 64))


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """A wait drawn uniformly from zero to the attempt's ceiling (full jitter)."""
    return rng.uniform(0, backoff_ceiling(attempt, base=base, cap=cap))


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` broker, None for ``mqtt://``.

    Raises ConfigurationError naming the setting when a file cannot be used, so that a worker
    refuses to start rather than retry a connection that can never succeed.
    """
    files = {
        "CITYTEL_MQTT_TLS_CA_FILE": settings.mqtt_tls_ca_file,
        "CITYTEL_MQTT_TLS_CERT_FILE": settings.mqtt_tls_cert_file,
        "CITYTEL_MQTT_TLS_KEY_FILE": settings.mqtt_tls_key_file,
    }
    if not settings.mqtt_tls:
        if any(files.values()) or settings.mqtt_tls_server_name:
            message = (
                "TLS settings (CITYTEL_MQTT_TLS_...) are set but CITYTEL_MQTT_URL is not "
                "mqtts://: use mqtts://host:8883, or unset them"
            )
            raise ConfigurationError(message)
        return None
    for name, path in files.items():
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            message = f"{name}: cannot read {path}: {exc.strerror or exc}"
            raise ConfigurationError(message) from exc
    if settings.mqtt_tls_key_file is not None and settings.mqtt_tls_cert_file is None:
        message = "CITYTEL_MQTT_TLS_KEY_FILE is set without CITYTEL_MQTT_TLS_CERT_FILE"
        raise ConfigurationError(message)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.mqtt_tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.mqtt_tls_ca_file)
        except ssl.SSLError as exc:
            message = f"CITYTEL_MQTT_TLS_CA_FILE: no usable CA certificate: {exc.reason or exc}"
            raise ConfigurationError(message) from exc
    if settings.mqtt_tls_cert_file is not None:
        try:
            context.load_cert_chain(settings.mqtt_tls_cert_file, settings.mqtt_tls_key_file)
        except ssl.SSLError as exc:
            message = (
                "CITYTEL_MQTT_TLS_CERT_FILE / CITYTEL_MQTT_TLS_KEY_FILE: not a certificate "
                f"and its private key: {exc.reason or exc}"
            )
            raise ConfigurationError(message) from exc
    return context


def _server_name(settings: Settings) -> str:
    """The name the broker's certificate must carry (SNI and hostname check)."""
    return settings.mqtt_tls_server_name or settings.mqtt_host_port[0]


def _tls_hint(exc: ssl.SSLCertVerificationError) -> str:
    return (
        f"TLS: the broker's certificate was not accepted ({exc.verify_message}); check "
        "CITYTEL_MQTT_TLS_CA_FILE and CITYTEL_MQTT_TLS_SERVER_NAME"
    )


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
    # Its place among the QoS 1 messages of its connection, which orders the PUBACKs.
    seq: int = -1


class Inbox:
    """Messages received and not yet taken, handed out in batches.

    The loop is woken once per batch, not once per message: a waiting consumer says how many
    messages it wants, and only the delivery that reaches that count wakes it.

    Receive Maximum bounds what the broker sends at QoS 1, not at QoS 0: past ``limit`` messages
    the inbox calls ``on_full`` (the connection stops reading its socket, so the broker's own
    flow control holds the rest) and ``on_room`` once half of them are taken.
    """

    def __init__(
        self,
        limit: int = 0,
        on_full: Callable[[], None] | None = None,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self._items: deque[InboundMessage] = deque()
        self._ready = asyncio.Event()
        self._wake_at = 0  # 0: nobody waits; else wake when this many messages are here
        self._wake_bytes = 0  # 0: no byte bound; else wake when this many payload bytes are here
        self._bytes = 0  # payload bytes held
        self._limit = limit  # 0: unbounded
        self._on_full = on_full
        self._on_room = on_room
        self.full = False
        """Whether reading is paused until the pipeline takes messages."""
        self.peak = 0
        """The most messages the inbox has held at once."""

    def put(self, items: list[InboundMessage]) -> None:
        """Add what one read from the broker delivered."""
        self._items.extend(items)
        self._bytes += sum(len(m.payload) for m in items)
        held = len(self._items)
        if held > self.peak:
            self.peak = held
        if self._limit and held > self._limit and not self.full:
            self.full = True
            if self._on_full is not None:
                self._on_full()
        if 0 < self._wake_at <= held or 0 < self._wake_bytes <= self._bytes:
            self._wake_at = self._wake_bytes = 0
            self._ready.set()

    def discard_connection(self, connection: int) -> int:
        """Drop what an old connection delivered: the broker redelivers it on the new one."""
        kept = deque(m for m in self._items if m.connection != connection)
        dropped = len(self._items) - len(kept)
        self._items = kept
        self._bytes = sum(len(m.payload) for m in kept)
        self._check_room()
        return dropped

    def _check_room(self) -> None:
        if self.full and len(self._items) <= self._limit // 2:
            self.full = False
            if self._on_room is not None:
                self._on_room()

    def _arm(self, count: int, max_bytes: int = 0) -> bool:
        """Ask to be woken at ``count`` messages or ``max_bytes`` of payload (0: no bound);
        False when they are already here."""
        if len(self._items) >= count or 0 < max_bytes <= self._bytes:
            self._wake_at = self._wake_bytes = 0
            return False
        self._wake_at = count
        self._wake_bytes = max_bytes
        self._ready.clear()
        return True

    def _take(self, limit: int, max_bytes: int = 0) -> list[InboundMessage]:
        self._wake_at = self._wake_bytes = 0
        count = min(limit, len(self._items))
        if max_bytes:
            # Up to the byte bound, and always at least one message, however big.
            taken: list[InboundMessage] = []
            size = 0
            while len(taken) < count and (not taken or size < max_bytes):
                message = self._items.popleft()
                taken.append(message)
                size += len(message.payload)
        else:
            taken = [self._items.popleft() for _ in range(count)]
            size = sum(len(m.payload) for m in taken)
        self._bytes -= size
        if self.full:
            self._check_room()
        return taken

    def __len__(self) -> int:
        return len(self._items)

    async def get_batch(
        self, max_size: int, max_wait: float, max_bytes: int = 0
    ) -> list[InboundMessage]:
        """Wait for a first message, then gather until ``max_size`` messages, ``max_bytes`` of
        payload (0: no bound) or ``max_wait`` seconds."""
        while self._arm(1):
            await self._ready.wait()
        if self._arm(max_size, max_bytes):
            try:
                async with asyncio.timeout(max_wait):
                    await self._ready.wait()
            except TimeoutError:
                pass
        return self._take(max_size, max_bytes)


class _Connection(asyncio.Protocol):
    """One connection to the broker: bytes in, packets out to the consumer, PUBACKs in order."""

    def __init__(self, consumer: MqttConsumer, number: int) -> None:
        self._consumer = consumer
        self.number = number
        self.reader = wire.PacketReader()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[wire.ConnAck] = loop.create_future()
        self.suback: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()  # the socket is closed
        self.cause = "connection lost"
        self.last_read = time.monotonic()
        self.last_write = time.monotonic()
        self.healthy_since: float | None = None
        self.paused = False
        self.ending = False  # DISCONNECT sent: nothing more is written, nothing more delivered
        # Packet ids of the QoS 1 messages delivered and not yet acknowledged, in arrival order;
        # ``first_seq`` is the sequence number of the first, ``committed`` those whose data is
        # stored while an earlier one is not yet.
        self.arrived: deque[int] = deque()
        self.first_seq = 0
        self.next_seq = 0
        self.committed: set[int] = set()

    @property
    def unacked(self) -> int:
        """QoS 1 messages delivered on this connection and not yet acknowledged."""
        return len(self.arrived)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport; uvloop's does not derive from asyncio.Transport, hence no isinstance.
        self.transport = cast("asyncio.Transport", transport)
        if self._consumer.inbox.full:
            self.pause()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.ending and not self.transport.is_closing():
            self.transport.write(data)
            self.last_write = time.monotonic()

    def pause(self) -> None:
        if self.transport is not None and not self.paused and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused and not self.transport.is_closing():
            self.paused = False
            # Silence while we did not read was ours, not the broker's.
            self.last_read = time.monotonic()
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        try:
            packets = self.reader.feed(data)
        except MqttProtocolError as exc:
            self.fail(exc)
            return
        if self.ending:
            return  # stopping: the broker redelivers to the session what arrives now
        received_at = datetime.now(UTC)
        messages: list[InboundMessage] = []
        number = self.number
        next_seq = self.next_seq
        arrived = self.arrived
        for packet in packets:
            if isinstance(packet, wire.Publish):
                seq = -1
                if packet.qos:
                    seq = next_seq
                    next_seq += 1
                    arrived.append(packet.packet_id)
                messages.append(
                    InboundMessage(
                        packet.topic,
                        packet.payload,
                        received_at,
                        packet.packet_id,
                        packet.qos,
                        number,
                        seq,
                    )
                )
            else:
                self._control(packet)
        self.next_seq = next_seq
        if messages:
            self._consumer.deliver(messages)

    def acknowledge(self, seqs: list[int]) -> None:
        """Mark messages committed and write the PUBACKs of the committed prefix, in order."""
        committed = self.committed
        seq = self.first_seq
        # An ack given twice must not be kept waiting for a turn that has passed.
        committed.update(seqs if seqs[0] >= seq else [s for s in seqs if s >= seq])
        arrived = self.arrived
        ids: list[int] = []
        while seq in committed:
            committed.discard(seq)
            ids.append(arrived.popleft())
            seq += 1
        self.first_seq = seq
        if ids:
            self.write(wire.encode_pubacks(ids))

    def _control(self, packet: wire.Packet) -> None:
        try:
            if packet.kind == wire.PacketType.CONNACK and not self.connack.done():
                self.connack.set_result(wire.parse_connack(packet.body))
            elif packet.kind == wire.PacketType.SUBACK:
                if not self.suback.done():
                    self.suback.set_result(None)
                self._consumer.subscribed(wire.parse_suback(packet.body))
            elif packet.kind == wire.PacketType.DISCONNECT:
                if packet.body[:1] == b"\x8e":
                    client_id = self._consumer.client_id
                    self.abort(
                        f"session taken over (0x8e): another process uses client id {client_id}",
                        cause="session taken over",
                    )
                else:
                    why = wire.disconnect_reason(packet.body)
                    self.abort(f"the broker disconnected us: {why}", cause="broker disconnected")
            elif packet.kind == wire.PacketType.PUBREL:
                # Only QoS 2 flows send PUBREL, and we subscribe at QoS 1: answer so that a
                # misbehaving broker cannot stall, but say so.
                log.warning("the broker sent PUBREL on a QoS 1 subscription; answering it")
                self.write(b"\x70\x02" + packet.body[:2])
        except MqttProtocolError as exc:
            self.fail(exc)

    def fail(self, exc: MqttProtocolError) -> None:
        """A protocol error: tell the broker why (DISCONNECT with its reason code), then close."""
        self.write(wire.encode_disconnect(exc.reason))
        self.ending = True
        if not self.closed.done():
            self.cause = "protocol error"
            self.closed.set_result(f"protocol error: {exc}")
        if self.transport is not None:
            self.transport.close()  # after the DISCONNECT is written

    def abort(self, why: str, cause: str = "") -> None:
        if not self.closed.done():
            self.cause = cause or self.cause
            self.closed.set_result(why)
        if self.transport is not None:
            self.transport.abort()

    async def disconnect(self, within: float) -> None:
        """End cleanly: DISCONNECT (reason 0, the session is kept), then let the broker close.

        Acknowledgements already written go before it. Reading goes on until the broker closes:
        a socket closed with unread data would be reset, and a reset may destroy the last
        PUBACKs before the broker has read them (it would then redeliver those messages).
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.write(wire.DISCONNECT)
        self.ending = True
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        with suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.shield(self.closed)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        if not self.closed.done():
            self.closed.set_result(f"connection lost: {exc}" if exc else "connection closed")
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed before CONNACK"))
            self.connack.exception()  # retrieved: the waiter may already be gone


class MqttConsumer:
    """A persistent-session, manual-ack subscriber, reconnecting by itself after any loss.

    Counters for logs and metrics are plain attributes: ``sessions_lost``, ``reconnects`` (by
    cause), ``messages_received``, and the properties ``inbox_depth`` and ``in_flight_unacked``.
    """

    def __init__(self, settings: Settings, subscriptions: list[str]) -> None:
        self._settings = settings
        self._subscriptions = subscriptions
        self._tls = tls_context(settings)  # at start-up: a missing file is an error now
        self._inbox = Inbox(settings.mqtt_receive_maximum, self._pause, self._resume)
        self._number = 0
        self._current: _Connection | None = None
        self._latest: _Connection | None = None  # the connection being made or served
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._status = "not subscribed: not connected yet"
        self._last_failure = ""  # why the last connection did not end subscribed
        self._had_session = False
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self.sessions_lost = 0
        """Reconnects on which the broker no longer had our session (messages may be lost)."""
        self.reconnects: Counter[str] = Counter()
        """Connections ended or attempts failed, by cause (``session taken over``, ...)."""
        self.messages_received = 0
        """PUBLISH packets delivered by the broker, redeliveries included."""

    @property
    def client_id(self) -> str:
        """The MQTT client id, which names the persistent session."""
        return self._settings.mqtt_client_id

    @property
    def subscribed_all(self) -> bool:
        """Whether the broker granted every subscription at QoS 1 on the current connection.

        What ingest readiness means: every filter subscribed at QoS 1, so that every message
        published from now on is ours to store.
        """
        return self._subscribed.is_set()

    @property
    def status(self) -> str:
        """``subscribed`` or, for readiness checks and logs, why not."""
        return "subscribed" if self._subscribed.is_set() else self._status

    @property
    def inbox(self) -> Inbox:
        return self._inbox

    @property
    def inbox_depth(self) -> int:
        """Messages received and not yet taken by the pipeline."""
        return len(self._inbox)

    @property
    def in_flight_unacked(self) -> int:
        """QoS 1 messages delivered on the current connection and not yet acknowledged."""
        return self._current.unacked if self._current is not None else 0

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
        """Disconnect cleanly, acknowledging nothing more; the session keeps the rest.

        PUBACKs already given are written before the DISCONNECT, and the connection is closed
        by the broker (or after a few seconds by us), so that none of them is lost on the way.
        """
        self._stopping = True
        connection = self._current
        if connection is not None:
            await connection.disconnect(_STOP_TIMEOUT_S)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                # Stopping must not fail: the caller still has a pool to close.
                log.exception("the MQTT client had failed before it was stopped")
        latest = self._latest
        if latest is not None and latest.transport is not None:
            # The socket is closed when stop() returns, even one aborted mid-handshake.
            with suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await asyncio.shield(latest.gone)
        left = connection.unacked if connection else 0
        if connection:
            self._inbox.discard_connection(connection.number)
        log.info(
            "disconnected from the broker; %d messages not acknowledged are left to the "
            "broker's session",
            left,
        )

    def ack(self, messages: list[InboundMessage]) -> int:
        """Acknowledge messages whose data is committed; returns how many are this connection's.

        Their PUBACKs leave once every message that arrived before them is acknowledged too.
        """
        connection = self._current
        if connection is None:
            return 0
        current = connection.number
        seqs = [m.seq for m in messages if m.connection == current and m.qos]
        if seqs:
            connection.acknowledge(seqs)
        return len(seqs)

    def deliver(self, messages: list[InboundMessage]) -> None:
        """Called by the connection with what one read delivered."""
        self.messages_received += len(messages)
        self._inbox.put(messages)

    def _pause(self) -> None:
        if self._current is not None:
            self._current.pause()

    def _resume(self) -> None:
        if self._current is not None:
            self._current.resume()

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
            self._give_up_connection("; ".join(failures), cause="subscription refused")
            return
        log.info("subscribed to %s", ", ".join(self._subscriptions))
        self._last_failure = ""
        if self._current is not None:
            self._current.healthy_since = time.monotonic()
        self._subscribed.set()

    def _give_up_connection(self, why: str, cause: str) -> None:
        """Not subscribed on this connection: say why, end it cleanly, retry with backoff."""
        self._status = f"not subscribed: {why}"
        self._last_failure = why
        if self._current is not None:
            self._current.write(wire.DISCONNECT)
            self._current.abort(why, cause=cause)

    def _connack_problem(self, connack: wire.ConnAck) -> str | None:
        """Why a broker that accepted us still cannot serve this subscription, if it cannot."""
        if connack.maximum_qos < 1:
            return (
                "the broker allows Maximum QoS 0 only; citytel needs QoS 1 (at-least-once "
                "delivery): allow QoS 1 for this client on the broker"
            )
        shared = [f for f in self._subscriptions if f.startswith("$share/")]
        if shared and not connack.shared_subscriptions:
            return (
                "the broker has no shared subscriptions (CONNACK: Shared Subscription "
                f"Available 0) but {', '.join(shared)} is one: enable them on the broker"
            )
        return None

    async def _run(self) -> None:
        attempt = 0
        while True:
            why = ""
            self._number += 1
            connection = self._latest = _Connection(self, self._number)
            cause = "connection failed"
            try:
                why = await self._session(connection)
                cause = connection.cause
            except ssl.SSLCertVerificationError as exc:
                why, cause = _tls_hint(exc), "tls"
            except MqttProtocolError as exc:
                why, cause = f"protocol error: {exc}", "protocol error"
            except (OSError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                # A bug of ours or a case nobody foresaw: say so with the traceback, and keep
                # reconnecting rather than end ingestion silently.
                log.exception("unexpected error in the MQTT client")
                why, cause = f"unexpected {type(exc).__name__}: {exc}", "unexpected error"
            finally:
                self._lost()
            if self._stopping:
                return
            self.reconnects[cause] += 1
            healthy = connection.healthy_since
            if healthy is not None and time.monotonic() - healthy >= _HEALTHY_AFTER_S:
                attempt = 0
            attempt += 1
            ceiling = backoff_ceiling(attempt, base=_MIN_RECONNECT_S, cap=_MAX_RECONNECT_S)
            delay = self._rng.uniform(0, ceiling)
            host, port = self._settings.mqtt_host_port
            log.warning(
                "broker %s:%d: connection ended (%s); reconnecting in %.2f s "
                "(attempt %d, waits up to %.2f s)",
                host,
                port,
                why,
                delay,
                attempt,
                ceiling,
            )
            await asyncio.sleep(delay)

    async def _session(self, connection: _Connection) -> str:
        """One connection, from CONNECT to its loss; returns why it ended."""
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
        if self._last_failure:
            self._status += f" (last attempt: {self._last_failure})"
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            if self._tls is None:
                await loop.create_connection(lambda: connection, host, port)
            else:
                await loop.create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=_server_name(settings),
                )
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
            why = f"the broker refused the connection: {wire.describe_reason(connack.reason)}"
            log.error("%s%s", why, detail)
            self._status = f"not subscribed: {why}"
            self._last_failure = why
            connection.abort("refused", cause="connection refused")
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
        problem = self._connack_problem(connack)
        if problem is not None:
            log.error("%s; reconnecting", problem)
            self._give_up_connection(problem, cause="broker cannot serve")
            return await connection.closed
        connection.write(wire.encode_subscribe(1, self._subscriptions))
        log.info(
            "connected to the broker as %s (%s session)",
            settings.mqtt_client_id,
            "resumed" if connack.session_present else "new",
        )
        keepalive = connack.server_keep_alive or settings.mqtt_keepalive_s
        pinger = asyncio.create_task(self._keep_alive(connection, keepalive))
        try:
            await asyncio.wait(
                (connection.suback, connection.closed),
                timeout=_SUBACK_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not connection.suback.done() and not connection.closed.done():
                why = f"no SUBACK within {_SUBACK_TIMEOUT_S:g} s"
                log.error("the broker did not answer SUBSCRIBE: %s; reconnecting", why)
                self._give_up_connection(why, cause="SUBACK timeout")
            return await connection.closed
        finally:
            pinger.cancel()

    @staticmethod
    async def _keep_alive(connection: _Connection, keepalive: int) -> None:
        """Ping when idle; drop a connection on which the broker has gone silent."""
        while True:
            await asyncio.sleep(keepalive / 4)
            now = time.monotonic()
            if connection.paused:
                # Not reading: the broker's silence is ours. Ours must not make it drop us.
                if now - connection.last_write >= keepalive / 2:
                    connection.write(wire.PINGREQ)
                continue
            if now - connection.last_read > keepalive * 1.5:
                connection.abort(
                    f"the broker sent nothing for {keepalive * 1.5:.0f} s",
                    cause="keep alive timeout",
                )
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
    proves more than an open TCP port (and, for ``mqtts://``, that TLS is set up on both
    sides), and leaves nothing behind on the broker. Given the ``client_id`` of a persistent
    session, the clean start ends that session (what the demo does to its own on a clean exit).
    """
    host, port = settings.mqtt_host_port
    try:
        tls = tls_context(settings)
    except ConfigurationError as exc:
        return str(exc)
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
            if tls is None:
                stream, writer = await asyncio.open_connection(host, port)
            else:
                stream, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=_server_name(settings)
                )
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
    except ssl.SSLCertVerificationError as exc:
        return f"broker {host}:{port} {_tls_hint(exc)}"
    except (OSError, TimeoutError) as exc:
        return f"broker {host}:{port} unreachable: {type(exc).__name__} {exc}".strip()
    finally:
        if writer is not None:
            writer.close()
    if connack.reason >= 0x80:
        why = wire.describe_reason(connack.reason)
        return f"broker {host}:{port} refused the connection: {why}"
    return None
