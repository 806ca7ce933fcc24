"""Provisioning over HTTP (admin scope): changes reach ingest and the live parking view at once,
uploads are all or nothing, and every change is audited with the name of the key that made it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from citytel.config import Settings
from citytel.domain import DeviceKind
from citytel.formats.native import WastePayload, encode_native
from citytel.formats.topics import native_topic
from citytel.keys import Scope
from tests.integration.conftest import (
    RunningIngest,
    create_key,
    feature,
    publish_raw,
    serve_api,
    wait_until,
)

pytestmark = pytest.mark.integration

ACTOR = "city-it"
HERE = {"lat": 33.5731, "lon": -7.5898}


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a fast live view and Casablanca's service area, called with an admin key
    named ``ACTOR``."""
    live = settings.model_copy(
        update={
            "api_live_refresh_ms": 50,
            "api_live_resync_s": 3600,
            "fleet_service_area": "-8,33,-7,34",
        }
    )
    key = await create_key(settings.database_url.get_secret_value(), Scope.ADMIN, name=ACTOR)
    async with serve_api(live, key_scopes=()) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def container_body(lon: float, lat: float, **props: Any) -> dict[str, Any]:
    """The body of a PUT for a container (its id and kind come from the path)."""
    body = feature("waste_container", "-", lon, lat, "maarif", capacity_l=1100, depth_mm=1200)
    body["properties"].update(props)
    return body


async def publish_fill(settings: Settings, gateway: str, container: str, fill: float) -> None:
    topic = native_topic(settings.mqtt_topic_root, gateway, DeviceKind.WASTE, container)
    # One reading per second at most is kept per device: each fill level gets its own second.
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=100 - fill)
    payload = encode_native([WastePayload(ts=ts, fill_pct=fill)])
    publish_raw(settings, [(topic, payload)])


async def audit_actions(admin: httpx.AsyncClient) -> list[tuple[str, str, str | None]]:
    response = await admin.get("/v1/audit")
    assert response.status_code == 200, response.text
    return [(e["actor"], e["action"], e["object_id"]) for e in response.json()["items"]]


async def test_create_move_rebind_delete_reach_ingest(
    settings: Settings,
    pool: asyncpg.Pool,
    admin: httpx.AsyncClient,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """A container created over HTTP takes readings; once rebound, its old gateway's readings
    are wrong_gateway; once deleted, unknown_device, and its readings stay."""
    for gateway in ("gw-a", "gw-b"):
        created = await admin.post("/v1/gateways", json={"id": gateway})
        assert created.status_code == 201, created.text
        assert created.json()["password"]
    put = await admin.put("/v1/containers/P-1", json=container_body(-7.60, 33.57, gateway="gw-a"))
    assert put.status_code == 200, put.text
    assert put.json()["created"] is True
    await ingest()

    await publish_fill(settings, "gw-a", "P-1", 30)

    async def stored(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            found = await pool.fetchval(
                "SELECT count(*) FROM waste_readings WHERE container_id = 'P-1'"
            )
            return bool(found == count)

        return check

    await wait_until(await stored(1))

    moved = container_body(-7.61, 33.58, gateway="gw-b")
    put = await admin.put("/v1/containers/P-1", json=moved)
    assert put.status_code == 200, put.text
    assert (put.json()["created"], put.json()["device"]["gateway_id"]) == (False, "gw-b")
    await publish_fill(settings, "gw-a", "P-1", 40)
    await publish_fill(settings, "gw-b", "P-1", 50)
    await wait_until(await stored(2))

    async def letter(reason: str) -> bool:
        found = await pool.fetchval("SELECT count(*) FROM dead_letters WHERE reason = $1", reason)
        return bool(found == 1)

    await wait_until(lambda: letter("wrong_gateway"))
    assert (
        await pool.fetchval("SELECT fill_pct FROM container_latest WHERE container_id = 'P-1'")
        == 50
    )

    assert (await admin.delete("/v1/containers/P-1")).status_code == 204
    assert (await admin.get("/v1/containers/P-1")).status_code == 404
    await publish_fill(settings, "gw-b", "P-1", 60)
    await wait_until(lambda: letter("unknown_device"))
    assert (
        await pool.fetchval("SELECT count(*) FROM waste_readings WHERE container_id = 'P-1'") == 2
    )
    assert (await admin.delete("/v1/containers/P-1")).status_code == 404

    assert await audit_actions(admin) == [
        (ACTOR, "container.delete", "P-1"),
        (ACTOR, "container.update", "P-1"),
        (ACTOR, "container.create", "P-1"),
        (ACTOR, "gateway.add", "gw-b"),
        (ACTOR, "gateway.add", "gw-a"),
    ]
    update = (await admin.get("/v1/audit", params={"limit": 1, "offset": 1})).json()["items"][0]
    assert (update["before"]["gateway_id"], update["after"]["gateway_id"]) == ("gw-a", "gw-b")
    assert (update["before"]["lon"], update["after"]["lon"]) == (
        pytest.approx(-7.60),
        pytest.approx(-7.61),
    )


async def free_ids(admin: httpx.AsyncClient) -> list[str]:
    response = await admin.get("/v1/parking/free", params={**HERE, "radius_m": 1000})
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["items"]]


async def test_spots_created_and_deleted_reach_the_live_view(
    pool: asyncpg.Pool, admin: httpx.AsyncClient
) -> None:
    """A spot created over HTTP is found free without a restart; once deleted, it is not."""
    body = feature("parking_spot", "-", HERE["lon"], HERE["lat"], "anfa")
    assert (await admin.put("/v1/parking/spots/P-S1", json=body)).status_code == 200
    await pool.execute(
        "INSERT INTO spot_latest (spot_id, ts, occupied, last_seen)"
        " VALUES ('P-S1', now(), false, now())"
    )

    async def shown(expected: list[str]) -> bool:
        return await free_ids(admin) == expected

    await wait_until(lambda: shown(["P-S1"]))
    assert (await admin.delete("/v1/parking/spots/P-S1")).status_code == 204
    await wait_until(lambda: shown([]))
    assert await audit_actions(admin) == [
        (ACTOR, "spot.delete", "P-S1"),
        (ACTOR, "spot.create", "P-S1"),
    ]


async def test_an_upload_with_one_bad_feature_changes_nothing(
    pool: asyncpg.Pool, admin: httpx.AsyncClient
) -> None:
    """One bad feature: 422 naming it and its field, nothing written, nothing audited; a dry run
    reports without writing; the upload then writes and is audited once with its report."""
    good = [
        feature("waste_container", "U-1", -7.60, 33.57, "anfa", capacity_l=240, depth_mm=900),
        feature("parking_spot", "U-2", -7.59, 33.57, "anfa"),
    ]
    swapped = feature("waste_container", "U-3", 33.57, -7.60, "anfa", capacity_l=240, depth_mm=900)
    bad = {"type": "FeatureCollection", "features": [*good, swapped]}
    before = await pool.fetchval("SELECT count(*) FROM containers")

    refused = await admin.post("/v1/fleet", json=bad)
    assert refused.status_code == 422
    assert "feature 2 (U-3): geometry.coordinates" in refused.json()["detail"]
    assert "swapped" in refused.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM containers") == before
    assert await pool.fetchval("SELECT count(*) FROM parking_spots WHERE id = 'U-2'") == 0

    upload = {"type": "FeatureCollection", "features": good}
    dry = await admin.post("/v1/fleet", json=upload, params={"dry_run": "true"})
    assert dry.status_code == 200, dry.text
    assert (dry.json()["added"], dry.json()["dry_run"]) == (["U-1", "U-2"], True)
    assert await pool.fetchval("SELECT count(*) FROM containers") == before
    assert await audit_actions(admin) == []

    done = await admin.post("/v1/fleet", json=upload)
    assert done.status_code == 200, done.text
    assert await pool.fetchval("SELECT count(*) FROM containers") == before + 1
    entry = (await admin.get("/v1/audit")).json()["items"]
    assert [(e["actor"], e["action"]) for e in entry] == [(ACTOR, "fleet.upload")]
    assert entry[0]["after"]["added"] == ["U-1", "U-2"]


async def test_a_device_on_an_unknown_gateway_is_refused(
    pool: asyncpg.Pool, admin: httpx.AsyncClient
) -> None:
    """A PUT naming an unregistered gateway is a 422 that says how to register it."""
    put = await admin.put("/v1/containers/P-2", json=container_body(-7.6, 33.57, gateway="gw-x"))
    assert put.status_code == 422
    assert "properties.gateway 'gw-x' is not a registered gateway" in put.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM containers WHERE id = 'P-2'") == 0
    assert await audit_actions(admin) == []


async def test_gateways_over_http_rewrite_the_broker_files(
    settings: Settings, tmp_path: Path
) -> None:
    """Adding a gateway gives its password once and lets it into the broker's files; disabling
    takes it out; a second add of the same id is a conflict."""
    files = settings.model_copy(
        update={
            "broker_password_file": tmp_path / "passwd",
            "broker_acl_file": tmp_path / "acl",
            "mqtt_username": "citytel-ingest",
            "mqtt_password": SecretStr("ingest-secret"),
        }
    )
    async with serve_api(files) as api:
        created = await api.post("/v1/gateways", json={"id": "gw-http", "name": "roof"})
        assert created.status_code == 201, created.text
        assert created.json()["broker_updated"] is True
        assert "gw-http:$7$" in (tmp_path / "passwd").read_text()
        assert "topic write " in (tmp_path / "acl").read_text()
        listed = (await api.get("/v1/gateways")).json()
        assert [g["id"] for g in listed] == ["default", "gw-http"]
        assert all("password" not in g for g in listed)
        assert created.json()["password"] not in (await api.get("/v1/audit")).text

        again = await api.post("/v1/gateways", json={"id": "gw-http"})
        assert again.status_code == 409

        disabled = await api.post("/v1/gateways/gw-http/disable")
        assert disabled.status_code == 200, disabled.text
        assert (disabled.json()["enabled"], disabled.json()["has_password"]) == (False, False)
        assert "gw-http" not in (tmp_path / "passwd").read_text()
        assert (await api.post("/v1/gateways/gw-none/disable")).status_code == 404
        actions = [e["action"] for e in (await api.get("/v1/audit")).json()["items"]]
        assert actions == ["gateway.disable", "gateway.add"]
