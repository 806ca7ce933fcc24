"""The MQTT side of ingestion: a persistent, shared, manually acknowledged QoS 1 subscription.

paho-mqtt runs its network loop in its own thread. Messages cross into asyncio through
:class:`Inbox`; acknowledgements go back through :meth:`MqttConsumer.ack`, which the pipeline calls
only after the transaction holding those messages has committed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citytel.config import Settings

log = logging.getLogger(__name__)


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
    """A thread-safe hand-over from paho's thread to the asyncio loop, taken in batches.

    paho's thread wakes the loop once per batch, not once per message: the loop says how many
    messages it is waiting for, and only the message that reaches that count wakes it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[InboundMessage] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wake_at = 0  # 0: nobody waits; else wake when this many messages are here

    def put(self, item: InboundMessage) -> None:
        """Called from paho's thread."""
        with self._lock:
            self._items.append(item)
            wake = 0 < self._wake_at <= len(self._items)
            if wake:
                self._wake_at = 0
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    def discard_connection(self, connection: int) -> int:
        """Drop what an old connection delivered: the broker redelivers it on the new one."""
        with self._lock:
            kept = deque(m for m in self._items if m.connection != connection)
            dropped = len(self._items) - len(kept)
            self._items = kept
        return dropped

    def _arm(self, count: int) -> bool:
        """Ask to be woken at ``count`` messages; False when they are already here."""
        with self._lock:
            if len(self._items) >= count:
                self._wake_at = 0
                return False
            self._wake_at = count
            self._ready.clear()
            return True

    def _take(self, limit: int) -> list[InboundMessage]:
        with self._lock:
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


class MqttConsumer:
    """A persistent-session, manual-ack subscriber on a shared subscription."""

    def __init__(self, settings: Settings, subscriptions: list[str]) -> None:
        self._settings = settings
        self._subscriptions = subscriptions
        self._connection = 0
        self._connected = threading.Event()
        self._ack_lock = threading.Lock()
        self._inbox: Inbox | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            self._client.username_pw_set(settings.mqtt_username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=15)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._subscribed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @property
    def inbox(self) -> Inbox:
        assert self._inbox is not None, "start() first"  # noqa: S101
        return self._inbox

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_subscribed(self) -> None:
        """Wait until the broker has granted our subscriptions on the current connection."""
        assert self._subscribed is not None, "start() first"  # noqa: S101
        await self._subscribed.wait()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background; paho reconnects by itself after any loss."""
        self._loop = loop
        self._inbox = Inbox(loop)
        self._subscribed = asyncio.Event()
        host, port = self._settings.mqtt_host_port
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
        # The broker sends at most this many unacknowledged messages. It must exceed a batch,
        # or a batch could never fill while its first messages wait for their ack.
        properties.ReceiveMaximum = self._settings.mqtt_receive_maximum
        self._client.connect_async(
            host,
            port,
            keepalive=self._settings.mqtt_keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect without acknowledging anything more; the session keeps the rest."""
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, messages: list[InboundMessage]) -> int:
        """Acknowledge messages whose data is committed; returns how many acks were sent."""
        sent = 0
        with self._ack_lock:
            current = self._connection
            for message in messages:
                if message.connection != current or message.qos == 0:
                    continue
                self._client.ack(message.mid, message.qos)
                sent += 1
        return sent

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        with self._ack_lock:
            self._connection += 1
        client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._connected.set()
        log.info("connected to the broker as %s", self._settings.mqtt_client_id)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("the broker refused our subscription(s): %s", ", ".join(refused))
            return
        log.info("subscribed to %s", ", ".join(self._subscriptions))
        if self._subscribed is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        with self._ack_lock:
            old = self._connection
            self._connection += 1
        dropped = self._inbox.discard_connection(old) if self._inbox else 0
        if self._stopping:
            log.info("disconnected from the broker; %d messages left to the session", dropped)
            return
        log.warning(
            "disconnected from the broker (%s); %d unacknowledged messages will be redelivered",
            reason,
            dropped,
        )

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert self._inbox is not None  # noqa: S101 - callbacks start after start()
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # Brokers refuse such topics, but an exception here would kill paho's thread.
            topic = message._topic.decode("utf-8", "replace")
        self._inbox.put(
            InboundMessage(
                topic=topic,
                payload=bytes(message.payload),
                received_at=datetime.now(UTC),
                mid=message.mid,
                qos=message.qos,
                connection=self._connection,
            )
        )


def _mqtt_string(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean session: a probe must leave nothing behind
    payload = _mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big")
    body = variable + payload
    length = bytearray()
    remaining = len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return bytes([0x10]) + bytes(length) + body


async def probe_broker(settings: Settings, *, within: float = 2.0) -> str | None:
    """Check that the broker accepts an MQTT connection; None when it does, else why not.

    A bare MQTT 3.1.1 CONNECT/CONNACK exchange over asyncio: cheaper than a paho client and its
    thread for a readiness check, and it proves more than an open TCP port.
    """
    host, port = settings.mqtt_host_port
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    # A client id of its own: a shared one would make concurrent probes disconnect each other.
    packet = _connect_packet(
        f"citytel-probe-{secrets.token_hex(6)}", settings.mqtt_username, password
    )
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(packet)
            await writer.drain()
            connack = await reader.readexactly(4)
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"broker {host}:{port} unreachable: {type(exc).__name__} {exc}".strip()
    finally:
        if writer is not None:
            writer.close()
    if connack[0] != 0x20 or connack[3] != 0:
        return f"broker {host}:{port} refused the connection (CONNACK code {connack[3]})"
    return None
