"""API keys: every route needs its scope, keys are stored hashed and revocation is immediate."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from citytel.api.app import create_app
from citytel.config import Settings
from citytel.domain import DEFAULT_GATEWAY, DeviceKind
from citytel.formats.native import WastePayload, encode_native
from citytel.formats.topics import native_topic
from citytel.keys import Scope
from citytel.storage.migrate import NOT_MIGRATED
from tests.integration.conftest import Fleet, create_key, feature, serve_api

pytestmark = pytest.mark.integration

OPEN = {("GET", "/healthz"), ("GET", "/readyz")}


@dataclass
class Call:
    """A request that succeeds on a route given the right key."""

    url: str
    json: Any = None
    params: dict[str, Any] | None = None


# One example call per route. A route missing here fails test_every_route_needs_its_scope:
# adding a route means saying what scope it needs and showing that it works with it.
EXAMPLES: dict[tuple[str, str], Call] = {
    ("GET", "/v1/containers"): Call("/v1/containers"),
    ("GET", "/v1/containers/{container_id}"): Call("/v1/containers/T-WC-000"),
    ("GET", "/v1/containers/{container_id}/readings"): Call("/v1/containers/T-WC-000/readings"),
    ("GET", "/v1/collection/round"): Call("/v1/collection/round"),
    ("GET", "/v1/parking/free"): Call("/v1/parking/free", params={"lat": 33.5731, "lon": -7.5898}),
    ("GET", "/v1/parking/spots/{spot_id}"): Call("/v1/parking/spots/T-PS-000"),
    ("GET", "/v1/parking/spots"): Call("/v1/parking/spots"),
    ("GET", "/v1/parking/free/stream"): Call(
        "/v1/parking/free/stream", params={"lat": 33.5731, "lon": -7.5898}
    ),
    ("GET", "/v1/events"): Call("/v1/events"),
    ("GET", "/v1/zones"): Call("/v1/zones"),
    ("GET", "/v1/zones/{zone}"): Call("/v1/zones/maarif"),
    ("GET", "/v1/zones/{zone}/occupancy"): Call("/v1/zones/anfa/occupancy"),
    ("GET", "/v1/zones/{zone}/occupancy/week"): Call("/v1/zones/anfa/occupancy/week"),
    ("GET", "/v1/zones/{zone}/parking/forecast"): Call("/v1/zones/anfa/parking/forecast"),
    ("GET", "/v1/zones/{zone}/waste/kpis"): Call("/v1/zones/anfa/waste/kpis"),
    ("GET", "/v1/devices/attention"): Call("/v1/devices/attention"),
    ("GET", "/v1/dead-letters"): Call("/v1/dead-letters"),
    ("GET", "/v1/dead-letters/{letter_id}"): Call("/v1/dead-letters/{letter}"),
    ("POST", "/v1/dead-letters/replay"): Call(
        "/v1/dead-letters/replay", json={"ids": [999_999_999]}
    ),
    ("POST", "/v1/dead-letters/{letter_id}/replay"): Call("/v1/dead-letters/{letter}/replay"),
    ("GET", "/metrics"): Call("/metrics"),
    ("GET", "/v1/keys"): Call("/v1/keys"),
    ("POST", "/v1/keys"): Call("/v1/keys", json={"name": "made", "scopes": ["parking:read"]}),
    ("POST", "/v1/keys/{name}/revoke"): Call("/v1/keys/victim/revoke"),
    ("POST", "/v1/fleet"): Call(
        "/v1/fleet", json={"type": "FeatureCollection", "features": []}, params={"dry_run": True}
    ),
    ("PUT", "/v1/containers/{container_id}"): Call(
        "/v1/containers/T-WC-900",
        json=feature("waste_container", "-", -7.6, 33.57, "anfa", capacity_l=240, depth_mm=900),
    ),
    ("PUT", "/v1/parking/spots/{spot_id}"): Call(
        "/v1/parking/spots/T-PS-900", json=feature("parking_spot", "-", -7.59, 33.57, "anfa")
    ),
    # The last of each kind: no other example reads them.
    ("DELETE", "/v1/containers/{container_id}"): Call("/v1/containers/T-WC-019"),
    ("DELETE", "/v1/parking/spots/{spot_id}"): Call("/v1/parking/spots/T-PS-039"),
    ("GET", "/v1/gateways"): Call("/v1/gateways"),
    ("POST", "/v1/gateways"): Call("/v1/gateways", json={"id": "gw-example"}),
    ("POST", "/v1/gateways/{gateway_id}/disable"): Call("/v1/gateways/default/disable"),
    ("GET", "/v1/audit"): Call("/v1/audit"),
}


async def add_dead_letter(pool: asyncpg.Pool, settings: Settings, container: str) -> int:
    """A dead letter holding a valid reading of ``container``: replaying it stores the reading."""
    topic = native_topic(settings.mqtt_topic_root, DEFAULT_GATEWAY, DeviceKind.WASTE, container)
    payload = encode_native(
        [WastePayload(ts=datetime.now(UTC).replace(microsecond=0), fill_pct=55)]
    )
    letter_id: int = await pool.fetchval(
        "INSERT INTO dead_letters (topic, payload, payload_sha256, reason, detail,"
        " first_received_at, last_received_at)"
        " VALUES ($1, $2, $3, 'unknown_device', 'not registered then', now(), now())"
        " RETURNING id",
        topic,
        payload,
        hashlib.sha256(payload).digest(),
    )
    return letter_id


def route_scopes(settings: Settings) -> dict[tuple[str, str], str | None]:
    """Every operation of the app's OpenAPI document (its route table, generated from the
    routes) and the scope it declares (None: none)."""
    document = create_app(settings).openapi()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    found: dict[tuple[str, str], str | None] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = {
                s
                for requirement in operation.get("security", [])
                for v in requirement.values()
                for s in v
            }
            assert len(declared) <= 1, (method, path, declared)
            found[(method.upper(), path)] = declared.pop() if declared else None
    return found


async def test_every_route_needs_its_scope(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """For each route of the route table: no key 401, a key lacking its scope 403, its scope 2xx."""
    scopes = route_scopes(settings)
    letter = await add_dead_letter(pool, settings, fleet.containers[0])
    database_url = settings.database_url.get_secret_value()
    only = {s: await create_key(database_url, s) for s in Scope}
    others = {
        s: await create_key(database_url, *(o for o in Scope if o not in {s, Scope.ADMIN}))
        for s in Scope
    }
    await create_key(database_url, Scope.OPS, name="victim")
    problems: list[str] = []
    async with serve_api(settings, key_scopes=()) as api:
        for (method, path), scope in sorted(scopes.items()):
            if (method, path) in OPEN:
                if scope is not None:
                    problems.append(f"{method} {path} is open but declares {scope}")
                continue
            if scope is None:
                problems.append(f"{method} {path} declares no scope")
                continue
            if (method, path) not in EXAMPLES:
                problems.append(f"{method} {path} has no example call in EXAMPLES")
                continue
            call = EXAMPLES[(method, path)]
            url = call.url.format(letter=letter)

            async def send(
                key: str | None, call: Call = call, url: str = url, method: str = method
            ) -> httpx.Response:
                headers = {"X-API-Key": key} if key is not None else {}
                async with api.stream(
                    method, url, json=call.json, params=call.params, headers=headers
                ) as response:
                    # An event stream answers with its headers and goes on: not read to its end.
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        await response.aread()
                    return response

            anonymous = await send(None)
            if anonymous.status_code != 401 or "WWW-Authenticate" not in anonymous.headers:
                problems.append(f"{method} {path} without a key: {anonymous.status_code}")
            wrong = await send(others[Scope(scope)])
            if wrong.status_code != 403 or f"'{scope}'" not in wrong.json()["detail"]:
                problems.append(
                    f"{method} {path} without {scope}: {wrong.status_code} {wrong.text}"
                )
            right = await send(only[Scope(scope)])
            if not right.is_success:
                problems.append(f"{method} {path} with {scope}: {right.status_code} {right.text}")
    assert problems == []
    assert set(scopes) == OPEN | set(EXAMPLES)


async def test_health_is_open_and_says_nothing_internal(settings: Settings) -> None:
    """/healthz and /readyz answer without a key; /readyz names no address or error text."""
    away = settings.model_copy(update={"mqtt_url": "mqtt://127.0.0.1:9"})
    app = create_app(away)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        assert (await client.get("/healthz")).json() == {"status": "ok", "checks": {}}
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    # The one state more: what to do, not what is inside.
    assert set(ready.json()["checks"].values()) <= {"ok", "unavailable", NOT_MIGRATED}
    assert ready.json()["checks"]["broker"] == "unavailable"
    assert "127.0.0.1" not in ready.text


async def test_revoked_key_stops_working_at_once(settings: Settings, fleet: Fleet) -> None:
    """A key revoked over HTTP is refused on the very next request, though lookups are cached."""
    cached = settings.model_copy(update={"api_key_cache_s": 5.0})
    async with serve_api(cached) as admin:
        created = await admin.post(
            "/v1/keys", json={"name": "phone-app", "scopes": ["parking:read"]}
        )
        assert created.status_code == 201
        key = created.json()["key"]
        spot = f"/v1/parking/spots/{fleet.spots[0]}"
        as_app = {"Authorization": f"Bearer {key}"}
        assert (await admin.get(spot, headers=as_app)).status_code == 200
        assert (await admin.get("/v1/containers", headers=as_app)).status_code == 403
        assert (await admin.post("/v1/keys/phone-app/revoke")).json()["revoked_at"] is not None
        refused = await admin.get(spot, headers=as_app)
        assert refused.status_code == 401
        assert refused.json() == {"detail": "this API key is not valid (unknown or revoked)"}


async def test_keys_are_stored_hashed_and_never_listed(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The table holds the key's SHA-256 only; listing shows names and times, never keys."""
    created = (
        await api.post("/v1/keys", json={"name": "dispatch", "scopes": ["containers:read", "ops"]})
    ).json()
    key = created["key"]
    assert key.startswith("ct_")
    rows = await pool.fetch("SELECT * FROM api_keys")
    stored = [r for r in rows if r["name"] == "dispatch"]
    assert [bytes(r["key_sha256"]) for r in stored] == [hashlib.sha256(key.encode()).digest()]
    assert all(key not in str(dict(r)) for r in rows)
    listed = (await api.get("/v1/keys")).json()
    assert "dispatch" in {k["name"] for k in listed}
    assert all("key" not in k for k in listed)
    assert key not in str(listed)
    again = await api.post("/v1/keys", json={"name": "dispatch", "scopes": ["ops"]})
    assert again.status_code == 409
    unknown = await api.post("/v1/keys", json={"name": "x", "scopes": ["root"]})
    assert unknown.status_code == 422


async def test_cross_site_form_post_without_a_key_changes_nothing(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    """A form another site's page submits to the replay route is refused and replays nothing."""
    letter = await add_dead_letter(pool, settings, fleet.containers[0])
    before = await pool.fetch("SELECT * FROM dead_letters ORDER BY id")
    async with httpx.AsyncClient(base_url=api.base_url) as browser:
        refused = await browser.post(
            f"/v1/dead-letters/{letter}/replay",
            data={"anything": "1"},
            headers={"Origin": "https://evil.example", "Referer": "https://evil.example/page"},
        )
    assert refused.status_code == 401
    assert await pool.fetch("SELECT * FROM dead_letters ORDER BY id") == before
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 0
    # The same request with a key does replay it: the refusal above is the key's doing.
    replayed = await api.post(f"/v1/dead-letters/{letter}/replay")
    assert replayed.json()["resolved"] == 1
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 1


async def test_anonymous_parking_opens_only_the_parking_routes(
    settings: Settings, fleet: Fleet
) -> None:
    """CITYTEL_API_ANONYMOUS_PARKING opens the parking routes, nothing else; a bad key is 401."""
    opened = settings.model_copy(update={"api_anonymous_parking": True})
    async with serve_api(opened, key_scopes=()) as anyone:
        assert (await anyone.get(f"/v1/parking/spots/{fleet.spots[0]}")).status_code == 200
        free = await anyone.get("/v1/parking/free", params={"lat": 33.5731, "lon": -7.5898})
        assert free.status_code == 200
        assert (await anyone.get("/v1/containers")).status_code == 401
        assert (await anyone.get("/v1/dead-letters")).status_code == 401
        forged = await anyone.get(
            f"/v1/parking/spots/{fleet.spots[0]}", headers={"X-API-Key": "ct_" + "a" * 43}
        )
        assert forged.status_code == 401


async def test_last_used_is_written_once_per_interval(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """The first use of a key records its time; uses within the touch interval write nothing."""
    key = await create_key(settings.database_url.get_secret_value(), Scope.PARKING_READ, name="app")
    quiet = settings.model_copy(update={"api_key_touch_s": 3600.0, "api_key_cache_s": 0.0})
    async with serve_api(quiet, key_scopes=()) as api:
        spot = f"/v1/parking/spots/{fleet.spots[0]}"
        assert (await api.get(spot, headers={"X-API-Key": key})).status_code == 200
        first = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE name = 'app'")
        assert first is not None
        for _ in range(3):
            assert (await api.get(spot, headers={"X-API-Key": key})).status_code == 200
        assert await pool.fetchval("SELECT last_used_at FROM api_keys WHERE name = 'app'") == first


def test_cli_creates_lists_and_revokes(database_url: str) -> None:
    """`citytel keys create` prints the key once; `list` never shows it; `revoke` marks it."""
    env = {**os.environ, "CITYTEL_DATABASE_URL": database_url}

    def citytel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "citytel", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = citytel("create", "--name", "ops-team", "--scope", "ops", "containers:read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("ct_")
    assert key not in created.stderr
    revoked = citytel("revoke", "ops-team")
    assert revoked.returncode == 0, revoked.stderr
    listed = citytel("list")
    assert "ops-team" in listed.stdout
    assert "containers:read,ops" in listed.stdout
    assert key not in listed.stdout + listed.stderr
    bad = citytel("create", "--name", "x", "--scope", "root")
    assert bad.returncode == 2
    assert "unknown scope 'root'" in bad.stderr
