"""Provisioning over HTTP (admin scope): devices, fleet uploads, gateways, and the audit table.

Every change is checked exactly as ``citytel fleet import`` checks a file (a device put here is a
fleet file of one feature) and written to the audit table with the name of the key that made it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Body, Path, Query

from citytel.api.auth import require
from citytel.api.deps import ContainerAnswersDep, LiveSpotsDep, PoolDep, SettingsDep
from citytel.api.schemas import (
    AuditEntryPublic,
    AuditPage,
    DeviceProvisioned,
    FleetReport,
    GatewayCreate,
    GatewayCreated,
    GatewayPublic,
)
from citytel.broker import write_broker_files
from citytel.config import Settings
from citytel.decoding.profiles import load_profiles
from citytel.errors import ConfigurationError, ConflictError, InvalidQueryError, NotFoundError
from citytel.keys import ApiKey, Scope
from citytel.storage import audit, gateways, provisioning
from citytel.storage.fleet import Device, parse_fleet

router = APIRouter(tags=["provisioning"], dependencies=[require(Scope.ADMIN)])

AdminKey = Annotated[ApiKey | None, require(Scope.ADMIN)]
DeviceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
GatewayId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]

_KINDS = {"container": "waste_container", "spot": "parking_spot"}


def _actor(key: ApiKey | None) -> str:
    # An admin route never answers an anonymous call; the name is there by construction.
    return key.name if key is not None else "anonymous"


async def _checked(settings: Settings, document: Any) -> list[Device]:
    """The devices of a FeatureCollection, checked as the CLI's import checks a file (422)."""
    models = set(await asyncio.to_thread(load_profiles, settings.profiles_dir))
    try:
        return parse_fleet(document, models=models, area=settings.service_area)
    except ConfigurationError as exc:
        raise InvalidQueryError(str(exc)) from None


def _refused(exc: ConfigurationError) -> InvalidQueryError:
    return InvalidQueryError(str(exc))


@router.post("/v1/fleet", response_model=FleetReport, responses={422: {}})
async def upload_fleet(
    pool: PoolDep,
    settings: SettingsDep,
    key: AdminKey,
    answers: ContainerAnswersDep,
    document: Annotated[dict[str, Any], Body(description="a fleet GeoJSON FeatureCollection")],
    dry_run: bool = False,
) -> FleetReport:
    """Import a fleet FeatureCollection, all or nothing; `dry_run` only reports the changes."""
    devices = await _checked(settings, document)
    try:
        result = await provisioning.upload_fleet(pool, devices, actor=_actor(key), dry_run=dry_run)
    except ConfigurationError as exc:
        raise _refused(exc) from None
    if not dry_run:
        answers.forget()
    return FleetReport(**provisioning.change_report(result))


async def _put(
    kind: str,
    device_id: str,
    body: dict[str, Any],
    pool: asyncpg.Pool,
    settings: Settings,
    key: ApiKey | None,
) -> DeviceProvisioned:
    properties = body.get("properties")
    feature = {
        **body,
        "properties": {
            **(properties if isinstance(properties, dict) else {}),
            "id": device_id,
            "kind": _KINDS[kind],
        },
    }
    devices = await _checked(settings, {"type": "FeatureCollection", "features": [feature]})
    try:
        created, after = await provisioning.put_device(pool, devices[0], actor=_actor(key))
    except ConfigurationError as exc:
        raise _refused(exc) from None
    return DeviceProvisioned(created=created, device=after)


_FEATURE = Body(
    description=(
        "a GeoJSON Feature of the fleet format (geometry and properties; the id and kind come "
        "from the path)"
    ),
    examples=[
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-7.5898, 33.5731]},
            "properties": {"zone": "maarif", "capacity_l": 1100, "depth_mm": 1200},
        }
    ],
)


@router.put("/v1/containers/{container_id}", response_model=DeviceProvisioned, responses={422: {}})
async def put_container(
    pool: PoolDep,
    settings: SettingsDep,
    key: AdminKey,
    answers: ContainerAnswersDep,
    container_id: DeviceId,
    body: Annotated[dict[str, Any], _FEATURE],
) -> DeviceProvisioned:
    """Create or update a container: position, zone, size, gateway, sensor."""
    provisioned = await _put("container", container_id, body, pool, settings, key)
    answers.forget()
    return provisioned


@router.put("/v1/parking/spots/{spot_id}", response_model=DeviceProvisioned, responses={422: {}})
async def put_spot(
    pool: PoolDep,
    settings: SettingsDep,
    key: AdminKey,
    spot_id: DeviceId,
    body: Annotated[dict[str, Any], _FEATURE],
) -> DeviceProvisioned:
    """Create or update a parking spot: position, zone, category, gateway, sensor."""
    return await _put("spot", spot_id, body, pool, settings, key)


@router.delete("/v1/containers/{container_id}", status_code=204, responses={404: {}})
async def delete_container(
    pool: PoolDep, key: AdminKey, answers: ContainerAnswersDep, container_id: DeviceId
) -> None:
    """Remove a container with its latest state and sensor binding; its readings stay."""
    await provisioning.delete_device(pool, "container", container_id, actor=_actor(key))
    answers.forget()


@router.delete("/v1/parking/spots/{spot_id}", status_code=204, responses={404: {}})
async def delete_spot(pool: PoolDep, live: LiveSpotsDep, key: AdminKey, spot_id: DeviceId) -> None:
    """Remove a parking spot with its latest state and sensor binding; its readings stay."""
    await provisioning.delete_device(pool, "spot", spot_id, actor=_actor(key))
    if live is not None:
        live.resync_soon()


async def _gateway(pool: asyncpg.Pool, gateway_id: str) -> gateways.Gateway:
    for gateway in await gateways.list_gateways(pool):
        if gateway.id == gateway_id:
            return gateway
    raise NotFoundError(what="gateway", key=gateway_id)


async def _sync_broker(pool: asyncpg.Pool, settings: Settings) -> bool:
    users = await gateways.broker_users(pool)
    try:
        return await asyncio.to_thread(write_broker_files, settings, users)
    except ConfigurationError as exc:
        raise _refused(exc) from None


def _public(gateway: gateways.Gateway) -> dict[str, Any]:
    return dataclasses.asdict(gateway)


def _audited(gateway: gateways.Gateway) -> dict[str, Any]:
    public = _public(gateway)
    public.pop("last_seen_at")
    public["created_at"] = gateway.created_at.isoformat()
    return public


@router.get("/v1/gateways", response_model=list[GatewayPublic])
async def list_gateways(pool: PoolDep) -> list[GatewayPublic]:
    """Every gateway, without passwords."""
    return [GatewayPublic(**_public(g)) for g in await gateways.list_gateways(pool)]


@router.post(
    "/v1/gateways", response_model=GatewayCreated, status_code=201, responses={409: {}, 422: {}}
)
async def add_gateway(
    pool: PoolDep, settings: SettingsDep, key: AdminKey, body: GatewayCreate
) -> GatewayCreated:
    """Register a gateway; the answer is the only time its broker password is shown."""
    try:
        password = await gateways.add_gateway(
            pool, body.id, name=body.name, lorawan_application=body.lorawan_application
        )
    except ConfigurationError as exc:
        # The id is checked by the schema: what is left is a clash with a registered gateway.
        raise ConflictError(str(exc).replace("`citytel gateways rotate`", "a rotation")) from None
    gateway = await _gateway(pool, body.id)
    change = audit.Change(_actor(key), "gateway.add", "gateway", body.id, after=_audited(gateway))
    await audit.record_committed(pool, change)
    updated = await _sync_broker(pool, settings)
    return GatewayCreated(**_public(gateway), broker_updated=updated, password=password)


@router.post(
    "/v1/gateways/{gateway_id}/disable",
    response_model=GatewayPublic,
    responses={404: {}, 422: {}},
)
async def disable_gateway(
    pool: PoolDep, settings: SettingsDep, key: AdminKey, gateway_id: GatewayId
) -> GatewayPublic:
    """Disable a gateway: the broker refuses it; its devices stay bound to it."""
    before = await _gateway(pool, gateway_id)
    await gateways.disable_gateway(pool, gateway_id)
    after = await _gateway(pool, gateway_id)
    change = audit.Change(
        _actor(key), "gateway.disable", "gateway", gateway_id, _audited(before), _audited(after)
    )
    await audit.record_committed(pool, change)
    updated = await _sync_broker(pool, settings)
    return GatewayPublic(**_public(after), broker_updated=updated)


@router.get("/v1/audit", response_model=AuditPage)
async def list_audit(
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> AuditPage:
    """Changes made through the API, newest first."""
    entries = await audit.list_entries(pool, limit=limit, offset=offset)
    return AuditPage(
        items=[AuditEntryPublic(**dataclasses.asdict(e)) for e in entries],
        limit=limit,
        offset=offset,
    )
