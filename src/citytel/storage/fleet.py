"""Importing the registry of containers and spots from a GeoJSON FeatureCollection.

A fleet file is checked whole before anything is written, and written in one transaction: a
refused file changes nothing. Every refusal names the feature (its index in ``features`` and its
id), the property and the fix.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import re
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
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

# What the registry holds now for the devices of a file, to tell what an import changes.
CURRENT_CONTAINERS = """
SELECT id, ST_X(location::geometry) AS lon, ST_Y(location::geometry) AS lat, zone,
       capacity_l, depth_mm, waste_kind, full_mark_mm, gateway_id
FROM containers
"""

CURRENT_SPOTS = """
SELECT id, ST_X(location::geometry) AS lon, ST_Y(location::geometry) AS lat, zone, category,
       gateway_id
FROM parking_spots
"""

CURRENT_SENSORS = """
SELECT container_id, spot_id, model, dev_eui, network_device_id FROM sensors
"""

# A sensor moved to another device (a swap between two devices in one file) is first released
# from the device it leaves, so that the new bindings do not collide with the old ones.
RELEASE_SENSORS = """
DELETE FROM sensors WHERE container_id = ANY($1::text[]) OR spot_id = ANY($2::text[])
"""

INSERT_CONTAINER_SENSORS = """
INSERT INTO sensors (container_id, model, dev_eui, network_device_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
"""

INSERT_SPOT_SENSORS = """
INSERT INTO sensors (spot_id, model, dev_eui, network_device_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
"""

REGISTERED_GATEWAYS = "SELECT id FROM gateways WHERE id = ANY($1::text[])"

_DEV_EUI = re.compile(r"^[0-9A-Fa-f]{16}$")
_KINDS = {"waste_container": "container", "parking_spot": "spot"}
# Two positions closer than this (in degrees, about 1 cm) are the same place.
_SAME_PLACE = 1e-7
# Past this many problems a refusal says how many more there are instead of listing them.
_MAX_LISTED = 20

ServiceArea = tuple[float, float, float, float]
"""``(west, south, east, north)`` in degrees: where every device of a fleet must stand."""


@dataclass(frozen=True)
class Sensor:
    """The sensor a fleet file binds to a device."""

    model: str
    dev_eui: str | None
    network_device_id: str | None


@dataclass(frozen=True)
class Device:
    """One checked feature of a fleet file: a container or a parking spot."""

    index: int
    kind: str  # "container" or "spot"
    id: str
    lon: float
    lat: float
    zone: str
    # containers: capacity, depth, waste kind, full mark, gateway; spots: category, gateway
    attributes: tuple[Any, ...]
    sensor: Sensor | None

    @property
    def where(self) -> str:
        """How a message names this feature: its index in the file and its id."""
        return f"feature {self.index} ({self.id})"


@dataclass
class FleetChanges:
    """What an import changes in the registry, by device id."""

    added: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    rebound: list[str] = field(default_factory=list)
    unchanged: int = 0
    # Devices of the registry that the file does not list: an import keeps them as they are.
    not_in_file: int = 0

    def summary(self) -> str:
        """One line per kind of change, with up to five ids each."""
        lines = []
        for name, ids in (
            ("added", self.added),
            ("moved", self.moved),
            ("changed (zone, size, category or gateway)", self.changed),
            ("rebound to another sensor", self.rebound),
        ):
            shown = ", ".join(ids[:5]) + (f", … ({len(ids) - 5} more)" if len(ids) > 5 else "")
            lines.append(f"  {name}: {len(ids)}" + (f" ({shown})" if ids else ""))
        lines.append(f"  unchanged: {self.unchanged}")
        lines.append(
            f"  removed: 0 (an import never removes; {self.not_in_file} registered devices "
            "are not in this file and stay as they are)"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class FleetImport:
    """How many of each kind a fleet file held, and what importing it changed (or would)."""

    containers: int
    spots: int
    changes: FleetChanges = field(default_factory=FleetChanges)
    dry_run: bool = False


class _Refusal(Exception):
    """One problem with one feature; collected so that a refusal lists them all."""


def decode_fleet_text(data: bytes, name: str) -> str:
    """The text of a fleet file: UTF-8, UTF-8 with a byte-order mark, or UTF-16.

    Raises:
        ConfigurationError: the bytes are none of these, saying how to save the file.
    """
    try:
        if data.startswith(codecs.BOM_UTF8):
            return data[len(codecs.BOM_UTF8) :].decode("utf-8")
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        # UTF-16 without a byte-order mark: JSON text starts with an ASCII character, so one of
        # the first two bytes is zero.
        if len(data) >= 2 and data[0] == 0 and data[1] != 0:
            return data.decode("utf-16-be")
        if len(data) >= 2 and data[1] == 0 and data[0] != 0:
            return data.decode("utf-16-le")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = (
            f"fleet file {name}: not UTF-8 or UTF-16 text (byte {exc.start}: {exc.reason}); "
            "save it as UTF-8 (GeoJSON's encoding)"
        )
        raise ConfigurationError(message) from exc


def _number_pair(coordinates: Any) -> tuple[float, float] | None:
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        return None
    lon, lat = coordinates[0], coordinates[1]
    numbers = all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in (lon, lat)
    )
    return (float(lon), float(lat)) if numbers else None


def _inside(area: ServiceArea, lon: float, lat: float) -> bool:
    west, south, east, north = area
    return west <= lon <= east and south <= lat <= north


def _position(where: str, raw: dict[str, Any], area: ServiceArea | None) -> tuple[float, float]:
    geometry = raw.get("geometry")
    pair = _number_pair(geometry.get("coordinates")) if isinstance(geometry, dict) else None
    if not isinstance(geometry, dict) or geometry.get("type") != "Point" or pair is None:
        message = (
            f"{where}: geometry must be a Point with numeric coordinates [lon, lat], "
            'e.g. {"type": "Point", "coordinates": [-7.5898, 33.5731]}'
        )
        raise _Refusal(message)
    lon, lat = pair
    swapped = f"{where}: geometry.coordinates [{lon}, {lat}] look swapped: GeoJSON puts the "
    swapped += f"longitude first; write [{lat}, {lon}]"
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        if -180 <= lat <= 180 and -90 <= lon <= 90:
            raise _Refusal(swapped)
        message = f"{where}: geometry.coordinates [{lon}, {lat}] are not on Earth ([lon, lat])"
        raise _Refusal(message)
    if area is not None and not _inside(area, lon, lat):
        if _inside(area, lat, lon):
            raise _Refusal(swapped)
        west, south, east, north = area
        message = (
            f"{where}: geometry.coordinates [{lon}, {lat}] are outside the service area "
            f"CITYTEL_FLEET_SERVICE_AREA={west},{south},{east},{north} (west,south,east,north); "
            "correct the position or widen the setting"
        )
        raise _Refusal(message)
    return lon, lat


def _positive_int(where: str, props: dict[str, Any], name: str, *, zero: bool = False) -> int:
    value = props.get(name)
    low = 0 if zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        wanted = "a whole number ≥ 0" if zero else "a whole number > 0"
        message = f"{where}: properties.{name} is {value!r}; it must be {wanted}"
        raise _Refusal(message)
    return value


def _text(where: str, props: dict[str, Any], name: str, default: str) -> str:
    value = props.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        message = f"{where}: properties.{name} is {value!r}; it must be a non-empty string"
        raise _Refusal(message)
    return value


def _sensor(where: str, props: dict[str, Any], models: Collection[str] | None) -> Sensor | None:
    model, eui = props.get("device_model"), props.get("dev_eui")
    device = props.get("network_device_id")
    if model is None and eui is None and device is None:
        return None
    if not isinstance(model, str) or not model:
        message = f"{where}: properties.device_model is required with dev_eui or network_device_id"
        raise _Refusal(message)
    if models is not None and model not in models:
        message = (
            f"{where}: properties.device_model {model!r} has no device profile; "
            f"use one of {', '.join(sorted(models))} or add a profile for it"
        )
        raise _Refusal(message)
    if eui is not None and (not isinstance(eui, str) or not _DEV_EUI.match(eui)):
        message = f"{where}: properties.dev_eui {eui!r} must be 16 hexadecimal digits"
        raise _Refusal(message)
    if device is not None and (not isinstance(device, str) or not device):
        message = f"{where}: properties.network_device_id must be a non-empty string"
        raise _Refusal(message)
    if eui is None and device is None:
        message = f"{where}: a sensor needs properties.dev_eui or properties.network_device_id"
        raise _Refusal(message)
    return Sensor(model, eui.upper() if eui else None, device)


def _has_nul(value: Any) -> bool:
    # PostgreSQL text cannot hold NUL: refused here rather than failing in the database.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _device(
    index: int, raw: Any, models: Collection[str] | None, area: ServiceArea | None
) -> Device:
    if not isinstance(raw, dict) or raw.get("type") != "Feature":
        message = f'feature {index}: not a GeoJSON Feature (it needs "type": "Feature")'
        raise _Refusal(message)
    if _has_nul(raw):
        message = (
            f"feature {index}: contains a NUL character (\\u0000), which no id or name can hold"
        )
        raise _Refusal(message)
    props = raw.get("properties")
    props = props if isinstance(props, dict) else {}
    ident = props.get("id")
    if not isinstance(ident, str) or not is_valid_id(ident):
        message = (
            f"feature {index}: properties.id {ident!r} is not a valid id (1 to 64 letters, "
            "digits and . _ : -, starting with a letter or digit)"
        )
        raise _Refusal(message)
    where = f"feature {index} ({ident})"
    kind = _KINDS.get(props.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        message = (
            f"{where}: properties.kind is {props.get('kind')!r}; "
            "it must be 'waste_container' or 'parking_spot'"
        )
        raise _Refusal(message)
    lon, lat = _position(where, raw, area)
    zone = props.get("zone")
    if not isinstance(zone, str) or not zone:
        message = f"{where}: properties.zone is required (the district's name, e.g. 'maarif')"
        raise _Refusal(message)
    attributes: tuple[Any, ...]
    if kind == "container":
        attributes = (
            _positive_int(where, props, "capacity_l"),
            _positive_int(where, props, "depth_mm"),
            _text(where, props, "waste_kind", "mixed"),
            None
            if props.get("full_mark_mm") is None
            else _positive_int(where, props, "full_mark_mm", zero=True),
            _gateway(where, props),
        )
    else:
        attributes = (_text(where, props, "category", "standard"), _gateway(where, props))
    return Device(index, kind, ident, lon, lat, zone, attributes, _sensor(where, props, models))


def _gateway(where: str, props: dict[str, Any]) -> str:
    value = props.get("gateway", DEFAULT_GATEWAY)
    if not isinstance(value, str) or not is_valid_id(value):
        message = f"{where}: properties.gateway {value!r} is not a valid gateway id"
        raise _Refusal(message)
    return value


async def _check_gateways(conn: Connection, devices: list[Device]) -> None:
    """Refuse devices bound to gateways the registry does not know, naming each one."""
    named = {d.attributes[-1] for d in devices}
    known = {row["id"] for row in await conn.fetch(REGISTERED_GATEWAYS, sorted(named))}
    problems = [
        f"{d.where}: properties.gateway {d.attributes[-1]!r} is not a registered gateway; "
        f"add it with `citytel gateways add {d.attributes[-1]}`, then import again"
        for d in devices
        if d.attributes[-1] not in known
    ]
    if problems:
        raise ConfigurationError(_refusal(problems))


def _duplicates(key: str, values: Iterable[tuple[Device, Any]]) -> list[str]:
    first: dict[Any, Device] = {}
    problems = []
    for device, value in values:
        if value is None:
            continue
        other = first.setdefault(value, device)
        if other is not device:
            problems.append(
                f"{other.where} and {device.where} both have {key} {value!r}; "
                "each must be unique: correct one of them"
            )
    return problems


def parse_fleet(
    document: Any,
    *,
    models: Collection[str] | None = None,
    area: ServiceArea | None = None,
) -> list[Device]:
    """Every device of a FeatureCollection, checked.

    Args:
        document: the parsed GeoJSON.
        models: the device models a sensor may be (those with a profile); None accepts any.
        area: where devices must stand; None accepts anywhere on Earth.

    Raises:
        ConfigurationError: listing each feature that is wrong, the property and the fix.
    """
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        message = 'a fleet file must be a GeoJSON FeatureCollection ("type": "FeatureCollection")'
        raise ConfigurationError(message)
    features = document.get("features")
    if not isinstance(features, list):
        message = 'a fleet file needs a "features" list'
        raise ConfigurationError(message)
    devices: list[Device] = []
    problems: list[str] = []
    for index, raw in enumerate(features):
        try:
            devices.append(_device(index, raw, models, area))
        except _Refusal as exc:
            problems.append(str(exc))
    for kind in _KINDS.values():
        group = [d for d in devices if d.kind == kind]
        problems += _duplicates("properties.id", ((d, d.id) for d in group))
    with_sensor = [d for d in devices if d.sensor is not None]
    for name in ("dev_eui", "network_device_id"):
        pairs = ((d, getattr(d.sensor, name)) for d in with_sensor)
        problems += _duplicates(f"properties.{name}", pairs)
    if problems:
        raise ConfigurationError(_refusal(problems))
    return devices


def _refusal(problems: list[str]) -> str:
    listed = problems[:_MAX_LISTED]
    more = len(problems) - len(listed)
    text = f"fleet file refused, nothing imported ({len(problems)} problem(s)):\n  "
    text += "\n  ".join(listed)
    return text + (f"\n  … and {more} more" if more else "")


async def read_fleet(
    path: Path,
    *,
    models: Collection[str] | None = None,
    area: ServiceArea | None = None,
) -> list[Device]:
    """The checked devices of a fleet file (see :func:`parse_fleet`).

    Raises:
        ConfigurationError: the file cannot be read, is not JSON, or a feature is wrong.
    """
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        message = f"cannot read fleet file {path}: {exc.strerror or exc}"
        raise ConfigurationError(message) from exc
    text = decode_fleet_text(data, str(path))
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        message = (
            f"fleet file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        )
        raise ConfigurationError(message) from exc
    except RecursionError as exc:
        message = f"fleet file {path} is nested too deeply to be GeoJSON"
        raise ConfigurationError(message) from exc
    return parse_fleet(document, models=models, area=area)


async def import_fleet(
    pool: asyncpg.Pool,
    path: Path,
    *,
    models: Collection[str] | None = None,
    area: ServiceArea | None = None,
    dry_run: bool = False,
) -> FleetImport:
    """Upsert every container and spot of a GeoJSON file, in one transaction.

    With ``dry_run`` the same work is done and rolled back: the result says what would change.

    Raises:
        ConfigurationError: the file is refused (nothing is written), naming each feature at fault.
    """
    devices = await read_fleet(path, models=models, area=area)
    async with connection(pool) as conn:
        return await import_devices(conn, devices, dry_run=dry_run)


async def import_devices(
    conn: Connection,
    devices: list[Device],
    *,
    dry_run: bool = False,
    then: Callable[[FleetImport], Awaitable[None]] | None = None,
) -> FleetImport:
    """Upsert checked devices in one transaction on ``conn``; ``then`` runs inside it.

    With ``dry_run`` the same work is done and rolled back. ``then`` (an audit record, say)
    sees the result before the commit: if it fails, nothing is written.

    Raises:
        ConfigurationError: a device names an unknown gateway or takes another's sensor.
    """
    transaction = conn.transaction()
    await transaction.start()
    try:
        result = await _import(conn, devices, dry_run=dry_run)
        if then is not None:
            await then(result)
    except BaseException:
        await transaction.rollback()
        raise
    if dry_run:
        await transaction.rollback()
    else:
        await transaction.commit()
    return result


async def _import(conn: Connection, devices: list[Device], *, dry_run: bool) -> FleetImport:
    containers = [d for d in devices if d.kind == "container"]
    spots = [d for d in devices if d.kind == "spot"]
    await _check_gateways(conn, devices)
    registry = await _registry(conn)
    _check_sensor_owners(registry, devices)
    changes = _changes(registry, devices)
    if containers:
        await conn.execute(
            UPSERT_CONTAINERS,
            *_columns(containers, lambda d: (d.id, d.lon, d.lat, d.zone, *d.attributes)),
        )
    if spots:
        await conn.execute(
            UPSERT_SPOTS, *_columns(spots, lambda d: (d.id, d.lon, d.lat, d.zone, *d.attributes))
        )
    bound = [d for d in devices if d.sensor is not None]
    await conn.execute(
        RELEASE_SENSORS,
        [d.id for d in bound if d.kind == "container"],
        [d.id for d in bound if d.kind == "spot"],
    )
    for kind, statement in (("container", INSERT_CONTAINER_SENSORS), ("spot", INSERT_SPOT_SENSORS)):
        group = [d for d in bound if d.kind == kind]
        if group:
            await conn.execute(statement, *_columns(group, _sensor_row))
    return FleetImport(len(containers), len(spots), changes, dry_run)


def _sensor_row(device: Device) -> tuple[Any, ...]:
    sensor = device.sensor
    assert sensor is not None  # noqa: S101 - only devices with a sensor are bound
    return (device.id, sensor.model, sensor.dev_eui, sensor.network_device_id)


def _columns(devices: list[Device], row: Any) -> list[list[Any]]:
    rows = [row(d) for d in devices]
    return [list(column) for column in zip(*rows, strict=True)]


@dataclass(frozen=True)
class _Registry:
    """What the registry holds before an import, keyed by (kind, id)."""

    places: dict[tuple[str, str], tuple[Any, ...]]
    sensors: dict[tuple[str, str], Sensor]


async def _registry(conn: Connection) -> _Registry:
    places: dict[tuple[str, str], tuple[Any, ...]] = {}
    for kind, query in (("container", CURRENT_CONTAINERS), ("spot", CURRENT_SPOTS)):
        for record in await conn.fetch(query):
            places[(kind, record["id"])] = tuple(record.values())[1:]
    sensors: dict[tuple[str, str], Sensor] = {}
    for record in await conn.fetch(CURRENT_SENSORS):
        owner = ("container", record[0]) if record[0] is not None else ("spot", record[1])
        sensors[owner] = Sensor(record[2], record[3], record[4])
    return _Registry(places, sensors)


def _changes(registry: _Registry, devices: list[Device]) -> FleetChanges:
    changes = FleetChanges()
    listed = set()
    for device in devices:
        key = (device.kind, device.id)
        listed.add(key)
        before = registry.places.get(key)
        if before is None:
            changes.added.append(device.id)
            continue
        lon, lat, zone, *attributes = before
        touched = False
        if abs(lon - device.lon) > _SAME_PLACE or abs(lat - device.lat) > _SAME_PLACE:
            changes.moved.append(device.id)
            touched = True
        if (zone, *attributes) != (device.zone, *device.attributes):
            changes.changed.append(device.id)
            touched = True
        if device.sensor is not None and registry.sensors.get(key) != device.sensor:
            changes.rebound.append(device.id)
            touched = True
        if not touched:
            changes.unchanged += 1
    changes.not_in_file = len(set(registry.places) - listed)
    return changes


def _check_sensor_owners(registry: _Registry, devices: list[Device]) -> None:
    """Refuse a sensor the file gives a device while the registry keeps it on another.

    A sensor bound to a device the file rebinds too (a swap) is released by the import; one bound
    to a device the file does not rebind would stay there, so the file is refused instead.
    """
    rebinding = {(d.kind, d.id) for d in devices if d.sensor is not None}
    claims: dict[tuple[str, str], Device] = {}
    for device in devices:
        if device.sensor is not None:
            for name in ("dev_eui", "network_device_id"):
                value = getattr(device.sensor, name)
                if value is not None:
                    claims[(name, value)] = device
    problems = []
    for owner, sensor in registry.sensors.items():
        if owner in rebinding:
            continue
        for name in ("dev_eui", "network_device_id"):
            value = getattr(sensor, name)
            claimant = claims.get((name, value))
            if claimant is not None and (claimant.kind, claimant.id) != owner:
                problems.append(
                    f"{claimant.where}: properties.{name} {value!r} is the sensor of {owner[0]} "
                    f"{owner[1]} in the registry, which this file does not rebind; list "
                    f"{owner[1]} with its new sensor in the same file, or correct {claimant.id}"
                )
    if problems:
        raise ConfigurationError(_refusal(problems))
