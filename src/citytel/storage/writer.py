"""Writing a batch: readings, latest state and dead letters, all in one transaction."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from citytel.collection import NO_CYCLE, FillCycle, advance_cycle
from citytel.domain import (
    DeadLetter,
    DecodedMessage,
    DeviceKind,
    HealthEvent,
    ParkingReading,
    Reason,
    WasteReading,
)
from citytel.storage import sql
from citytel.storage.pool import Connection, connection

# How much of a dead letter's payload is kept (migrations/0016_dead_letter_size.sql).
KEPT_PAYLOAD_BYTES = 64 * 1024


@dataclass
class BatchOutcome:
    """What one committed batch changed."""

    stored: int = 0
    duplicates: int = 0
    events: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    dead: list[DeadLetter] = field(default_factory=list)


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
        return await store_decoded(conn, decoded, rejected)


async def store_dead_letters(pool: asyncpg.Pool, dead: Sequence[DeadLetter]) -> None:
    """Store dead letters alone, in their own transaction."""
    async with connection(pool) as conn, conn.transaction():
        await _store_dead_letters(conn, dead)


async def store_decoded(
    conn: Connection,
    decoded: Sequence[DecodedMessage],
    rejected: Sequence[DeadLetter],
    *,
    replaying: bool = False,
) -> BatchOutcome:
    """Store a batch on ``conn``, inside the caller's transaction.

    ``replaying``: the dead letters are ones being replayed, so failing again updates their
    reason without counting a new receipt.
    """
    known = await _known_devices(conn, decoded)
    dead = list(rejected)
    waste = _WasteColumns()
    parking = _ParkingColumns()
    events = _EventColumns()
    frames: set[tuple[DeviceKind, str, int]] = set()
    for message in decoded:
        bound_to = known[message.kind].get(message.device_id)
        if bound_to is None:
            dead.append(_unknown_device(message))
            continue
        if message.gateway is not None and message.gateway != bound_to:
            dead.append(_wrong_gateway(message, bound_to))
            continue
        if message.f_cnt is not None:
            # A retransmission within the batch; the SQL catches those across batches.
            frame = (message.kind, message.device_id, message.f_cnt)
            if frame in frames:
                continue
            frames.add(frame)
        waste.extend(
            [r for r in message.readings if isinstance(r, WasteReading)],
            message.received_at,
            message.f_cnt,
        )
        parking.extend(
            [r for r in message.readings if isinstance(r, ParkingReading)],
            message.received_at,
            message.f_cnt,
        )
        for event in message.events:
            events.add(event, message.received_at, message.f_cnt)

    stored = 0
    if waste.rows:
        cycles = await _advance_cycles(conn, waste)
        await _stage(conn, sql.STAGE_WASTE, "waste_batch", sql.WASTE_BATCH_COLUMNS, waste.columns())
        stored += await conn.fetchval(sql.STORE_WASTE, *cycles)
    if parking.rows:
        await _stage(
            conn, sql.STAGE_PARKING, "parking_batch", sql.PARKING_BATCH_COLUMNS, parking.columns()
        )
        stored += await conn.fetchval(sql.STORE_PARKING)
    new_events = await conn.fetchval(sql.STORE_EVENTS, *events.columns()) if events.rows else 0
    await _store_dead_letters(conn, dead, counting=not replaying)
    return BatchOutcome(
        stored=stored,
        duplicates=waste.rows + parking.rows - stored,
        events=new_events,
        dead_letters=Counter(d.reason for d in dead),
        dead=dead,
    )


async def _stage(
    conn: Connection,
    create: str,
    table: str,
    names: Sequence[str],
    columns: Sequence[list[Any]],
) -> None:
    """COPY a batch's rows into the connection's temporary table, emptied at commit."""
    # Created once per connection (it outlives transactions; a rollback undoes its creation).
    await conn.execute(create)
    await conn.copy_records_to_table(
        table, schema_name="pg_temp", columns=list(names), records=zip(*columns, strict=True)
    )


async def _known_devices(
    conn: Connection, decoded: Sequence[DecodedMessage]
) -> dict[DeviceKind, dict[str, str]]:
    """The registered devices of a batch, each with the gateway it is bound to."""
    wanted: dict[DeviceKind, set[str]] = {kind: set() for kind in DeviceKind}
    for message in decoded:
        wanted[message.kind].add(message.device_id)
    queries = {DeviceKind.WASTE: sql.KNOWN_CONTAINERS, DeviceKind.PARKING: sql.KNOWN_SPOTS}
    known: dict[DeviceKind, dict[str, str]] = {kind: {} for kind in DeviceKind}
    for kind, ids in wanted.items():
        if ids:
            rows = await conn.fetch(queries[kind], list(ids))
            known[kind] = {row["id"]: row["gateway_id"] for row in rows}
    return known


async def _advance_cycles(conn: Connection, waste: _WasteColumns) -> tuple[list[Any], ...]:
    """Each container's fill cycle after this batch, as columns for STORE_WASTE."""
    readings: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for container, ts, fill in zip(waste.ids, waste.ts, waste.fill, strict=True):
        readings[container].append((ts, fill))
    # A container new to container_latest has no row to lock yet: two batches holding its very
    # first readings may each start its cycle, and the later commit wins. Harmless: the first
    # emptying starts a proper cycle.
    rows = await conn.fetch(sql.LOCK_CONTAINER_CYCLES, sorted(readings))
    current = {
        row["container_id"]: FillCycle(
            row["ts"],
            row["fill_pct"],
            row["cycle_started_at"],
            row["cycle_start_fill_pct"],
            row["last_cycle_rate_pct_h"],
        )
        for row in rows
    }
    ids, started, start_fill, last_rate = [], [], [], []
    for container, batch in readings.items():
        cycle = advance_cycle(current.get(container, NO_CYCLE), batch)
        ids.append(container)
        started.append(cycle.started_at)
        start_fill.append(cycle.start_fill_pct)
        last_rate.append(cycle.last_rate_pct_h)
    return ids, started, start_fill, last_rate


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


def _wrong_gateway(message: DecodedMessage, bound_to: str) -> DeadLetter:
    registry = "container" if message.kind is DeviceKind.WASTE else "parking spot"
    return DeadLetter(
        topic=message.topic,
        payload=message.payload,
        reason=Reason.WRONG_GATEWAY,
        detail=(
            f"gateway {message.gateway!r} published for {registry} {message.device_id!r}, "
            f"which is bound to gateway {bound_to!r}; if the device moved, rebind it (fleet "
            "property 'gateway', then `citytel fleet import`) and replay this dead letter"
        ),
        received_at=message.received_at,
    )


async def _store_dead_letters(
    conn: Connection, dead: Sequence[DeadLetter], *, counting: bool = True
) -> None:
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
        # The first 64 KiB only: what a person needs to see what went wrong, without letting
        # oversized messages fill the store; the hash and size are the whole payload's.
        [d.payload[:KEPT_PAYLOAD_BYTES] for d in letters],
        [hashlib.sha256(d.payload).digest() for d in letters],
        [len(d.payload) for d in letters],
        [d.reason for d in letters],
        # PostgreSQL text cannot hold NUL, and a detail may quote what a sender put in.
        [d.detail.replace("\x00", "\\x00") for d in letters],
        [d.received_at for d in letters],
        [times if counting else 0 for _, times in merged.values()],
    )


class _WasteColumns:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ts: list[datetime] = []
        self.fill: list[float] = []
        self.battery: list[float | None] = []
        self.temperature: list[float | None] = []
        self.received: list[datetime] = []
        self.f_cnt: list[int | None] = []

    @property
    def rows(self) -> int:
        return len(self.ids)

    def extend(
        self, readings: Sequence[WasteReading], received_at: datetime, f_cnt: int | None
    ) -> None:
        # Column by column: a message of hundreds of readings costs a few list operations.
        self.ids += [r.container_id for r in readings]
        self.ts += [r.ts for r in readings]
        self.fill += [r.fill_pct for r in readings]
        self.battery += [r.battery_pct for r in readings]
        self.temperature += [r.temperature_c for r in readings]
        self.received += [received_at] * len(readings)
        self.f_cnt += [f_cnt] * len(readings)

    def columns(self) -> tuple[list[Any], ...]:
        return (
            self.ids,
            self.ts,
            self.fill,
            self.battery,
            self.temperature,
            self.received,
            self.f_cnt,
        )


class _ParkingColumns:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ts: list[datetime] = []
        self.occupied: list[bool] = []
        self.battery: list[float | None] = []
        self.received: list[datetime] = []
        self.f_cnt: list[int | None] = []

    @property
    def rows(self) -> int:
        return len(self.ids)

    def extend(
        self, readings: Sequence[ParkingReading], received_at: datetime, f_cnt: int | None
    ) -> None:
        self.ids += [r.spot_id for r in readings]
        self.ts += [r.ts for r in readings]
        self.occupied += [r.occupied for r in readings]
        self.battery += [r.battery_pct for r in readings]
        self.received += [received_at] * len(readings)
        self.f_cnt += [f_cnt] * len(readings)

    def columns(self) -> tuple[list[Any], ...]:
        return (self.ids, self.ts, self.occupied, self.battery, self.received, self.f_cnt)


class _EventColumns:
    def __init__(self) -> None:
        self.rows_: list[tuple[Any, ...]] = []

    @property
    def rows(self) -> int:
        return len(self.rows_)

    def add(self, event: HealthEvent, received_at: datetime, f_cnt: int | None) -> None:
        self.rows_.append(
            (
                event.device_kind.value,
                event.device_id,
                event.ts,
                event.event.value,
                event.battery_pct,
                event.temperature_c,
                event.detail,
                f_cnt,
                received_at,
            )
        )

    def columns(self) -> list[list[Any]]:
        return [list(column) for column in zip(*self.rows_, strict=True)]
