"""The API process's live view of parking: a :class:`FreeSpotIndex` kept up to date.

A background task reads, every ``CITYTEL_API_LIVE_REFRESH_MS``, the spots written since its last
read (the change tracking of ``migrations/0005_spot_changes.sql``) and applies them. Every
``CITYTEL_API_LIVE_RESYNC_S`` it reads every spot instead, which also forgets spots removed
from the registry. Free-spot searches are then answered from memory, as of the snapshot last
read, and say so (``as_of``).

When the view is older than ``CITYTEL_API_LIVE_MAX_STALENESS_S`` (the database is away, or the
first read has not finished), :meth:`LiveSpots.fresh` returns None and the route asks the
database itself, so an answer is never staler than that bound without saying why.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg

from citytel.api.signal import Signal
from citytel.api.spot_index import FreeSpotIndex, SpotState
from citytel.config import Settings
from citytel.errors import StorageError
from citytel.ingest.pipeline import sleep_unless
from citytel.storage import queries

log = logging.getLogger(__name__)

# Spots applied between two yields to the event loop during a full read (a few milliseconds).
_SLICE = 2000


def _state(row: asyncpg.Record) -> SpotState:
    # The query's columns are the dataclass's fields (storage/queries.py, _SPOT_COLUMNS).
    return SpotState(**dict(row))


class LiveSpots:
    """Free spots in memory, refreshed from the database in the background."""

    def __init__(self, settings: Settings, pool: Callable[[], asyncpg.Pool | None]) -> None:
        # The pool reads go to now: the primary's, or a read replica's while it keeps up.
        self._pool = pool
        self._refresh_s = settings.api_live_refresh_ms / 1000
        self._resync_s = settings.api_live_resync_s
        self._max_staleness_s = settings.api_live_max_staleness_s
        self._index = FreeSpotIndex()
        self._snapshot: str | None = None
        self._source: asyncpg.Pool | None = None
        self._resynced_at = 0.0
        self._read_at: float | None = None
        self.as_of: datetime | None = None
        self.last_refresh_s: float | None = None
        """How long the last successful read took (a full read or the changes)."""
        self._failing = False
        # Notified after each read that changed the view: the free-spot streams wait on it.
        self.changed = Signal()

    @property
    def age_s(self) -> float | None:
        """Seconds since the view was last read from the database; None before the first read."""
        if self._read_at is None:
            return None
        return time.monotonic() - self._read_at

    def fresh(self) -> tuple[FreeSpotIndex, datetime] | None:
        """The index and what it is as of, if read within the staleness bound; else None."""
        if self._read_at is None or self.as_of is None:
            return None
        if time.monotonic() - self._read_at > self._max_staleness_s:
            return None
        return self._index, self.as_of

    async def refresh(self) -> bool:
        """Read what changed since the last read and apply it; False while there is no pool.

        Raises:
            StorageError: the database could not be read; the view is left as it was.
        """
        pool = self._pool()
        if pool is None:
            return False
        started = time.monotonic()
        # Reads moved between the primary and a replica (storage/replica.py): a snapshot of one
        # server means nothing on the other, and the replica may be behind what was read from
        # the primary, so everything is read again where reads now go.
        moved = pool is not self._source
        resync = moved or self._snapshot is None or started - self._resynced_at >= self._resync_s
        changes = await queries.spot_changes(pool, None if resync else self._snapshot)
        if resync:
            # Built beside the one in use, a slice at a time, so that searches go on meanwhile.
            index = FreeSpotIndex()
            for start in range(0, len(changes.rows), _SLICE):
                index.apply(_state(row) for row in changes.rows[start : start + _SLICE])
                await asyncio.sleep(0)
            self._index, self._resynced_at = index, started
            # The view is a few hundred thousand long-lived objects: left to the collector, each
            # full collection would walk them all and pause every request (tens of ms). Frozen,
            # they are skipped; unfrozen first, whatever was frozen last time and has become
            # garbage since is still collected.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            log.info("live parking view: %d spots read, %d free", len(changes.rows), len(index))
        else:
            self._index.apply(_state(row) for row in changes.rows)
        self._snapshot, self.as_of, self._read_at = changes.snapshot, changes.as_of, started
        self._source = pool
        self.last_refresh_s = time.monotonic() - started
        if changes.rows:
            self.changed.notify()
        return True

    def resync_soon(self) -> None:
        """Make the next refresh read every spot, forgetting those removed from the registry."""
        self._resynced_at = float("-inf")

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop`` is set; a failed read is logged once, then retried."""
        await keep_refreshing(self.refresh, stop, self._refresh_s, "live parking view")


async def keep_refreshing(
    refresh: Callable[[], Awaitable[object]], stop: asyncio.Event, period_s: float, what: str
) -> None:
    """Call ``refresh`` every ``period_s`` until ``stop`` is set; a StorageError is logged once
    while it lasts, then retried."""
    failing = False
    while not stop.is_set():
        try:
            await refresh()
        except StorageError as exc:
            if not failing:
                log.warning("%s not refreshed (%s); retrying", what, exc)
            failing = True
        else:
            if failing:
                log.info("%s refreshed again", what)
            failing = False
        await sleep_unless(stop, period_s)
