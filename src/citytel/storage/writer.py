"""Writing a batch: readings, latest state and dead letters, all in one transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from citytel.domain import (
    DeadLetter,
    DecodedMessage,
    DeviceKind,
    ParkingReading,
    Reason,
    WasteReading,
)
from citytel.storage import sql
from citytel.storage.pool import Connection, connection


@dataclass
class BatchOutcome:
    """What one committed batch changed."""

    stored: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)


async def store_batch(
    pool: asyncpg.Pool, decoded: Sequence[DecodedMessage], rejected: Sequence[DeadLetter]
) -> BatchOutcome:
    """Store a batch of messages atomically; when this returns, all of it is committed.

    Messages about devices missing from the registry become ``unknown_device`` dead letters in
    the same transaction. Storing the same batch again (a redelivery) adds no row.

    Raises:
        StorageError: nothing was committed; ``TransientStorageError`` when a retry can succeed.
    """
    async with connection(pool) as conn, conn.transaction():
        return await _store(conn, decoded, rejected)


async def store_dead_letters(pool: asyncpg.Pool, dead: Sequence[DeadLetter]) -> None:
    """Store dead letters alone, in their own transaction."""
    async with connection(pool) as conn, conn.transaction():
        await _store_dead_letters(conn, dead)


async def _store(
    conn: Connection, decoded: Sequence[DecodedMessage], rejected: Sequence[DeadLetter]
) -> BatchOutcome:
    known = await _known_devices(conn, decoded)
    dead = list(rejected)
    waste = _WasteColumns()
    parking = _ParkingColumns()
    for message in decoded:
        if message.device_id not in known[message.kind]:
            dead.append(_unknown_device(message))
            continue
        for reading in message.readings:
            if isinstance(reading, WasteReading):
                waste.add(reading, message.received_at)
            else:
                parking.add(reading, message.received_at)

    stored = 0
    if waste.rows:
        stored += await conn.fetchval(sql.STORE_WASTE, *waste.columns())
    if parking.rows:
        stored += await conn.fetchval(sql.STORE_PARKING, *parking.columns())
    await _store_dead_letters(conn, dead)
    return BatchOutcome(
        stored=stored,
        duplicates=waste.rows + parking.rows - stored,
        dead_letters=Counter(d.reason for d in dead),
    )


async def _known_devices(
    conn: Connection, decoded: Sequence[DecodedMessage]
) -> dict[DeviceKind, set[str]]:
    wanted: dict[DeviceKind, set[str]] = {kind: set() for kind in DeviceKind}
    for message in decoded:
        wanted[message.kind].add(message.device_id)
    queries = {DeviceKind.WASTE: sql.KNOWN_CONTAINERS, DeviceKind.PARKING: sql.KNOWN_SPOTS}
    known: dict[DeviceKind, set[str]] = {kind: set() for kind in DeviceKind}
    for kind, ids in wanted.items():
        if ids:
            rows = await conn.fetch(queries[kind], list(ids))
            known[kind] = {row["id"] for row in rows}
    return known


def _unknown_device(message: DecodedMessage) -> DeadLetter:
    registry = "container" if message.kind is DeviceKind.WASTE else "parking spot"
    return DeadLetter(
        topic=message.topic,
        payload=message.payload,
        reason=Reason.UNKNOWN_DEVICE,
        detail=(
            f"no {registry} {message.device_id!r} in the registry; "
            "import it with `citytel fleet import` and replay this dead letter"
        ),
        received_at=message.received_at,
    )


async def _store_dead_letters(conn: Connection, dead: Sequence[DeadLetter]) -> None:
    if not dead:
        return
    # A message redelivered within one batch must become one row: ON CONFLICT cannot touch the
    # same row twice in a statement, so identical letters are merged here and counted.
    merged: dict[tuple[str, bytes], tuple[DeadLetter, int]] = {}
    for letter in dead:
        key = (letter.topic, letter.payload)
        first, times = merged.get(key, (letter, 0))
        merged[key] = (first, times + 1)
    letters = [first for first, _ in merged.values()]
    await conn.execute(
        sql.STORE_DEAD_LETTERS,
        [d.topic for d in letters],
        [d.payload for d in letters],
        [d.reason for d in letters],
        [d.detail for d in letters],
        [d.received_at for d in letters],
        [times for _, times in merged.values()],
    )


class _WasteColumns:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ts: list[datetime] = []
        self.fill: list[float] = []
        self.battery: list[float | None] = []
        self.temperature: list[float | None] = []
        self.received: list[datetime] = []

    @property
    def rows(self) -> int:
        return len(self.ids)

    def add(self, reading: WasteReading, received_at: datetime) -> None:
        self.ids.append(reading.container_id)
        self.ts.append(reading.ts)
        self.fill.append(reading.fill_pct)
        self.battery.append(reading.battery_pct)
        self.temperature.append(reading.temperature_c)
        self.received.append(received_at)

    def columns(self) -> tuple[list[object], ...]:
        return (self.ids, self.ts, self.fill, self.battery, self.temperature, self.received)  # type: ignore[return-value]


class _ParkingColumns:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ts: list[datetime] = []
        self.occupied: list[bool] = []
        self.battery: list[float | None] = []
        self.received: list[datetime] = []

    @property
    def rows(self) -> int:
        return len(self.ids)

    def add(self, reading: ParkingReading, received_at: datetime) -> None:
        self.ids.append(reading.spot_id)
        self.ts.append(reading.ts)
        self.occupied.append(reading.occupied)
        self.battery.append(reading.battery_pct)
        self.received.append(received_at)

    def columns(self) -> tuple[list[object], ...]:
        return (self.ids, self.ts, self.occupied, self.battery, self.received)  # type: ignore[return-value]
