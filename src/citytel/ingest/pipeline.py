"""The ingest loop: batch, decode, store in one transaction, then acknowledge."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from citytel.config import Settings
from citytel.domain import DeadLetter, DecodedMessage, Reason
from citytel.errors import RejectedMessage, StorageError, TransientStorageError
from citytel.formats.native import decode_native
from citytel.formats.topics import native_subscription, parse_native_topic
from citytel.ingest.mqtt import InboundMessage, MqttConsumer
from citytel.storage.pool import wait_for_pool
from citytel.storage.writer import BatchOutcome, store_batch, store_dead_letters

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """Running totals of one ingest process, logged periodically."""

    messages: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    retries: int = 0

    def add(self, messages: int, outcome: BatchOutcome) -> None:
        self.messages += messages
        self.readings_stored += outcome.stored
        self.duplicates += outcome.duplicates
        self.dead_letters.update(outcome.dead_letters)
        self.batches += 1

    def summary(self) -> str:
        dead = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items())) or "none"
        return (
            f"messages={self.messages} stored={self.readings_stored} "
            f"duplicates={self.duplicates} batches={self.batches} retries={self.retries} "
            f"dead_letters: {dead}"
        )


def triage(
    messages: Sequence[InboundMessage], *, root: str, now: datetime, max_future: timedelta
) -> tuple[list[DecodedMessage], list[DeadLetter]]:
    """Decode each message into readings, or into a dead letter saying why it cannot be read."""
    decoded: list[DecodedMessage] = []
    dead: list[DeadLetter] = []
    for message in messages:
        try:
            address = parse_native_topic(root, message.topic)
            readings = decode_native(
                address.kind, address.device_id, message.payload, now=now, max_future=max_future
            )
        except RejectedMessage as exc:
            dead.append(
                DeadLetter(
                    topic=message.topic,
                    payload=message.payload,
                    reason=exc.reason,
                    detail=exc.detail,
                    received_at=message.received_at,
                )
            )
            continue
        decoded.append(
            DecodedMessage(
                kind=address.kind,
                device_id=address.device_id,
                readings=tuple(readings),
                topic=message.topic,
                payload=message.payload,
                received_at=message.received_at,
            )
        )
    return decoded, dead


async def _sleep_unless(stop: asyncio.Event, delay: float) -> bool:
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


async def store_with_retry(
    pool: asyncpg.Pool,
    decoded: list[DecodedMessage],
    dead: list[DeadLetter],
    *,
    stop: asyncio.Event,
    stats: IngestStats,
    max_delay: float = 10.0,
) -> BatchOutcome | None:
    """Store a batch, retrying through outages; None when stopped before it could commit."""
    delay = 0.2
    while True:
        try:
            return await store_batch(pool, decoded, dead)
        except TransientStorageError as exc:
            stats.retries += 1
            log.warning("storing a batch failed (%s); retrying in %.1f s", exc, delay)
        except StorageError as exc:
            log.warning("the database refused a batch (%s); storing its messages one by one", exc)
            try:
                return await _store_one_by_one(pool, decoded, dead)
            except TransientStorageError as retry_exc:
                stats.retries += 1
                log.warning("storing one by one failed (%s); retrying", retry_exc)
        if await _sleep_unless(stop, delay):
            return None
        delay = min(delay * 2, max_delay)


async def _announce(consumer: MqttConsumer, subscribed: asyncio.Event | None) -> None:
    await consumer.wait_subscribed()
    if subscribed is not None:
        subscribed.set()


async def run_ingest(
    settings: Settings,
    *,
    stop: asyncio.Event,
    subscribed: asyncio.Event | None = None,
    database_url: str | None = None,
) -> IngestStats:
    """Consume the subscription until ``stop`` is set.

    ``subscribed``, when given, is set once the broker has granted the subscription: from then
    on, every message published to it is ours to store.

    Nothing is acknowledged before it is committed: on a crash, the broker redelivers what was
    not acknowledged, and idempotent storage turns the redelivery into a no-op.
    """
    stats = IngestStats()
    pool = await wait_for_pool(settings, stop=stop, database_url=database_url)
    if pool is None:
        return stats
    root = settings.mqtt_topic_root
    consumer = MqttConsumer(settings, [native_subscription(root, settings.mqtt_share_group or None)])
    consumer.start(asyncio.get_running_loop())
    announce = asyncio.ensure_future(_announce(consumer, subscribed))
    max_future = timedelta(seconds=settings.ingest_max_future_s)
    flush_after = settings.ingest_flush_ms / 1000
    next_report = asyncio.get_running_loop().time() + settings.ingest_stats_interval_s
    try:
        while not stop.is_set():
            batch_task = asyncio.ensure_future(
                consumer.inbox.get_batch(settings.ingest_batch_size, flush_after)
            )
            stop_task = asyncio.ensure_future(stop.wait())
            await asyncio.wait({batch_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if not batch_task.done():
                batch_task.cancel()
                break
            batch = batch_task.result()
            decoded, dead = triage(batch, root=root, now=datetime.now(UTC), max_future=max_future)
            outcome = await store_with_retry(pool, decoded, dead, stop=stop, stats=stats)
            if outcome is None:
                break
            consumer.ack(batch)
            stats.add(len(batch), outcome)
            now = asyncio.get_running_loop().time()
            if now >= next_report:
                log.info("ingest: %s", stats.summary())
                next_report = now + settings.ingest_stats_interval_s
    finally:
        announce.cancel()
        consumer.stop()
        await pool.close()
        log.info("ingest stopped: %s", stats.summary())
    return stats
