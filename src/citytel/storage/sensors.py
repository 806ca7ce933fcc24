"""Which registered container or spot a LoRaWAN device is."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from citytel.domain import DeviceKind
from citytel.storage import sql
from citytel.storage.pool import connection


@dataclass(frozen=True, slots=True)
class SensorBinding:
    """A sensor's registry entry: what it measures, where, and how to read it."""

    device_kind: DeviceKind
    device_id: str
    model: str
    dev_eui: str | None
    network_device_id: str | None
    depth_mm: int | None
    full_mark_mm: int | None
    gateway_id: str = "default"
    lorawan_application: str | None = None
    """The network-server application the device's gateway stands for; ``None``: not bound."""


@dataclass(frozen=True)
class SensorIndex:
    """Bindings by DevEUI and by network device id, for one batch."""

    by_eui: dict[str, SensorBinding]
    by_device_id: dict[str, SensorBinding]
    applications: frozenset[str] = frozenset()
    """Those of the batch's network-server applications that a registered gateway stands for."""

    def find(self, dev_eui: str | None, device_id: str | None) -> SensorBinding | None:
        """The binding for a device, by DevEUI first (globally unique), then by device id."""
        if dev_eui is not None and dev_eui in self.by_eui:
            return self.by_eui[dev_eui]
        if device_id is not None:
            return self.by_device_id.get(device_id)
        return None


async def resolve_sensors(
    pool: asyncpg.Pool,
    dev_euis: set[str],
    device_ids: set[str],
    applications: set[str] | None = None,
) -> SensorIndex:
    """Look up the bindings of the given devices, and which ``applications`` are registered."""
    if not dev_euis and not device_ids:
        return SensorIndex({}, {})
    async with connection(pool) as conn:
        rows = await conn.fetch(sql.RESOLVE_SENSORS, list(dev_euis), list(device_ids))
        registered = (
            await conn.fetch(sql.REGISTERED_APPLICATIONS, list(applications))
            if applications
            else []
        )
    bindings = [
        SensorBinding(
            device_kind=DeviceKind(row["device_kind"]),
            device_id=row["device_id"],
            model=row["model"],
            dev_eui=row["dev_eui"],
            network_device_id=row["network_device_id"],
            depth_mm=row["depth_mm"],
            full_mark_mm=row["full_mark_mm"],
            gateway_id=row["gateway_id"],
            lorawan_application=row["lorawan_application"],
        )
        for row in rows
    ]
    return SensorIndex(
        by_eui={b.dev_eui: b for b in bindings if b.dev_eui},
        by_device_id={b.network_device_id: b for b in bindings if b.network_device_id},
        applications=frozenset(row["lorawan_application"] for row in registered),
    )
