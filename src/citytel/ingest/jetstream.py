"""The JetStream side of ingestion: one durable pull consumer of a replicated stream.

Gateways keep publishing MQTT, to ``nats-server``'s MQTT listener; the server turns each topic
into a subject (``citytel/v1/gw/waste/id`` → ``citytel.v1.gw.waste.id``) that the stream
captures. Every ingest worker pulls from the same durable consumer: any worker takes any message,
and what a dead worker held is redelivered to the others once the ack wait has passed.

:class:`JetStreamConsumer` has the interface of :class:`~citytel.ingest.mqtt.MqttConsumer` that
the pipeline uses (``start``, ``inbox``, ``ack``, ``wait_subscribed``, ``stop``), so triage,
decoding, storage and dead letters are the same whichever the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError as JsNotFoundError

from citytel.config import Settings
from citytel.domain import DeadLetter, Reason
from citytel.errors import ConfigurationError
from citytel.formats.chirpstack import chirpstack_subscriptions
from citytel.formats.topics import native_subscription
from citytel.formats.ttn import ttn_subscriptions
from citytel.ingest.mqtt import InboundMessage, Inbox

log = logging.getLogger(__name__)

_RETRY_S = 0.5
_FETCH_WAIT_S = 2.0

# Stores the dead letters of messages that were handed out too often; None once stopping.
DeadLetterSink = Callable[[list[DeadLetter]], Awaitable[object | None]]


def topic_to_subject(topic: str) -> str:
    """The NATS subject ``nats-server`` publishes an MQTT topic (or filter) on.

    Levels become tokens; a ``.`` inside a level becomes ``//`` and an empty level ``/``, as the
    server's MQTT listener does; ``+`` and ``#`` become ``*`` and ``>``.
    """
    tokens = []
    for level in topic.split("/"):
        if level == "+":
            tokens.append("*")
        elif level == "#":
            tokens.append(">")
        elif level == "":
            tokens.append("/")
        else:
            tokens.append(level.replace(".", "//"))
    return ".".join(tokens)


def subject_to_topic(subject: str) -> str:
    """The MQTT topic a message was published on, from its subject (:func:`topic_to_subject`)."""
    return "/".join("" if part == "/" else part.replace("//", ".") for part in subject.split("."))


def stream_subjects(settings: Settings) -> list[str]:
    """The subjects the stream captures: the native tree, and the network servers' trees."""
    topics = [native_subscription(settings.mqtt_topic_root, None)]
    if settings.mqtt_lorawan:
        topics += ttn_subscriptions(None) + chirpstack_subscriptions(None)
    return [topic_to_subject(topic) for topic in topics]


def server_urls(settings: Settings) -> list[str]:
    """The cluster's node URLs from CITYTEL_NATS_URL (comma-separated)."""
    urls = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    if not urls or any(not url.startswith(("nats://", "tls://")) for url in urls):
        message = (
            "CITYTEL_NATS_URL must be one or more comma-separated nats://host:4222 "
            "(or tls://) URLs of the cluster's nodes"
        )
        raise ConfigurationError(message)
    return urls


async def connect(settings: Settings, *, name: str, reconnect: bool = True) -> NatsClient:
    """A NATS connection to the cluster, failing over between its nodes."""
    password = settings.nats_password.get_secret_value() if settings.nats_password else None
    options: dict[str, Any] = {
        "servers": server_urls(settings),
        "name": name,
        "allow_reconnect": reconnect,
        # -1: forever; otherwise one more try of each node, then NoServersError.
        "max_reconnect_attempts": -1 if reconnect else 1,
        "reconnect_time_wait": _RETRY_S,
        "connect_timeout": 2,
        "error_cb": _connection_error,
        "reconnected_cb": _reconnected,
    }
    if settings.nats_username:
        options["user"] = settings.nats_username
        options["password"] = password
    return await nats.connect(**options)


async def _connection_error(exc: Exception) -> None:
    # One line, not the client library's traceback: a node being away is an expected event.
    log.warning("NATS connection: %s", exc or type(exc).__name__)


async def _reconnected() -> None:
    log.info("reconnected to NATS")


def stream_config(settings: Settings) -> js_api.StreamConfig:
    """The stream citytel expects, from the settings."""
    return js_api.StreamConfig(
        name=settings.nats_stream,
        description="citytel readings from gateways and network servers",
        subjects=stream_subjects(settings),
        # A message leaves the stream once ingest has committed it: the limits bound the backlog.
        retention=js_api.RetentionPolicy.WORK_QUEUE,
        storage=js_api.StorageType.FILE,
        num_replicas=settings.nats_replicas,
        max_age=float(settings.nats_max_age_s),
        max_bytes=settings.nats_max_bytes,
        max_msgs=settings.nats_max_msgs,
        discard=js_api.DiscardPolicy.NEW,
        duplicate_window=float(settings.nats_duplicate_window_s),
    )


def consumer_config(settings: Settings) -> js_api.ConsumerConfig:
    """The durable pull consumer every ingest worker shares, from the settings."""
    return js_api.ConsumerConfig(
        durable_name=settings.nats_durable,
        description="citytel ingest workers",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.nats_ack_wait_s,
        # Unlimited on the server: the worker dead-letters a message at CITYTEL_NATS_MAX_DELIVER,
        # so that a message is never abandoned in the stream without a trace.
        max_deliver=-1,
        max_ack_pending=settings.nats_max_ack_pending,
        num_replicas=0,
    )


_STREAM_CHECKS = {
    "subjects": "CITYTEL_MQTT_TOPIC_ROOT / CITYTEL_MQTT_LORAWAN",
    "retention": "always workqueue",
    "storage": "always file",
    "num_replicas": "CITYTEL_NATS_REPLICAS",
    "max_age": "CITYTEL_NATS_MAX_AGE_S",
    "max_bytes": "CITYTEL_NATS_MAX_BYTES",
    "max_msgs": "CITYTEL_NATS_MAX_MSGS",
    "discard": "always new",
    "duplicate_window": "CITYTEL_NATS_DUPLICATE_WINDOW_S",
}
_CONSUMER_CHECKS = {
    "ack_policy": "always explicit",
    "ack_wait": "CITYTEL_NATS_ACK_WAIT_S",
    "max_deliver": "always unlimited",
    "max_ack_pending": "CITYTEL_NATS_MAX_ACK_PENDING",
}


def _differences(found: Any, wanted: Any, checks: dict[str, str]) -> list[str]:
    out = []
    for name, setting in checks.items():
        have, want = getattr(found, name), getattr(wanted, name)
        if name == "subjects":
            have, want = sorted(have or []), sorted(want or [])
        if have != want:
            out.append(f"{name} is {have!r}, the settings say {want!r} ({setting})")
    return out


@dataclass
class SetupReport:
    """What ``citytel nats setup`` did."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


async def setup_stream(settings: Settings, *, update: bool = False) -> SetupReport:
    """Create the stream and the durable consumer, or check that they match the settings.

    Raises:
        ConfigurationError: an existing stream or consumer differs from the settings (and
            ``update`` was not asked, or the server refused the update); names each difference.
    """
    try:
        nc = await connect(settings, name="citytel-setup", reconnect=False)
    except (OSError, NatsError) as exc:
        # Without the URLs: they may carry credentials.
        message = (
            f"cannot reach any NATS server of CITYTEL_NATS_URL ({type(exc).__name__}); "
            "check that the cluster runs and the URL's hosts and ports"
        )
        raise ConfigurationError(message) from exc
    try:
        return await _setup(nc.jetstream(), settings, update=update)
    finally:
        await nc.close()


async def _setup(js: JetStreamContext, settings: Settings, *, update: bool) -> SetupReport:
    report = SetupReport()
    wanted = stream_config(settings)
    stream = settings.nats_stream
    try:
        info = await js.stream_info(stream)
    except JsNotFoundError:
        await js.add_stream(wanted)
        report.created.append(f"stream {stream}")
    else:
        differences = _differences(info.config, wanted, _STREAM_CHECKS)
        _apply(report, f"stream {stream}", differences, update)
        if update and report.updated:
            await js.update_stream(wanted)
    wanted_consumer = consumer_config(settings)
    durable = settings.nats_durable
    what = f"consumer {durable} of stream {stream}"
    try:
        consumer = await js.consumer_info(stream, durable)
    except JsNotFoundError:
        await js.add_consumer(stream, wanted_consumer)
        report.created.append(what)
        return report
    differences = _differences(consumer.config, wanted_consumer, _CONSUMER_CHECKS)
    before = len(report.updated)
    _apply(report, what, differences, update)
    if len(report.updated) > before:
        await js.add_consumer(stream, wanted_consumer)
    return report


def _apply(report: SetupReport, what: str, differences: list[str], update: bool) -> None:
    if not differences:
        report.unchanged.append(what)
        return
    if not update:
        message = (
            f"the existing {what} differs from the settings: {'; '.join(differences)}. "
            "Change the settings to match, or run `citytel nats setup --update` "
            "(replicas, limits and ack settings can change in place; retention, storage and "
            "discard cannot)"
        )
        raise ConfigurationError(message)
    report.updated.append(what)


class JetStreamConsumer:
    """Pulls batches from the durable consumer into an :class:`Inbox`, acks after commit.

    While the pipeline holds a message (decoding, storing, retrying through a database outage),
    the consumer tells the server it is still in progress, so that the ack wait only runs out for
    a worker that is gone. A message delivered ``CITYTEL_NATS_MAX_DELIVER`` times without being
    committed (the workers that took it died) is dead-lettered ``unreadable`` and terminated
    instead of being decoded again.
    """

    def __init__(self, settings: Settings, dead_letter: DeadLetterSink) -> None:
        self._settings = settings
        self._dead_letter = dead_letter
        self._inbox = Inbox()
        self._held: dict[int, Msg] = {}
        self._keys = itertools.count(1)
        self._subscribed = asyncio.Event()
        self._nc: NatsClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._acking: set[asyncio.Task[None]] = set()
        # Keep the local backlog about one round of batches deep: the rest waits in the
        # stream, where another worker can take it.
        self._room = settings.ingest_batch_size * (settings.ingest_concurrency + 1)
        # Counters for logs and metrics, as the MQTT source keeps them.
        self.messages_received = 0
        self.sessions_lost = 0  # a durable consumer is never lost by a reconnect
        self.reconnects: Counter[str] = Counter()

    @property
    def inbox(self) -> Inbox:
        return self._inbox

    @property
    def inbox_depth(self) -> int:
        """Messages pulled and not yet taken by the pipeline."""
        return len(self._inbox)

    @property
    def in_flight_unacked(self) -> int:
        """Messages pulled and not yet acknowledged."""
        return len(self._held)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def subscribed_all(self) -> bool:
        """Bound to the durable consumer: every message of the stream is ours to store."""
        return self._subscribed.is_set()

    async def wait_subscribed(self) -> None:
        """Wait until the worker is bound to the durable consumer.

        Raises:
            ConfigurationError: the stream or the consumer does not exist.
        """
        bound = asyncio.ensure_future(self._subscribed.wait())
        try:
            await asyncio.wait({bound, self._tasks[0]}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            bound.cancel()
        if not self._subscribed.is_set():
            await self._tasks[0]  # raises what ended it

    def start(self) -> None:
        """Connect and pull in the background."""
        self._tasks = [
            asyncio.create_task(self._run()),
            asyncio.create_task(self._keep_in_progress()),
        ]

    def ack(self, messages: list[InboundMessage]) -> int:
        """Acknowledge committed messages; returns how many were ours to acknowledge."""
        taken = [m for m in (self._held.pop(msg.mid, None) for msg in messages) if m is not None]
        if taken:
            self._spawn_ack(taken, "ack")
        return len(taken)

    async def stop(self) -> None:
        """Stop pulling; what was pulled and not committed goes back to the stream at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # What ended a task was reported by wait_subscribed or logged where it happened.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        leftover = list(self._held.values())
        self._held.clear()
        if leftover:
            self._spawn_ack(leftover, "nak")
        if self._acking:
            await asyncio.gather(*self._acking, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            await self._nc.close()
        log.info("left the JetStream consumer; %d pulled message(s) handed back", len(leftover))

    def _spawn_ack(self, messages: list[Msg], how: str) -> None:
        task = asyncio.create_task(self._answer(messages, how))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    @staticmethod
    async def _answer(messages: list[Msg], how: str) -> None:
        try:
            for msg in messages:
                await (msg.ack() if how == "ack" else msg.nak())
        except Exception as exc:
            # The server redelivers what it did not hear about; storage makes that a no-op.
            log.warning("could not %s %d message(s): %s", how, len(messages), exc)

    async def _bind(self) -> tuple[NatsClient, JetStreamContext.PullSubscription]:
        settings = self._settings
        nc = await connect(settings, name="citytel-ingest")
        try:
            js = nc.jetstream()
            await js.consumer_info(settings.nats_stream, settings.nats_durable)
            sub = await js.pull_subscribe_bind(
                durable=settings.nats_durable, stream=settings.nats_stream
            )
        except BaseException:
            await nc.close()
            raise
        return nc, sub

    async def _connect(self) -> tuple[NatsClient, JetStreamContext.PullSubscription]:
        settings = self._settings
        delay = _RETRY_S
        while True:
            try:
                return await self._bind()
            except JsNotFoundError as exc:
                message = (
                    f"JetStream stream {settings.nats_stream} or its consumer "
                    f"{settings.nats_durable} does not exist (CITYTEL_NATS_STREAM, "
                    "CITYTEL_NATS_DURABLE): run `citytel nats setup` first"
                )
                raise ConfigurationError(message) from exc
            except Exception as exc:
                log.warning("cannot reach the JetStream consumer (%s); retrying", exc)
                self.reconnects["connection failed"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        settings = self._settings
        self._nc, sub = await self._connect()
        log.info(
            "subscribed to JetStream stream %s through consumer %s",
            settings.nats_stream,
            settings.nats_durable,
        )
        self._subscribed.set()
        while True:
            if len(self._inbox) >= self._room:
                await asyncio.sleep(settings.ingest_flush_ms / 1000)
                continue
            try:
                msgs = await sub.fetch(settings.ingest_batch_size, timeout=_FETCH_WAIT_S)
            except TimeoutError:
                continue
            except Exception as exc:
                # The stream's leader is moving or the node went away: the client reconnects.
                log.warning("pulling from JetStream failed (%s); retrying", exc)
                self.reconnects["pull failed"] += 1
                await asyncio.sleep(_RETRY_S)
                continue
            await self._take(msgs)

    async def _take(self, msgs: list[Msg]) -> None:
        self.messages_received += len(msgs)
        fresh: list[InboundMessage] = []
        worn: list[tuple[Msg, DeadLetter]] = []
        for msg in msgs:
            metadata = msg.metadata
            received_at = metadata.timestamp.astimezone(UTC)
            topic = subject_to_topic(msg.subject)
            if metadata.num_delivered >= self._settings.nats_max_deliver:
                worn.append((msg, _worn_out(topic, msg.data, received_at, metadata.num_delivered)))
                continue
            key = next(self._keys)
            self._held[key] = msg
            fresh.append(InboundMessage(topic, msg.data, received_at, key, 1, 0))
        if fresh:
            self._inbox.put(fresh)
        if worn:
            log.error(
                "%d message(s) were handed out %d times without being stored; dead-lettering them",
                len(worn),
                self._settings.nats_max_deliver,
            )
            try:
                stored = await self._dead_letter([letter for _, letter in worn])
            except Exception:
                # Not terminated: they come back after the ack wait and are tried again.
                log.exception("storing the dead letters of worn-out messages failed")
                return
            if stored is not None:
                for msg, _ in worn:
                    await msg.term()

    async def _keep_in_progress(self) -> None:
        every = self._settings.nats_ack_wait_s / 3
        while True:
            await asyncio.sleep(every)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()


def _worn_out(topic: str, payload: bytes, received_at: datetime, times: int) -> DeadLetter:
    detail = (
        f"delivered {times} times without being stored: every worker that took it stopped "
        "before committing (CITYTEL_NATS_MAX_DELIVER). Check the ingest logs for a crash, "
        "then replay this dead letter"
    )
    return DeadLetter(topic, payload, Reason.UNREADABLE, detail, received_at)
