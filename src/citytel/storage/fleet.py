"""Importing the registry of containers and spots from a GeoJSON FeatureCollection."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from citytel.domain import DEFAULT_GATEWAY
from citytel.errors import ConfigurationError
from citytel.formats.topics import is_valid_id
from citytel.storage.pool import Connection, connection

UPSERT_CONTAINERS = """
INSERT INTO containers AS c
    (id, location, zone, capacity_l, depth_mm, waste_kind, full_mark_mm, gateway_id)
SELECT id, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, zone, capacity_l, depth_mm,
       waste_kind, full_mark_mm, gateway_id
FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::int[], $6::int[], $7::text[],
            $8::int[], $9::text[])
    AS f(id, lon, lat, zone, capacity_l, depth_mm, waste_kind, full_mark_mm, gateway_id)
ON CONFLICT (id) DO UPDATE SET
    location = EXCLUDED.location, zone = EXCLUDED.zone, capacity_l = EXCLUDED.capacity_l,
    depth_mm = EXCLUDED.depth_mm, waste_kind = EXCLUDED.waste_kind,
    full_mark_mm = EXCLUDED.full_mark_mm, gateway_id = EXCLUDED.gateway_id, updated_at = now()
"""

UPSERT_SPOTS = """
INSERT INTO parking_spots AS s (id, location, zone, category, gateway_id)
SELECT id, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, zone, category, gateway_id
FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::text[], $6::text[])
    AS f(id, lon, lat, zone, category, gateway_id)
ON CONFLICT (id) DO UPDATE SET
    location = EXCLUDED.location, zone = EXCLUDED.zone, category = EXCLUDED.category,
    gateway_id = EXCLUDED.gateway_id, updated_at = now(), changed_xid = pg_current_xact_id()
"""


# A device's sensor may be swapped: the binding follows the container or spot.
UPSERT_CONTAINER_SENSORS = """
INSERT INTO sensors (container_id, model, dev_eui, network_device_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (container_id) DO UPDATE SET
    model = EXCLUDED.model, dev_eui = EXCLUDED.dev_eui,
    network_device_id = EXCLUDED.network_device_id
"""

UPSERT_SPOT_SENSORS = """
INSERT INTO sensors (spot_id, model, dev_eui, network_device_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (spot_id) DO UPDATE SET
    model = EXCLUDED.model, dev_eui = EXCLUDED.dev_eui,
    network_device_id = EXCLUDED.network_device_id
"""

_DEV_EUI = re.compile(r"^[0-9A-Fa-f]{16}$")

REGISTERED_GATEWAYS = "SELECT id FROM gateways WHERE id = ANY($1::text[])"


@dataclass(frozen=True)
class FleetImport:
    """How many of each kind a fleet file held."""

    containers: int
    spots: int


@dataclass(frozen=True)
class _Feature:
    kind: str
    id: str
    lon: float
    lat: float
    zone: str
    props: dict[str, Any]


def _feature(index: int, raw: Any) -> _Feature:
    where = f"feature {index}"
    if not isinstance(raw, dict) or raw.get("type") != "Feature":
        message = f"{where} is not a GeoJSON Feature"
        raise ConfigurationError(message)
    geometry = raw.get("geometry") or {}
    coordinates = geometry.get("coordinates")
    if geometry.get("type") != "Point" or not isinstance(coordinates, list) or len(coordinates) < 2:
        message = f"{where} must have a Point geometry [lon, lat]"
        raise ConfigurationError(message)
    lon, lat = coordinates[0], coordinates[1]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (lon, lat)):
        message = f"{where}: coordinates must be numbers"
        raise ConfigurationError(message)
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        message = f"{where}: [lon, lat] = [{lon}, {lat}] is outside the globe; is it swapped?"
        raise ConfigurationError(message)
    props = raw.get("properties") or {}
    kind, ident, zone = props.get("kind"), props.get("id"), props.get("zone")
    if kind not in {"waste_container", "parking_spot"}:
        message = f"{where}: properties.kind must be 'waste_container' or 'parking_spot'"
        raise ConfigurationError(message)
    if not isinstance(ident, str) or not is_valid_id(ident):
        message = f"{where}: properties.id {ident!r} is not a valid id"
        raise ConfigurationError(message)
    if not isinstance(zone, str) or not zone:
        message = f"{where} ({ident}): properties.zone is required"
        raise ConfigurationError(message)
    return _Feature(kind, ident, float(lon), float(lat), zone, props)


def _gateway(feature: _Feature) -> str:
    value = feature.props.get("gateway", DEFAULT_GATEWAY)
    if not isinstance(value, str) or not is_valid_id(value):
        message = f"{feature.id}: properties.gateway {value!r} is not a valid gateway id"
        raise ConfigurationError(message)
    return value


async def _check_gateways(conn: Connection, features: list[_Feature]) -> None:
    named = {_gateway(f) for f in features}
    rows = await conn.fetch(REGISTERED_GATEWAYS, sorted(named))
    missing = sorted(named - {row["id"] for row in rows})
    if missing:
        first = next(f for f in features if _gateway(f) == missing[0])
        message = (
            f"{first.id}: properties.gateway {missing[0]!r} is not a registered gateway "
            f"(unregistered: {', '.join(missing)}); add it with `citytel gateways add "
            f"{missing[0]}`, then import again"
        )
        raise ConfigurationError(message)


def _positive_int(feature: _Feature, name: str) -> int:
    value = feature.props.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        message = f"container {feature.id}: properties.{name} must be a positive integer"
        raise ConfigurationError(message)
    return value


@dataclass(frozen=True)
class _Sensor:
    model: str
    dev_eui: str | None
    network_device_id: str | None


def _sensor(feature: _Feature) -> _Sensor | None:
    model = feature.props.get("device_model")
    eui = feature.props.get("dev_eui")
    device = feature.props.get("network_device_id")
    if model is None and eui is None and device is None:
        return None
    where = f"{feature.id}: properties"
    if not isinstance(model, str) or not model:
        message = f"{where}.device_model is required with dev_eui or network_device_id"
        raise ConfigurationError(message)
    if eui is not None and (not isinstance(eui, str) or not _DEV_EUI.match(eui)):
        message = f"{where}.dev_eui {eui!r} must be 16 hexadecimal digits"
        raise ConfigurationError(message)
    if device is not None and (not isinstance(device, str) or not device):
        message = f"{where}.network_device_id must be a non-empty string"
        raise ConfigurationError(message)
    if eui is None and device is None:
        message = f"{where}: a sensor needs a dev_eui or a network_device_id"
        raise ConfigurationError(message)
    return _Sensor(model, eui.upper() if eui else None, device)


def _optional_int(feature: _Feature, name: str) -> int | None:
    value = feature.props.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        message = f"{feature.id}: properties.{name} must be a non-negative integer"
        raise ConfigurationError(message)
    return value


def parse_fleet(document: Any) -> tuple[list[_Feature], list[_Feature]]:
    """Containers and spots of a FeatureCollection, checked.

    Raises:
        ConfigurationError: saying which feature is wrong and how.
    """
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        message = "a fleet file must be a GeoJSON FeatureCollection"
        raise ConfigurationError(message)
    features = [_feature(i, raw) for i, raw in enumerate(document.get("features") or [])]
    containers = [f for f in features if f.kind == "waste_container"]
    spots = [f for f in features if f.kind == "parking_spot"]
    for group in (containers, spots):
        ids = [f.id for f in group]
        if len(set(ids)) != len(ids):
            message = "a fleet file lists the same id twice"
            raise ConfigurationError(message)
    return containers, spots


async def import_fleet(pool: asyncpg.Pool, path: Path) -> FleetImport:
    """Upsert every container and spot of a GeoJSON file, in one transaction."""
    try:
        document = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        message = f"cannot read fleet file {path}: {exc}"
        raise ConfigurationError(message) from exc
    containers, spots = parse_fleet(document)
    async with connection(pool) as conn, conn.transaction():
        await _check_gateways(conn, containers + spots)
        if containers:
            await conn.execute(
                UPSERT_CONTAINERS,
                [f.id for f in containers],
                [f.lon for f in containers],
                [f.lat for f in containers],
                [f.zone for f in containers],
                [_positive_int(f, "capacity_l") for f in containers],
                [_positive_int(f, "depth_mm") for f in containers],
                [str(f.props.get("waste_kind") or "mixed") for f in containers],
                [_optional_int(f, "full_mark_mm") for f in containers],
                [_gateway(f) for f in containers],
            )
            await _bind_sensors(conn, UPSERT_CONTAINER_SENSORS, containers)
        if spots:
            await conn.execute(
                UPSERT_SPOTS,
                [f.id for f in spots],
                [f.lon for f in spots],
                [f.lat for f in spots],
                [f.zone for f in spots],
                [str(f.props.get("category") or "standard") for f in spots],
                [_gateway(f) for f in spots],
            )
            await _bind_sensors(conn, UPSERT_SPOT_SENSORS, spots)
    return FleetImport(containers=len(containers), spots=len(spots))


async def _bind_sensors(conn: Connection, statement: str, features: list[_Feature]) -> None:
    bound = [(f.id, sensor) for f in features if (sensor := _sensor(f)) is not None]
    if bound:
        await conn.execute(
            statement,
            [ident for ident, _ in bound],
            [s.model for _, s in bound],
            [s.dev_eui for _, s in bound],
            [s.network_device_id for _, s in bound],
        )
