"""Changes pushed to clients: what changed after commit, kept for a while so a client can resume.

A background task (:class:`ChangeFeed`) reads, every ``CITYTEL_API_EVENTS_REFRESH_MS``, the
containers and spots written since its last snapshot (the change tracking of
``migrations/0005_spot_changes.sql`` and ``0015_container_changes.sql``, as the live parking
view does) and compares them with what it saw before: a container whose fill level or
measurement time moved, a spot whose status changed, becomes an event. Every
``CITYTEL_API_EVENTS_ATTENTION_S`` it also asks which devices need attention and publishes
the ones that joined or left that list.

This costs ingestion nothing: a ``NOTIFY`` in ingest's transactions would add a write per batch
and serialise every committing transaction on the notification queue's lock, while this read is
one scan per refresh in the API process, whatever the reading rate.

Events are numbered in an :class:`EventHub`, a ring of the last ``CITYTEL_API_EVENTS_RETAINED``
events. An event id is ``<epoch>-<seq>``: the epoch names this process's hub, so a client that
resumes (``Last-Event-ID``) after a restart, on another worker, or after more events than the
ring holds is told it cannot resume (a ``reset`` event) instead of silently missing some.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from citytel.api.live_spots import keep_refreshing
from citytel.api.routes.containers import container_public
from citytel.api.routes.devices import problems_of
from citytel.api.routes.parking import spot_public
from citytel.api.signal import Signal
from citytel.config import Settings
from citytel.storage import queries
from citytel.storage.queries import BBox

log = logging.getLogger(__name__)

EventKind = Literal["container", "spot", "device"]
EVENT_KINDS: tuple[EventKind, ...] = ("container", "spot", "device")

# The attention list's thresholds: those of GET /v1/devices/attention without parameters.
_SILENT_AFTER = timedelta(hours=24)
_FAULTS_WITHIN = timedelta(hours=24)
_BATTERY_BELOW_PCT = 20.0


@dataclass(frozen=True, slots=True)
class Event:
    """A change, numbered by the hub, with what the filters look at."""

    seq: int
    kind: EventKind
    zone: str
    lat: float
    lon: float
    data: str

    def matches(self, kinds: frozenset[str], zone: str | None, bbox: BBox | None) -> bool:
        """Whether a subscriber asking for these kinds, zone and box wants this event."""
        if self.kind not in kinds or (zone is not None and self.zone != zone):
            return False
        if bbox is None:
            return True
        return bbox.min_lon <= self.lon <= bbox.max_lon and bbox.min_lat <= self.lat <= bbox.max_lat


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a subscriber starts: after ``seq``; ``lost`` says why it could not resume."""

    seq: int
    lost: str | None = None


class EventHub:
    """The last events, numbered, and a signal for subscribers waiting for more."""

    def __init__(self, retained: int) -> None:
        # Time-based, so that two processes (or one restarted) never share an epoch.
        self.epoch = format(time.time_ns() // 1000, "x")
        self._ring: deque[Event] = deque(maxlen=retained)
        self._seq = 0
        self.published = Signal()
        self.subscribers = 0

    @property
    def last_seq(self) -> int:
        """The number of the newest event (0 before the first)."""
        return self._seq

    def event_id(self, seq: int) -> str:
        """The id a client sees for event ``seq``."""
        return f"{self.epoch}-{seq}"

    def publish(self, changes: Iterable[tuple[EventKind, str, float, float, str]]) -> int:
        """Number and keep ``(kind, zone, lat, lon, data)`` changes; wake subscribers. How many."""
        count = 0
        for kind, zone, lat, lon, data in changes:
            self._seq += 1
            self._ring.append(Event(self._seq, kind, zone, lat, lon, data))
            count += 1
        if count:
            self.published.notify()
        return count

    def resume(self, last_event_id: str | None) -> Resume:
        """Where a client that saw ``last_event_id`` (None: a new client) starts."""
        if last_event_id is None:
            return Resume(self._seq)
        epoch, _, raw = last_event_id.strip().partition("-")
        if epoch != self.epoch or not raw.isdigit():
            return Resume(self._seq, "the event id is not from this server's current stream")
        seq = int(raw)
        if seq > self._seq:
            return Resume(self._seq, "the event id is newer than any event of this stream")
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if seq < oldest - 1:
            return Resume(self._seq, "the events after that id are no longer retained")
        return Resume(seq)

    def after(self, seq: int) -> tuple[list[Event], int | None]:
        """Events newer than ``seq``; and, when some of them are no longer kept, the oldest kept."""
        if not self._ring or self._ring[-1].seq <= seq:
            return [], None
        oldest = self._ring[0].seq
        lost = oldest if seq < oldest - 1 else None
        start = max(0, seq + 1 - oldest)
        return [self._ring[i] for i in range(start, len(self._ring))], lost


def _container_event(row: asyncpg.Record) -> tuple[EventKind, str, float, float, str]:
    body = container_public(row).model_dump_json()
    return "container", row["zone"], row["lat"], row["lon"], body


def _spot_event(row: asyncpg.Record) -> tuple[EventKind, str, float, float, str]:
    body = spot_public(row).model_dump_json()
    return "spot", row["zone"], row["lat"], row["lon"], body


@dataclass(frozen=True, slots=True)
class _Attention:
    """Why a device is on the attention list, and where it is (for the filters)."""

    problems: tuple[str, ...]
    zone: str
    lat: float
    lon: float


class ChangeFeed:
    """Turns what the database committed into events on a hub, in the background."""

    def __init__(
        self, settings: Settings, pool: Callable[[], asyncpg.Pool | None], hub: EventHub
    ) -> None:
        self._pool = pool
        self.hub = hub
        self._refresh_s = settings.api_events_refresh_ms / 1000
        self._attention_s = settings.api_events_attention_s
        self._snapshot: str | None = None
        self._containers: dict[str, tuple[object, ...]] = {}
        self._spots: dict[str, object] = {}
        self._attention: dict[tuple[str, str], _Attention] | None = None
        self._attention_at = 0.0
        self.as_of: datetime | None = None
        self.spots_changed = Signal()

    async def refresh(self) -> int:
        """Read what changed since the last read and publish it; the number of events.

        The first read only learns the current state: changes are what comes after it.

        Raises:
            StorageError: the database could not be read; nothing is published.
        """
        pool = self._pool()
        if pool is None:
            return 0
        first = self._snapshot is None
        read = await queries.changes(pool, self._snapshot)
        found: list[tuple[EventKind, str, float, float, str]] = []
        for row in read.containers:
            state = (row["fill_pct"], row["measured_at"])
            if self._containers.get(row["id"]) != state:
                self._containers[row["id"]] = state
                if not first:
                    found.append(_container_event(row))
        spots_moved = False
        for row in read.spots:
            if self._spots.get(row["id"], ...) != row["occupied"]:
                self._spots[row["id"]] = row["occupied"]
                spots_moved = True
                if not first:
                    found.append(_spot_event(row))
        if time.monotonic() - self._attention_at >= self._attention_s:
            found.extend(await self._attention_changes(pool))
        self._snapshot, self.as_of = read.snapshot, read.as_of
        if spots_moved:
            self.spots_changed.notify()
        return self.hub.publish(found)

    async def _attention_changes(
        self, pool: asyncpg.Pool
    ) -> list[tuple[EventKind, str, float, float, str]]:
        self._attention_at = time.monotonic()
        now = datetime.now(UTC)
        silent_since = now - _SILENT_AFTER
        rows = await queries.devices_needing_attention(
            pool,
            kind=None,
            zone=None,
            faults_since=now - _FAULTS_WITHIN,
            silent_since=silent_since,
            battery_below_pct=_BATTERY_BELOW_PCT,
        )
        # Which problems, not their wording: "silent for 25 h" becoming "26 h" is no change.
        current: dict[tuple[str, str], _Attention] = {}
        for row in rows:
            problems = problems_of(
                row, now=now, silent_since=silent_since, battery_below_pct=_BATTERY_BELOW_PCT
            )
            if problems:
                kinds = tuple(sorted({p.problem for p in problems}))
                current[(row["device_kind"], row["id"])] = _Attention(
                    kinds, row["zone"], row["lat"], row["lon"]
                )
        previous, self._attention = self._attention, current
        if previous is None:
            return []
        found: list[tuple[EventKind, str, float, float, str]] = []
        for key in sorted(current.keys() | previous.keys()):
            now_on, before = current.get(key), previous.get(key)
            if now_on is not None and before is not None and now_on.problems == before.problems:
                continue
            where = now_on or before
            assert where is not None  # noqa: S101 - the key came from one of the two
            reasons = list(now_on.problems) if now_on is not None else []
            body = {"device_kind": key[0], "id": key[1], "attention": bool(reasons)}
            body["problems"] = reasons
            found.append(("device", where.zone, where.lat, where.lon, json.dumps(body)))
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` is set; a failed read is logged once, then retried."""
        await keep_refreshing(self.refresh, stop, self._refresh_s, "change feed")
