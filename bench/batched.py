"""Gateway-batched readings: messages of 50-500 readings of one device, drained at full speed.

Gateways and network servers often send many readings per message (the native format takes an
array of up to 1,000 readings of one device). A backlog of such messages waits in the broker;
one ``citytel ingest`` worker (MQTT source, acknowledgement after commit, as in the drain)
stores it, and the figure is readings/s. The baseline of the same run is asyncpg's COPY of the
same rows into the same readings tables, in transactions of the same messages: the cost of
writing the rows and nothing else.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import drain
from bench.database import reset
from bench.load import Workload
from bench.services import Services
from citytel.domain import DecodedMessage, DeviceKind
from citytel.formats.native import ParkingPayload, WastePayload, encode_native
from citytel.formats.topics import native_topic
from simulators.fleet import Fleet

SMALLEST = 50
LARGEST = 500
# Readings of one device are this far apart; a device that comes back in a later message
# continues further back in time, so no two readings of the backlog share (device, ts).
_STEP = timedelta(minutes=1)


def build_batched(fleet_geojson: dict[str, Any], *, readings: int, seed: int = 2026) -> Workload:
    """Messages of ``SMALLEST``-``LARGEST`` readings of one device each, ``readings`` in all.

    Waste containers and parking spots alternate; every reading is valid and lies in the hours
    before now, so each one is stored exactly once.
    """
    fleet = Fleet.from_geojson(fleet_geojson)
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    used: dict[str, int] = {}
    suffixes: list[str] = []
    payloads: list[bytes] = []
    kinds: list[DeviceKind] = []
    keys: list[tuple[str, datetime]] = []
    made = 0
    index = 0
    while made < readings:
        size = min(rng.randint(SMALLEST, LARGEST), readings - made)
        kind = DeviceKind.WASTE if index % 2 == 0 else DeviceKind.PARKING
        device = (
            fleet.containers[(index // 2) % len(fleet.containers)]
            if kind is DeviceKind.WASTE
            else fleet.spots[(index // 2) % len(fleet.spots)]
        )
        start = used.get(device.id, 0)
        used[device.id] = start + size
        stamps = [newest - (start + j) * _STEP for j in range(size)]
        batch: list[WastePayload | ParkingPayload]
        if kind is DeviceKind.WASTE:
            batch = [
                WastePayload(
                    ts=ts,
                    fill_pct=round(rng.uniform(0, 100), 1),
                    battery_pct=round(rng.uniform(20, 100), 1),
                    temperature_c=round(rng.uniform(-5, 35), 1),
                )
                for ts in stamps
            ]
        else:
            batch = [
                ParkingPayload(ts=ts, occupied=rng.random() < 0.5, battery_pct=90.0)
                for ts in stamps
            ]
        topic = native_topic("root", device.gateway, kind, device.id)
        suffixes.append(topic.removeprefix("root/"))
        payloads.append(encode_native(batch))
        kinds.append(kind)
        keys.append((device.id, stamps[0]))
        made += size
        index += 1
    return Workload(fleet_geojson, suffixes, payloads, kinds, keys)


def _readings(batches: list[list[DecodedMessage]]) -> int:
    return sum(len(m.readings) for batch in batches for m in batch)


def run(
    services: Services,
    fleet_geojson: dict[str, Any],
    *,
    readings: int,
    publishers: int,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """COPY of the rows, then one worker draining the same messages from the broker."""
    workload = build_batched(fleet_geojson, readings=readings)
    messages = len(workload.payloads)
    # Decoding checks that every message is valid; COPY then writes the very same rows.
    batches, decode_s = drain.decoded_batches(workload, messages)
    if _readings(batches) != readings:
        message = f"the backlog decodes to {_readings(batches)} readings, not {readings}"
        raise RuntimeError(message)
    url = services.database_url
    reset(url)
    copy_s = asyncio.run(drain.copy_rows(url, batches))
    reset(url)
    started = time.monotonic()
    one = drain.drain_citytel(
        services,
        workload,
        count=messages,
        readings=readings,
        publishers=publishers,
        workers=1,
        label="batched",
        profile_to=profile_to,
    )
    copy_rate = readings / copy_s
    return {
        "messages": messages,
        "readings": readings,
        "readings_per_message": {
            "smallest": SMALLEST,
            "largest": LARGEST,
            "mean": round(readings / messages, 1),
        },
        "payload_bytes_mean": round(sum(len(p) for p in workload.payloads) / messages),
        "decode": {
            "readings_per_s": round(readings / decode_s),
            "us_per_reading": round(decode_s / readings * 1e6, 2),
        },
        "copy": {"readings_per_s": round(copy_rate), "seconds": round(copy_s, 3)},
        "citytel_1_worker": one,
        "ratios": {"citytel_vs_copy": round(one["readings_rate"] / copy_rate, 3)},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
