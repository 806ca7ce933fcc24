"""Network-server uplinks (The Things Stack v3, ChirpStack v4 and v3) through the whole path."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from citytel.storage.fleet import import_fleet
from tests.integration.conftest import RunningIngest, feature, publish_raw, wait_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
LEVEL_EUI, SPOT_EUI = "A84041000181C0DE", "70B3D5E75E00F00D"
# EM310-UDL: battery 92 %, distance 725 mm, upright. In a 1200 mm bin with the profile's 250 mm
# full mark: fill = (1200 - 725) / (1200 - 250) = 50 %.
LEVEL_BYTES = bytes.fromhex("01755C0382D502040000")
LEVEL_OBJECT = {"battery": 92, "distance": 725, "position": "normal"}
# TPS110 parking status on fPort 1: occupied.
SPOT_BYTES = bytes.fromhex("01")
SPOT_OBJECT = {"type": "parking_status", "occupied": True}


def envelope(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / name).read_text())
    return body


def ttn(
    device: str,
    eui: str,
    port: int,
    raw: bytes,
    obj: dict[str, Any] | None,
    ts: datetime,
    f_cnt: int,
) -> tuple[str, bytes]:
    body = copy.deepcopy(envelope("ttn-uplink.json"))
    body["end_device_ids"].update(device_id=device, dev_eui=eui)
    body["end_device_ids"]["application_ids"]["application_id"] = "citytel-casa"
    body["received_at"] = ts.isoformat().replace("+00:00", "Z")
    uplink = body["uplink_message"]
    uplink.update(f_port=port, f_cnt=f_cnt, frm_payload=base64.b64encode(raw).decode())
    uplink.pop("decoded_payload", None)
    if obj is not None:
        uplink["decoded_payload"] = obj
    return f"v3/citytel-casa@ttn/devices/{device}/up", json.dumps(body).encode()


def chirpstack_v4(
    device: str,
    eui: str,
    port: int,
    raw: bytes,
    obj: dict[str, Any] | None,
    ts: datetime,
    f_cnt: int,
) -> tuple[str, bytes]:
    body = copy.deepcopy(envelope("chirpstack-v4-uplink.json"))
    body["deviceInfo"].update(devEui=eui.lower(), deviceName=device)
    body.update(time=ts.isoformat(), fCnt=f_cnt, fPort=port, data=base64.b64encode(raw).decode())
    body.pop("object", None)
    if obj is not None:
        body["object"] = obj
    app = body["deviceInfo"]["applicationId"]
    return f"application/{app}/device/{eui.lower()}/event/up", json.dumps(body).encode()


def chirpstack_v3(
    device: str,
    eui: str,
    port: int,
    raw: bytes,
    obj: dict[str, Any] | None,
    ts: datetime,
    f_cnt: int,
) -> tuple[str, bytes]:
    body = copy.deepcopy(envelope("chirpstack-v3-uplink.json"))
    body.update(
        deviceName=device,
        devEUI=base64.b64encode(bytes.fromhex(eui)).decode(),
        fCnt=f_cnt,
        fPort=port,
        data=base64.b64encode(raw).decode(),
    )
    for rx in body.get("rxInfo", []):
        rx["time"] = ts.isoformat()
    body.pop("objectJSON", None)
    if obj is not None:
        body["objectJSON"] = json.dumps(obj)
    return f"application/{body['applicationID']}/device/{eui.lower()}/event/up", json.dumps(
        body
    ).encode()


@pytest.fixture
async def lorawan_fleet(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A container with a Milesight EM310-UDL and a spot with a Bosch TPS110, registered."""
    features = [
        feature(
            "waste_container",
            "L-WC-1",
            -7.61,
            33.58,
            "maarif",
            capacity_l=1100,
            depth_mm=1200,
            device_model="milesight-em310-udl",
            dev_eui=LEVEL_EUI.lower(),
            network_device_id="bin-1",
        ),
        feature(
            "parking_spot",
            "L-PS-1",
            -7.59,
            33.57,
            "anfa",
            device_model="bosch-tps110",
            dev_eui=SPOT_EUI,
            network_device_id="spot-1",
        ),
    ]
    path = tmp_path / "fleet.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    await import_fleet(pool, path)


@pytest.mark.parametrize("network", [ttn, chirpstack_v4, chirpstack_v3])
@pytest.mark.parametrize("with_object", [False, True], ids=["raw-bytes", "network-decoded"])
async def test_uplinks_become_readings_served_by_the_api(
    settings: Settings,
    lorawan_fleet: None,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
    network: Callable[..., tuple[str, bytes]],
    with_object: bool,
) -> None:
    """Level and parking uplinks, raw or network-decoded, become fill and occupancy in the API."""
    del lorawan_fleet
    await ingest()
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    level = network(
        "bin-1", LEVEL_EUI, 85, LEVEL_BYTES, LEVEL_OBJECT if with_object else None, ts, 7
    )
    spot = network("spot-1", SPOT_EUI, 1, SPOT_BYTES, SPOT_OBJECT if with_object else None, ts, 9)
    await asyncio.to_thread(publish_raw, settings, [level, spot])

    async def both_stored() -> bool:
        return bool(
            await pool.fetchval("SELECT count(*) FROM waste_readings") == 1
            and await pool.fetchval("SELECT count(*) FROM parking_readings") == 1
        )

    await wait_until(both_stored)
    container = (await api.get("/v1/containers/L-WC-1")).json()
    assert container["fill_pct"] == pytest.approx(50.0)
    assert container["battery_pct"] == pytest.approx(92.0)
    assert datetime.fromisoformat(container["measured_at"]) == ts
    spot_state = (await api.get("/v1/parking/spots/L-PS-1")).json()
    assert spot_state["status"] == "occupied"
    assert await pool.fetchval("SELECT f_cnt FROM waste_readings") == 7
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_retransmission_and_other_events_are_not_readings(
    settings: Settings,
    lorawan_fleet: None,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """A retransmitted frame (same counter, later) is one reading; a join is ignored, not dead."""
    del lorawan_fleet
    running = await ingest()
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    first = ttn("bin-1", LEVEL_EUI, 85, LEVEL_BYTES, None, ts, 12)
    again = ttn("bin-1", LEVEL_EUI, 85, LEVEL_BYTES, None, ts + timedelta(seconds=8), 12)
    app = envelope("chirpstack-v4-uplink.json")["deviceInfo"]["applicationId"]
    join = (f"application/{app}/device/{SPOT_EUI.lower()}/event/join", b'{"devAddr":"00189440"}')
    heartbeat = chirpstack_v4("spot-1", SPOT_EUI, 2, bytes.fromhex("00FF"), None, ts, 3)
    await asyncio.to_thread(publish_raw, settings, [first])

    async def first_stored() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM waste_readings") == 1)

    await wait_until(first_stored)
    # In a later batch than the original: the database, not the batch, recognises it.
    await asyncio.to_thread(publish_raw, settings, [again, join, heartbeat])

    async def settled() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM device_events") >= 1)

    await wait_until(settled)
    stats = await running.stop()
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 1
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    event = await pool.fetchrow("SELECT device_id, event, temperature_c FROM device_events")
    assert event is not None
    assert (event["device_id"], event["event"], event["temperature_c"]) == (
        "L-PS-1",
        "heartbeat",
        -1,
    )
    assert stats.ignored == 1


async def test_unknown_device_model_and_bytes_are_dead_lettered(
    settings: Settings,
    lorawan_fleet: None,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """An unregistered DevEUI, a model without profile, undecodable bytes: each its own reason."""
    del lorawan_fleet
    await pool.execute(
        "INSERT INTO containers (id, location, zone, capacity_l, depth_mm)"
        " VALUES ('L-WC-2', ST_MakePoint(-7.6, 33.58)::geography, 'maarif', 660, 1000)"
    )
    await pool.execute(
        "INSERT INTO sensors (container_id, model, dev_eui)"
        " VALUES ('L-WC-2', 'acme-9000', 'AAAAAAAAAAAAAAAA')"
    )
    await ingest()
    ts = datetime.now(UTC) - timedelta(seconds=5)
    unknown = ttn("ghost", "0102030405060708", 85, LEVEL_BYTES, None, ts, 1)
    no_profile = ttn("bin-2", "AAAAAAAAAAAAAAAA", 85, LEVEL_BYTES, None, ts, 1)
    garbage = ttn("bin-1", LEVEL_EUI, 85, bytes.fromhex("0175"), None, ts, 2)
    await asyncio.to_thread(publish_raw, settings, [unknown, no_profile, garbage])

    async def filed() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM dead_letters") == 3)

    await wait_until(filed)
    rows = await pool.fetch("SELECT topic, reason FROM dead_letters")
    reasons = {row["topic"]: row["reason"] for row in rows}
    assert reasons == {
        unknown[0]: "unknown_device",
        no_profile[0]: "unknown_model",
        garbage[0]: "undecodable",
    }


async def test_nul_characters_in_an_envelope_do_not_stall_ingestion(
    settings: Settings,
    lorawan_fleet: None,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """A device id holding NUL (which PostgreSQL text refuses) is dead-lettered; ingest goes on."""
    del lorawan_fleet
    await ingest()
    ts = datetime.now(UTC) - timedelta(seconds=5)
    topic, payload = ttn("nul-dev", "0102030405060709", 85, LEVEL_BYTES, None, ts, 1)
    body = json.loads(payload)
    body["end_device_ids"]["device_id"] = "bad\u0000id"
    body["end_device_ids"].pop("dev_eui")
    nul = (topic, json.dumps(body).encode())
    good = ttn("bin-1", LEVEL_EUI, 85, LEVEL_BYTES, None, ts, 5)
    await asyncio.to_thread(publish_raw, settings, [nul, good])

    async def both_done() -> bool:
        return bool(
            await pool.fetchval("SELECT count(*) FROM dead_letters") == 1
            and await pool.fetchval("SELECT count(*) FROM waste_readings") == 1
        )

    await wait_until(both_done)


async def test_health_frame_updates_last_seen_and_battery_not_fill(
    settings: Settings,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """A battery-only frame of a level sensor sets last seen and battery; fill stays unknown."""
    features = [
        feature(
            "waste_container",
            "H-WC-1",
            -7.61,
            33.58,
            "maarif",
            capacity_l=660,
            depth_mm=1000,
            device_model="decentlab-dl-mbx",
            dev_eui="70B3D5E75E00B0B0",
        ),
    ]
    path = tmp_path / "fleet.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    await import_fleet(pool, path)
    await ingest()
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    # DL-MBX, published vector: battery 2.993 V only, no distance.
    battery_only = ttn("mbx-1", "70B3D5E75E00B0B0", 1, bytes.fromhex("02012F00020BB1"), None, ts, 3)
    await asyncio.to_thread(publish_raw, settings, [battery_only])

    async def recorded() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM device_events") == 1)

    await wait_until(recorded)
    container = (await api.get("/v1/containers/H-WC-1")).json()
    assert container["fill_pct"] is None
    assert container["measured_at"] is None
    # The profile maps 2.2 V to 0 % and 3.2 V to 100 %.
    assert container["battery_pct"] == pytest.approx(79.3, abs=0.05)
    assert container["last_seen"] is not None
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 0
