"""Dead letters over HTTP: listing with filters, and replay once the cause is fixed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from citytel.domain import DeviceKind
from citytel.formats.native import WastePayload, encode_native
from citytel.formats.topics import native_topic
from citytel.storage.fleet import import_fleet
from tests.integration.conftest import Fleet, RunningIngest, feature, publish_raw, wait_until
from tests.integration.test_lorawan import LEVEL_BYTES, ttn

pytestmark = pytest.mark.integration


async def test_readings_before_registration_are_replayed_after_it(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """Readings of devices not yet registered are dead letters; after import, replay stores them."""
    await ingest()
    now = datetime.now(UTC).replace(microsecond=0)
    native = native_topic(settings.mqtt_topic_root, "default", DeviceKind.WASTE, "NEW-WC-1")
    early = [
        (native, encode_native([WastePayload(ts=now - timedelta(minutes=m), fill_pct=40 + m)]))
        for m in (1, 2)
    ]
    lorawan = ttn(
        "new-bin", "A84041000181BEEF", 85, LEVEL_BYTES, None, now - timedelta(seconds=20), 4
    )
    broken = (
        native_topic(settings.mqtt_topic_root, "default", DeviceKind.WASTE, fleet.containers[0]),
        b"nope",
    )
    await asyncio.to_thread(publish_raw, settings, [*early, lorawan, broken])

    async def filed() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM dead_letters") == 4)

    await wait_until(filed)
    listed = (await api.get("/v1/dead-letters", params={"reason": "unknown_device"})).json()
    assert listed["total"] == 3
    assert {item["topic"] for item in listed["items"]} == {native, lorawan[0]}
    assert all("replay" in item["detail"] for item in listed["items"])
    assert (await api.get("/v1/dead-letters", params={"reason": "invalid_json"})).json()[
        "total"
    ] == 1

    # Nothing registered yet: a replay changes nothing and counts nothing twice.
    again = (await api.post("/v1/dead-letters/replay", json={"reason": "unknown_device"})).json()
    assert (again["replayed"], again["resolved"], again["still_dead"]) == (3, 0, 3)
    assert await pool.fetchval("SELECT sum(times_received) FROM dead_letters") == 4

    path = tmp_path / "new.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    feature(
                        "waste_container",
                        "NEW-WC-1",
                        -7.6,
                        33.58,
                        "maarif",
                        capacity_l=660,
                        depth_mm=1000,
                    ),
                    feature(
                        "waste_container",
                        "NEW-WC-2",
                        -7.6,
                        33.58,
                        "maarif",
                        capacity_l=660,
                        depth_mm=1200,
                        device_model="milesight-em310-udl",
                        dev_eui="A84041000181BEEF",
                    ),
                ],
            }
        )
    )
    await import_fleet(pool, path)
    result = (await api.post("/v1/dead-letters/replay", json={"reason": "unknown_device"})).json()
    assert result == {
        "replayed": 3,
        "resolved": 3,
        "still_dead": 0,
        "readings_stored": 3,
        "still_dead_by_reason": {},
        "truncated": 0,
    }
    remaining = (await api.get("/v1/dead-letters")).json()
    assert [item["reason"] for item in remaining["items"]] == ["invalid_json"]
    assert remaining["items"][0]["payload_text"] == "nope"
    assert (await api.get("/v1/containers/NEW-WC-1")).json()["fill_pct"] == 41
    assert (await api.get("/v1/containers/NEW-WC-2")).json()["fill_pct"] == pytest.approx(50)

    one = remaining["items"][0]["id"]
    single = (await api.post(f"/v1/dead-letters/{one}/replay")).json()
    assert (single["replayed"], single["resolved"]) == (1, 0)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("get", "/v1/dead-letters?reason=bogus", None, 422, "query parameter 'reason'"),
        ("get", "/v1/dead-letters?since=2026-01-01T00:00:00", None, 422, "UTC offset"),
        ("get", "/v1/dead-letters/999999", None, 404, "no dead letter with id '999999'"),
        ("post", "/v1/dead-letters/replay", {}, 422, "say which dead letters"),
        ("post", "/v1/dead-letters/replay", {"limit": 0}, 422, "limit"),
        ("post", "/v1/dead-letters/replay", {"reasons": "x"}, 422, "reasons"),
        (
            "post",
            "/v1/dead-letters/replay",
            {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            422,
            "'since' must be before 'until'",
        ),
        ("post", "/v1/dead-letters/999999/replay", None, 404, "no dead letter"),
    ],
)
async def test_dead_letter_requests_are_checked(
    api: httpx.AsyncClient, method: str, path: str, body: object, status: int, words: str
) -> None:
    """Bad dead-letter requests get a 4xx that says what to fix."""
    response = await api.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
