"""From an :class:`Uplink` to decoded fields and outcomes, for one device profile.

The network server's own decoded object is preferred when it holds fields the profile reads:
the operator configured that formatter on purpose, and some models (Dragino LDDS75) are only
ever decoded there. Otherwise the profile's codec reads the raw bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from citytel.decoding.codecs import CODECS
from citytel.decoding.profiles import MM_PER_UNIT, DeviceProfile
from citytel.domain import HealthEvent, HealthKind, Outcome, Reason
from citytel.errors import RejectedMessage
from citytel.formats.envelope import Uplink

_NUMBER_WITH_UNIT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z°℃%]*)\s*$")
_VOLTS_PER_UNIT = {"v": 1.0, "mv": 0.001}
_CELSIUS = {"c", "°c", "℃", "degc", "celsius"}


def decode_fields(profile: DeviceProfile, uplink: Uplink) -> dict[str, Any]:
    """The decoded fields of an uplink: the network server's object if usable, else the codec's.

    Raises:
        RejectedMessage: ``undecodable`` when neither source yields fields for this profile.
    """
    if uplink.network_decoded is not None:
        fields = network_fields(profile, uplink.network_decoded)
        if fields:
            return fields
    if profile.codec is None:
        what = "has none of its fields" if uplink.network_decoded else "is absent"
        detail = (
            f"profile {profile.model} is decoded by the network server only, and its decoded "
            f"object {what}; configure the device's payload formatter there"
        )
        raise RejectedMessage(Reason.UNDECODABLE, detail)
    if uplink.raw is None:
        detail = "uplink carries no application payload to decode"
        raise RejectedMessage(Reason.UNDECODABLE, detail)
    if uplink.f_port is None:
        detail = f"uplink carries {len(uplink.raw)} payload bytes but no fPort"
        raise RejectedMessage(Reason.UNDECODABLE, detail)
    return CODECS[profile.codec](uplink.f_port, uplink.raw)


def interpret_uplink(
    profile: DeviceProfile,
    uplink: Uplink,
    *,
    device_id: str,
    depth_mm: int | None = None,
    full_mark_mm: int | None = None,
) -> tuple[Outcome, ...]:
    """Decode an uplink with ``profile`` and interpret it as readings and health events.

    A ChirpStack status event (no payload, a battery level) is a ``battery`` health event.

    Raises:
        RejectedMessage: as :func:`decode_fields` and :meth:`DeviceProfile.interpret`.
    """
    if uplink.raw is None and uplink.network_decoded is None and uplink.battery_pct is not None:
        event = HealthEvent(
            device_kind=profile.device_kind,
            device_id=device_id,
            ts=uplink.received_at,
            event=HealthKind.BATTERY,
            battery_pct=uplink.battery_pct,
            detail="battery level reported to the network server (LoRaWAN DevStatusAns)",
        )
        return (event,)
    return profile.interpret(
        decode_fields(profile, uplink),
        device_id=device_id,
        ts=uplink.received_at,
        depth_mm=depth_mm,
        full_mark_mm=full_mark_mm,
    )


def network_fields(profile: DeviceProfile, decoded: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``profile`` reads, found in a network server's decoded object.

    Decentlab-style ``{"value", "unit"}`` objects are unwrapped, strings with a unit
    (``"1234 mm"``) are parsed, and units are converted to the profile's; strings without a
    number (``"No Sensor"``) are kept as they are.

    Raises:
        RejectedMessage: ``undecodable`` for a unit that does not fit the field.
    """
    fields: dict[str, Any] = {}
    for name, role in profile.field_roles().items():
        for source in profile.network.aliases.get(name, [name]):
            if source in decoded:
                fields[name] = _convert(profile, source, decoded[source], role)
                break
    return fields


def _convert(profile: DeviceProfile, source: str, value: Any, role: str) -> Any:
    unit = ""
    if isinstance(value, dict) and "value" in value:
        unit = str(value.get("unit") or "")
        value = value["value"]
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.match(value)
        if match is None:
            return value
        value = float(match[1])
        unit = match[2] or unit
    if not unit or role == "plain" or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    factor = _factor(profile, role, unit.lower())
    if factor is None:
        detail = f"network decoded {source!r} has unit {unit!r}, which does not fit a {role}"
        raise RejectedMessage(Reason.UNDECODABLE, detail)
    return value * factor


def _factor(profile: DeviceProfile, role: str, unit: str) -> float | None:
    if role == "distance" and profile.level is not None and unit in MM_PER_UNIT:
        return MM_PER_UNIT[unit] / MM_PER_UNIT[profile.level.distance_unit]
    if role == "volt":
        return _VOLTS_PER_UNIT.get(unit)
    if role == "percent" and unit == "%":
        return 1.0
    if role == "temperature" and unit in _CELSIUS:
        return 1.0
    return None
