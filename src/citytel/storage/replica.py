"""Reads from a streaming replica of the database, while it keeps up; else from the primary.

The API's read routes and its live parking view ask :meth:`ReadReplica.pool` for a pool: the
replica's (``CITYTEL_DATABASE_READ_URL``) while its lag is within
``CITYTEL_DATABASE_READ_MAX_LAG_S``, the primary's otherwise. Writes, replay, provisioning, key
checks and the change feed never come here: they use the primary's pool.

How the lag is measured. ``now() - pg_last_xact_replay_timestamp()`` on the standby is the age
of the last replayed commit: on a quiet primary it grows without any lag at all, and a standby
whose WAL receiver has stopped cannot tell it is behind. So the primary is asked instead: every
``CITYTEL_DATABASE_READ_CHECK_S`` this process reads the primary's WAL position, then the
position the standby has replayed, and keeps the primary's positions with the time each was
read. The standby holds everything the primary had at the newest of those times whose position
it has replayed; the lag is the time since then. A quiet primary's position does not move, the
standby has replayed it, and the lag stays at zero (within one check); a paused or cut-off
standby falls behind by the wall-clock time since the primary's first write it lacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

import asyncpg

from citytel.config import Settings
from citytel.errors import StorageError, TransientStorageError
from citytel.storage import queries
from citytel.storage.pool import create_pool

log = logging.getLogger(__name__)

# Positions kept: far more checks than any sensible lag limit spans; beyond them the lag is
# reported as at least the span they cover.
_KEPT_POSITIONS = 4096


class ReplicaState(StrEnum):
    """Where the replica stands, as /readyz tells it: nothing internal."""

    OK = "ok"
    """Reads are served by the replica."""
    LAGGING = "lagging"
    """The replica is reachable but too far behind: reads go to the primary."""
    UNAVAILABLE = "unavailable"
    """The replica cannot be reached, or is no standby, or its lag is unknown yet."""


class LagClock:
    """The replica's lag from the primary's WAL positions and the times they were read."""

    def __init__(self) -> None:
        self._positions: deque[tuple[float, int]] = deque(maxlen=_KEPT_POSITIONS)

    def primary_at(self, when: float, position: int) -> None:
        """The primary's WAL position read at monotonic time ``when``."""
        self._positions.append((when, position))

    def lag_s(self, replayed: int, now: float) -> tuple[float, bool]:
        """Seconds the replica, having replayed up to ``replayed``, is behind the primary, and
        whether that is the lag itself (True) or only a lower bound (False).

        A lower bound while no position read so far is known to be replayed: since the first
        check, or since the replica came back, it may have been behind by any amount.
        """
        caught_up_at: float | None = None
        while self._positions and self._positions[0][1] <= replayed:
            caught_up_at = self._positions.popleft()[0]
        if caught_up_at is not None:
            # The newest replayed position stays: the next check measures from it.
            self._positions.appendleft((caught_up_at, replayed))
            return max(0.0, now - caught_up_at), True
        oldest = self._positions[0][0] if self._positions else now
        return max(0.0, now - oldest), False

    def forget(self) -> None:
        """Start again: a new replica (or the same one back) has no history with us."""
        self._positions.clear()


class ReadReplica:
    """The pool reads should use, and the replica's lag, checked in the background."""

    def __init__(self, settings: Settings, primary: Callable[[], asyncpg.Pool | None]) -> None:
        self._settings = settings
        self._primary = primary
        self.configured = settings.database_read_url is not None
        self._max_lag_s = settings.database_read_max_lag_s
        self._check_s = settings.database_read_check_s
        self._replica: asyncpg.Pool | None = None
        self._clock = LagClock()
        self.state = ReplicaState.UNAVAILABLE
        self.lag_s: float | None = None
        """The replica's lag at the last check; None when it could not be measured."""
        # Why reads are where they are, in a word: a move is logged when it changes.
        self._reason = "start"

    @property
    def in_use(self) -> bool:
        """Whether reads go to the replica now."""
        return self.state is ReplicaState.OK and self._replica is not None

    def pool(self) -> asyncpg.Pool | None:
        """The pool for a read: the replica's while it keeps up, else the primary's."""
        if self.in_use:
            return self._replica
        return self._primary()

    def url(self) -> str:
        """The URL of the database :meth:`pool` reads from now (for a reader of its own)."""
        if self.in_use and self._settings.database_read_url is not None:
            return self._settings.database_read_url.get_secret_value()
        return self._settings.database_url.get_secret_value()

    async def check(self) -> ReplicaState:
        """Measure the lag once and choose where reads go; the new state."""
        if not self.configured:
            return self.state
        try:
            # Bounded: a replica host that drops packets would otherwise hold the check for
            # the driver's connect timeout, and reads on a replica nobody measures.
            async with asyncio.timeout(max(2.0, 2 * self._check_s)):
                state, reason, why = await self._measure()
        except (StorageError, TimeoutError) as exc:
            self.lag_s = None
            self._clock.forget()
            detail = str(exc) or "no answer in time"
            state, reason, why = (
                ReplicaState.UNAVAILABLE,
                "unreachable",
                f"the replica cannot be read: {detail}",
            )
        self._move_to(state, reason, why)
        return state

    async def _measure(self) -> tuple[ReplicaState, str, str]:
        """The replica's state, the reason in a word, and in a sentence for the log."""
        primary = self._primary()
        if self._replica is None:
            url = self._settings.database_read_url
            assert url is not None  # noqa: S101 - checked by `configured`
            self._replica = await create_pool(self._settings, database_url=url.get_secret_value())
        # The primary first: the replica is then compared with a position no newer than its own.
        read_at = time.monotonic()
        try:
            if primary is None:
                message = "the primary has not been reached yet"
                raise TransientStorageError(message)
            position = await queries.primary_wal_position(primary)
        except StorageError:
            # Without the primary's position the lag cannot be measured: reads stay where they
            # are (on the primary, until the replica has been measured once). The primary's
            # trouble is /readyz's to tell, not the replica's.
            return self.state, self._reason, ""
        self._clock.primary_at(read_at, position)
        replayed = await queries.replayed_wal_position(self._replica)
        if replayed is None:
            self.lag_s = None
            return ReplicaState.UNAVAILABLE, "promoted", "the replica is not a standby (promoted?)"
        lag_s, exact = self._clock.lag_s(replayed, time.monotonic())
        self.lag_s = lag_s
        # Back to the replica only well under the limit, so that a lag hovering around it does
        # not switch reads (and rebuild the live view) at every check.
        limit = self._max_lag_s if self.state is ReplicaState.OK else self._max_lag_s / 2
        if lag_s > limit:
            return (
                ReplicaState.LAGGING,
                "lagging",
                f"the replica is {lag_s:.1f} s behind the primary",
            )
        if not exact:
            # Just (re)connected and behind, by less than the limit so far: not used until it
            # is seen to have replayed a position read here.
            self.lag_s = None
            return ReplicaState.UNAVAILABLE, "unknown", ""
        return ReplicaState.OK, "ok", ""

    def _move_to(self, state: ReplicaState, reason: str, why: str) -> None:
        if reason == self._reason:
            return
        where = self._settings.database_read_where
        if state is ReplicaState.OK:
            log.info("reads go to the replica %s (lag %.1f s)", where, self.lag_s or 0.0)
        elif why:
            log.warning("reads go to the primary: %s (%s)", why, where)
        self.state, self._reason = state, reason

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``CITYTEL_DATABASE_READ_CHECK_S`` until ``stop`` is set."""
        if not self.configured:
            return
        while not stop.is_set():
            await self.check()
            try:
                async with asyncio.timeout(self._check_s):
                    await stop.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Close the replica's pool, once nothing reads from it any more (after the live view
        has stopped); a replica gone away is not waited for."""
        pool, self._replica = self._replica, None
        self.state = ReplicaState.UNAVAILABLE
        if pool is None:
            return
        try:
            async with asyncio.timeout(5):
                await pool.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.debug("replica pool closed abruptly (%s)", exc)
            pool.terminate()
