"""The ingest loop: batch, decode, store in one transaction, then acknowledge."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from citytel.config import Settings, database_address
from citytel.decoding.profiles import DeviceProfile, load_profiles
from citytel.domain import DeadLetter, DecodedMessage, Reason
from citytel.errors import (
    CitytelError,
    IngestFailed,
    RejectedMessage,
    StorageError,
    TransientStorageError,
)
from citytel.formats.chirpstack import chirpstack_subscriptions
from citytel.formats.native import decode_native
from citytel.formats.network_server import decode_lorawan, is_lorawan_topic
from citytel.formats.topics import native_subscription, parse_native_topic
from citytel.formats.ttn import ttn_subscriptions
from citytel.ingest.metrics import IngestMetrics
from citytel.ingest.mqtt import InboundMessage
from citytel.ingest.sensor_binding import PendingUplink, application_names, interpret
from citytel.ingest.source import Source, open_source
from citytel.storage.gateways import mark_seen
from citytel.storage.migrate import require_migrated
from citytel.storage.pool import wait_for_pool
from citytel.storage.sensors import resolve_sensors
from citytel.storage.writer import BatchOutcome, store_batch, store_dead_letters

log = logging.getLogger(__name__)

# How often ingest writes when each gateway was last seen (gateways.last_seen_at).
_SEEN_EVERY_S = 10.0


@dataclass
class IngestStats:
    """Running totals of one ingest process, logged periodically."""

    messages: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    retries: int = 0
    batch_failures: int = 0
    ignored: int = 0
    events: int = 0
    # time.monotonic() of the last commit; the start before the first.
    last_commit: float = field(default_factory=time.monotonic)
    # host:port/database, for the retry lines: never the password.
    database: str = "the database"

    def add(self, messages: int, outcome: BatchOutcome) -> None:
        self.last_commit = time.monotonic()
        self.messages += messages
        self.readings_stored += outcome.stored
        self.duplicates += outcome.duplicates
        self.dead_letters.update(outcome.dead_letters)
        self.events += outcome.events
        self.batches += 1

    def summary(self) -> str:
        dead = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items())) or "none"
        return (
            f"messages={self.messages} stored={self.readings_stored} "
            f"duplicates={self.duplicates} events={self.events} ignored={self.ignored} "
            f"batches={self.batches} retries={self.retries} "
            f"batch_failures={self.batch_failures} "
            f"dead_letters: {dead}"
        )


@dataclass
class Triage:
    """A batch sorted by what happens next."""

    decoded: list[DecodedMessage] = field(default_factory=list)
    uplinks: list[PendingUplink] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    ignored: int = 0


def _letter(message: InboundMessage, exc: RejectedMessage) -> DeadLetter:
    return DeadLetter(message.topic, message.payload, exc.reason, exc.detail, message.received_at)


def unreadable(topic: str, payload: bytes, received_at: datetime, exc: Exception) -> DeadLetter:
    """The dead letter of a message that made citytel fail in a way it did not foresee.

    That is a bug of ours, not the sender's: the letter keeps the message for a replay once
    the bug is fixed, and names the exception so that the bug can be found.
    """
    detail = (
        f"citytel could not read this message ({type(exc).__name__}: {exc}); "
        "this is a bug in citytel: report it, then replay this dead letter once fixed"
    )
    return DeadLetter(topic, payload, Reason.UNREADABLE, detail[:2000], received_at)


def triage(
    messages: Sequence[InboundMessage],
    *,
    root: str,
    now: datetime,
    max_future: timedelta,
    max_age: timedelta | None = None,
) -> Triage:
    """Read each message's topic and payload, without the database.

    citytel's own topics become readings; network-server uplinks wait for their sensor's
    registry entry; other network-server events (joins, acks, ...) are ignored; anything that
    cannot be read becomes a dead letter saying why.
    """
    result = Triage()
    for message in messages:
        try:
            if is_lorawan_topic(message.topic):
                uplink = decode_lorawan(message.topic, message.payload, now=now)
                if uplink is None:
                    result.ignored += 1
                else:
                    result.uplinks.append(
                        PendingUplink(uplink, message.topic, message.payload, message.received_at)
                    )
                continue
            address = parse_native_topic(root, message.topic)
            readings = decode_native(
                address.kind,
                address.device_id,
                message.payload,
                now=now,
                max_future=max_future,
                max_age=max_age,
            )
        except RejectedMessage as exc:
            result.dead.append(_letter(message, exc))
            continue
        except Exception as exc:
            # Whatever reading one message raises stays with that message.
            log.exception("reading a message on %r failed unexpectedly", message.topic[:200])
            result.dead.append(unreadable(message.topic, message.payload, message.received_at, exc))
            continue
        result.decoded.append(
            DecodedMessage(
                kind=address.kind,
                device_id=address.device_id,
                readings=tuple(readings),
                topic=message.topic,
                payload=message.payload,
                received_at=message.received_at,
                gateway=address.gateway,
            )
        )
    return result


@dataclass(frozen=True)
class Decoders:
    """What reading a batch needs besides the messages: the topic root and device profiles."""

    root: str
    profiles: Mapping[str, DeviceProfile]
    max_future: timedelta
    max_age: timedelta | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoders:
        """Load the device profiles named by the settings."""
        return cls(
            root=settings.mqtt_topic_root,
            profiles=load_profiles(settings.profiles_dir),
            max_future=timedelta(seconds=settings.ingest_max_future_s),
            max_age=settings.retention_period,
        )


async def read_batch(
    pool: asyncpg.Pool, messages: Sequence[InboundMessage], decoders: Decoders
) -> tuple[list[DecodedMessage], list[DeadLetter], int]:
    """Decode a batch, looking up LoRaWAN sensors in the registry: (decoded, dead, ignored)."""
    now = datetime.now(UTC)
    sorted_out = triage(
        messages,
        root=decoders.root,
        now=now,
        max_future=decoders.max_future,
        max_age=decoders.max_age,
    )
    decoded, dead = sorted_out.decoded, sorted_out.dead
    if sorted_out.uplinks:
        # A NUL cannot be sent to PostgreSQL as text, and matches no registered id anyway.
        sensors = await resolve_sensors(
            pool,
            {p.uplink.dev_eui for p in sorted_out.uplinks if p.uplink.dev_eui},
            {
                p.uplink.device_id
                for p in sorted_out.uplinks
                if p.uplink.device_id and "\x00" not in p.uplink.device_id
            },
            {
                name
                for p in sorted_out.uplinks
                for name in application_names(p.uplink)
                if "\x00" not in name
            },
        )
        more, more_dead = interpret(
            sorted_out.uplinks,
            sensors,
            decoders.profiles,
            now=now,
            max_future=decoders.max_future,
            max_age=decoders.max_age,
        )
        decoded += more
        dead += more_dead
    return decoded, dead, sorted_out.ignored


async def sleep_unless(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds; True when ``stop`` was set meanwhile."""
    try:
        async with asyncio.timeout(delay):
            await stop.wait()
    except TimeoutError:
        return False
    return True


async def _store_one_by_one(
    pool: asyncpg.Pool, decoded: list[DecodedMessage], dead: list[DeadLetter]
) -> BatchOutcome:
    # A batch the database refuses for a reason other than an outage: find the message(s) at
    # fault by storing each alone, so one bad message cannot stall the rest.
    total = BatchOutcome()
    if dead:
        await store_dead_letters(pool, dead)
        total.dead_letters.update(d.reason for d in dead)
    for message in decoded:
        try:
            outcome = await store_batch(pool, [message], [])
        except TransientStorageError:
            raise
        except StorageError as exc:
            letter = DeadLetter(
                topic=message.topic,
                payload=message.payload,
                reason=Reason.STORAGE_REJECTED,
                detail=f"the database refused these readings: {exc}",
                received_at=message.received_at,
            )
            await store_dead_letters(pool, [letter])
            total.dead_letters[Reason.STORAGE_REJECTED] += 1
            continue
        total.stored += outcome.stored
        total.duplicates += outcome.duplicates
        total.dead_letters.update(outcome.dead_letters)
    return total


def subscriptions(settings: Settings) -> list[str]:
    """citytel's own topics, and the network servers' when LoRaWAN ingestion is on."""
    group = settings.mqtt_share_group or None
    topics = [native_subscription(settings.mqtt_topic_root, group)]
    if settings.mqtt_lorawan:
        topics += ttn_subscriptions(group) + chirpstack_subscriptions(group)
    return topics


async def process_with_retry(
    pool: asyncpg.Pool,
    batch: Sequence[InboundMessage],
    decoders: Decoders,
    *,
    stop: asyncio.Event,
    stats: IngestStats,
    max_delay: float = 10.0,
) -> BatchOutcome | None:
    """Decode and store a batch, retrying through outages; None when stopped before a commit."""
    delay = 0.2
    read: tuple[list[DecodedMessage], list[DeadLetter], int] | None = None
    while True:
        try:
            if read is None:
                read = await read_batch(pool, batch, decoders)
            decoded, dead, ignored = read
            outcome = await store_batch(pool, decoded, dead)
        except TransientStorageError as exc:
            stats.retries += 1
            log.warning(
                "%s: storing a batch failed (%s); retrying in %.1f s", stats.database, exc, delay
            )
        except StorageError as exc:
            if read is None:
                # Looking sensors up failed for a reason other than an outage: a bug of ours,
                # not bad input. Say so loudly and keep the messages until it is fixed.
                log.error(  # noqa: TRY400
                    "%s: reading a batch failed (%s); retrying in %.1f s",
                    stats.database,
                    exc,
                    delay,
                )
            else:
                log.warning("the database refused a batch (%s); storing one by one", exc)
                try:
                    outcome = await _store_one_by_one(pool, read[0], read[1])
                except TransientStorageError as retry_exc:
                    stats.retries += 1
                    log.warning(
                        "%s: storing one by one failed (%s); retrying", stats.database, retry_exc
                    )
                else:
                    stats.ignored += read[2]
                    return outcome
        else:
            stats.ignored += ignored
            return outcome
        if await sleep_unless(stop, delay):
            return None
        delay = min(delay * 2, max_delay)


async def process_guarded(
    pool: asyncpg.Pool,
    batch: Sequence[InboundMessage],
    decoders: Decoders,
    *,
    stop: asyncio.Event,
    stats: IngestStats,
) -> BatchOutcome | None:
    """:func:`process_with_retry`, with the culprit isolated when a batch fails unexpectedly.

    An exception outside per-message code (a bug of ours, met by some message of the batch) is
    logged with its traceback and counted, then the batch is handled again one message at a
    time: the messages that store are stored, and the one(s) that fail again become
    ``unreadable`` dead letters. None when stopped before everything committed.

    Raises:
        Exception: only when even that fails (the dead letter cannot be stored either).
    """
    try:
        return await process_with_retry(pool, batch, decoders, stop=stop, stats=stats)
    except Exception:
        stats.batch_failures += 1
        log.exception(
            "handling a batch of %d messages failed unexpectedly; "
            "handling them one at a time to find the culprit",
            len(batch),
        )
    total = BatchOutcome()
    for message in batch:
        try:
            outcome = await process_with_retry(pool, [message], decoders, stop=stop, stats=stats)
        except Exception as exc:
            log.exception(
                "a message on %r fails every time; dead-lettering it", message.topic[:200]
            )
            letter = unreadable(message.topic, message.payload, message.received_at, exc)
            outcome = await _store_letters_with_retry(pool, [letter], stop=stop, stats=stats)
        if outcome is None:
            return None
        total.stored += outcome.stored
        total.duplicates += outcome.duplicates
        total.events += outcome.events
        total.dead_letters.update(outcome.dead_letters)
    return total


async def _store_letters_with_retry(
    pool: asyncpg.Pool,
    letters: list[DeadLetter],
    *,
    stop: asyncio.Event,
    stats: IngestStats,
    max_delay: float = 10.0,
) -> BatchOutcome | None:
    delay = 0.2
    while True:
        try:
            await store_dead_letters(pool, letters)
        except TransientStorageError as exc:
            stats.retries += 1
            log.warning(
                "%s: storing a dead letter failed (%s); retrying in %.1f s",
                stats.database,
                exc,
                delay,
            )
        else:
            outcome = BatchOutcome()
            outcome.dead_letters.update(letter.reason for letter in letters)
            return outcome
        if await sleep_unless(stop, delay):
            return None
        delay = min(delay * 2, max_delay)


async def _report(stats: IngestStats, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        log.info("ingest: %s", stats.summary())


@dataclass
class GatewaysSeen:
    """When each gateway last published, gathered in memory and written now and then.

    Written every few seconds rather than in each batch's transaction: one row per gateway
    updated by every concurrent batch would make the batches wait on each other's row locks.
    """

    root: str
    pending: dict[str, datetime] = field(default_factory=dict)

    def add(self, batch: Sequence[InboundMessage]) -> None:
        prefix = self.root + "/"
        for message in batch:
            if message.topic.startswith(prefix):
                gateway = message.topic[len(prefix) :].partition("/")[0]
                last = self.pending.get(gateway)
                if last is None or message.received_at > last:
                    self.pending[gateway] = message.received_at

    async def flush(self, pool: asyncpg.Pool) -> None:
        """Write what was gathered; kept for the next flush when the database is away."""
        seen, self.pending = self.pending, {}
        try:
            await mark_seen(pool, seen)
        except StorageError as exc:
            log.warning("recording when gateways were last seen failed (%s); will retry", exc)
            for gateway, at in seen.items():
                if gateway not in self.pending or at > self.pending[gateway]:
                    self.pending[gateway] = at


async def _record_seen(pool: asyncpg.Pool, seen: GatewaysSeen, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await seen.flush(pool)


async def _announce(consumer: Source, subscribed: asyncio.Event | None) -> None:
    await consumer.wait_subscribed()
    if subscribed is not None:
        subscribed.set()


async def run_ingest(
    settings: Settings,
    *,
    stop: asyncio.Event,
    subscribed: asyncio.Event | None = None,
    database_url: str | None = None,
    metrics: IngestMetrics | None = None,
) -> IngestStats:
    """Consume the subscription until ``stop`` is set.

    ``metrics``, when given, read this run's totals at each scrape and time each batch's commit.

    ``subscribed``, when given, is set once the broker has granted the subscription: from then
    on, every message published to it is ours to store.

    Nothing is acknowledged before it is committed: on a crash, the broker redelivers what was
    not acknowledged, and idempotent storage turns the redelivery into a no-op.
    """
    url = database_url or settings.database_url.get_secret_value()
    stats = IngestStats(database=f"database {database_address(url)}")
    # Before waiting for the database: a TLS file that cannot be read is an error at start-up.
    # Dead letters of the source's own (JetStream) go through the pool, there by then.
    consumer = open_source(settings, subscriptions(settings), lambda letters: dead_letter(letters))
    pool = await wait_for_pool(settings, stop=stop, database_url=database_url)
    if pool is None:
        return stats
    try:
        # Without its tables, ingest would stall at the first message: refuse at start instead.
        await require_migrated(pool)
    except CitytelError:
        await pool.close()
        raise
    decoders = Decoders.from_settings(settings)

    async def dead_letter(letters: list[DeadLetter]) -> BatchOutcome | None:
        outcome = await _store_letters_with_retry(pool, letters, stop=stop, stats=stats)
        if outcome is not None:
            stats.dead_letters.update(outcome.dead_letters)
        return outcome

    if metrics is not None:
        metrics.watch(stats, consumer)
    consumer.start()
    announce = asyncio.ensure_future(_announce(consumer, subscribed))
    flush_after = settings.ingest_flush_ms / 1000
    # Several batches in flight: while one commits, the next is decoded and written on another
    # connection. Each is acknowledged after its own commit; the order of commits does not
    # matter because storage is idempotent and the latest state never moves backwards.
    slots = asyncio.Semaphore(settings.ingest_concurrency)
    in_flight: set[asyncio.Task[None]] = set()
    reporter = asyncio.ensure_future(_report(stats, settings.ingest_stats_interval_s))
    seen = GatewaysSeen(settings.mqtt_topic_root)
    recorder = asyncio.ensure_future(_record_seen(pool, seen, _SEEN_EVERY_S))

    broken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def source_failed(done: asyncio.Future[None]) -> None:
        # A source that cannot start (a JetStream consumer that does not exist) ends ingest.
        if not done.cancelled() and done.exception() is not None and not broken.done():
            broken.set_exception(done.exception())  # type: ignore[arg-type]

    announce.add_done_callback(source_failed)

    async def handle(batch: list[InboundMessage]) -> None:
        started = time.monotonic()
        try:
            outcome = await process_guarded(pool, batch, decoders, stop=stop, stats=stats)
            if outcome is not None:
                consumer.ack(batch)
                stats.add(len(batch), outcome)
                seen.add(batch)
                if metrics is not None:
                    metrics.commit_seconds.observe(stats.last_commit - started)
        except Exception as exc:
            # Isolating the batch failed too: this worker cannot store anything. It ends, so
            # that its supervisor restarts it, rather than stay connected holding messages.
            log.critical("ingest cannot go on: %s", exc, exc_info=True)
            if not broken.done():
                broken.set_exception(exc)
        finally:
            slots.release()

    try:
        while not stop.is_set():
            await slots.acquire()
            batch_task = asyncio.ensure_future(
                consumer.inbox.get_batch(
                    settings.ingest_batch_size, flush_after, settings.ingest_batch_bytes
                )
            )
            stop_task = asyncio.ensure_future(stop.wait())
            waiters: set[asyncio.Future[Any]] = {batch_task, stop_task, broken}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if broken.done():
                batch_task.cancel()
                slots.release()
                break
            if not batch_task.done():
                batch_task.cancel()
                slots.release()
                break
            task = asyncio.create_task(handle(batch_task.result()))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    finally:
        # Batches being stored finish (or give up, once stopped) before we disconnect, so
        # that what committed is acknowledged.
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        reporter.cancel()
        recorder.cancel()
        announce.cancel()
        await consumer.stop()
        await seen.flush(pool)
        await pool.close()
        log.info("ingest stopped: %s", stats.summary())
    if broken.done():
        exc = broken.exception()
        message = f"ingestion failed and stopped: {type(exc).__name__}: {exc}"
        raise IngestFailed(message) from exc
    return stats
