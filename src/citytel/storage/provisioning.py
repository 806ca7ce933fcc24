"""Changes to the registry made over HTTP, each written to the audit table with the change.

The checks are the fleet import's own (:mod:`citytel.storage.fleet`): a device put through the
API is a fleet file of one feature.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from citytel.errors import NotFoundError
from citytel.storage import audit
from citytel.storage.fleet import Device, FleetImport, import_devices
from citytel.storage.pool import Connection, connection

_TABLES = {"container": ("containers", "container_id"), "spot": ("parking_spots", "spot_id")}

# The registry entry of a device as the audit table keeps it, with its sensor (or null).
SNAPSHOT = """
SELECT (to_jsonb(d) - 'location' - 'created_at' - 'updated_at' - 'changed_xid'
        || jsonb_build_object('lon', ST_X(d.location::geometry), 'lat', ST_Y(d.location::geometry),
                              'sensor', (SELECT jsonb_build_object(
                                             'device_model', s.model, 'dev_eui', s.dev_eui,
                                             'network_device_id', s.network_device_id)
                                         FROM sensors s WHERE s.{owner} = d.id)))::text
FROM {table} d WHERE d.id = $1
"""

DELETE = "DELETE FROM {table} WHERE id = $1"


def _query(template: str, kind: str) -> str:
    table, owner = _TABLES[kind]
    # Only our own table and column names are inserted.
    return template.format(table=table, owner=owner)


async def _snapshot(conn: Connection, kind: str, device_id: str) -> Any:
    text = await conn.fetchval(_query(SNAPSHOT, kind), device_id)
    return None if text is None else json.loads(text)


def change_report(result: FleetImport) -> dict[str, Any]:
    """What an upload changed (or would), as the audit table and the API show it."""
    changes = result.changes
    return {
        "containers": result.containers,
        "spots": result.spots,
        "added": changes.added,
        "moved": changes.moved,
        "changed": changes.changed,
        "rebound": changes.rebound,
        "unchanged": changes.unchanged,
        "not_in_file": changes.not_in_file,
        "dry_run": result.dry_run,
    }


async def upload_fleet(
    pool: asyncpg.Pool, devices: list[Device], *, actor: str, dry_run: bool
) -> FleetImport:
    """Import checked devices, all or nothing, with one audit row holding the change report.

    A dry run writes nothing, not even the audit row.

    Raises:
        ConfigurationError: as :func:`citytel.storage.fleet.import_devices`.
    """
    async with connection(pool) as conn:

        async def audited(result: FleetImport) -> None:
            change = audit.Change(actor, "fleet.upload", "fleet", None, after=change_report(result))
            await audit.record(conn, change)

        return await import_devices(conn, devices, dry_run=dry_run, then=audited)


async def put_device(pool: asyncpg.Pool, device: Device, *, actor: str) -> tuple[bool, Any]:
    """Create or update one device; whether it was created, and its entry now.

    Raises:
        ConfigurationError: as :func:`citytel.storage.fleet.import_devices`.
    """
    async with connection(pool) as conn:
        before = await _snapshot(conn, device.kind, device.id)
        after: list[Any] = []

        async def audited(_result: FleetImport) -> None:
            after.append(await _snapshot(conn, device.kind, device.id))
            action = f"{device.kind}.{'create' if before is None else 'update'}"
            change = audit.Change(actor, action, device.kind, device.id, before, after[0])
            await audit.record(conn, change)

        await import_devices(conn, [device], then=audited)
    return before is None, after[0]


async def delete_device(pool: asyncpg.Pool, kind: str, device_id: str, *, actor: str) -> Any:
    """Remove a device with its latest state and sensor binding; its readings stay.

    Returns its entry before the deletion.

    Raises:
        NotFoundError: no such device.
    """
    async with connection(pool) as conn, conn.transaction():
        before = await _snapshot(conn, kind, device_id)
        if before is None:
            raise NotFoundError(what=kind, key=device_id)
        await conn.execute(_query(DELETE, kind), device_id)
        await audit.record(conn, audit.Change(actor, f"{kind}.delete", kind, device_id, before))
    return before
