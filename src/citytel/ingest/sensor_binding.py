"""LoRaWAN uplinks to readings: find the registered sensor, then read it with its profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from citytel.decoding.device_payload import interpret_uplink
from citytel.decoding.profiles import DeviceProfile, profile_for
from citytel.domain import (
    DeadLetter,
    DecodedMessage,
    HealthEvent,
    ParkingReading,
    Reading,
    Reason,
    WasteReading,
)
from citytel.errors import RejectedMessage
from citytel.formats.envelope import Uplink
from citytel.formats.native import check_timestamp_window
from citytel.storage.sensors import SensorBinding, SensorIndex


@dataclass(frozen=True, slots=True)
class PendingUplink:
    """An uplink whose envelope was read, waiting for its sensor's registry entry."""

    uplink: Uplink
    topic: str
    payload: bytes
    received_at: datetime


def _unknown_device(uplink: Uplink) -> RejectedMessage:
    names = [f"DevEUI {uplink.dev_eui}" if uplink.dev_eui else "", uplink.device_id or ""]
    who = " / ".join(n for n in names if n) or "a device without identifiers"
    detail = (
        f"no sensor registered for {who} ({uplink.network}); add it to the fleet with its "
        "device_model and dev_eui, import it, then replay this dead letter"
    )
    return RejectedMessage(Reason.UNKNOWN_DEVICE, detail)


def _wrong_application(uplink: Uplink, binding: SensorBinding) -> RejectedMessage:
    who = f"DevEUI {uplink.dev_eui}" if uplink.dev_eui else f"device {uplink.device_id}"
    bound = (
        f"application {binding.lorawan_application!r}"
        if binding.lorawan_application is not None
        else "a gateway of its own, not a network-server application"
    )
    detail = (
        f"{who} ({uplink.network}) arrived through application {uplink.application!r}, but "
        f"{binding.device_kind.value} device {binding.device_id!r} is bound to gateway "
        f"{binding.gateway_id!r} ({bound}); if the device moved, rebind it and replay this "
        "dead letter"
    )
    return RejectedMessage(Reason.WRONG_GATEWAY, detail)


def application_names(uplink: Uplink) -> tuple[str, str]:
    """The names a gateway may register the uplink's application under: bare or ``@tenant``."""
    return uplink.application, f"{uplink.application}@{uplink.tenant}"


def _may_speak_for(uplink: Uplink, binding: SensorBinding, registered: frozenset[str]) -> bool:
    # A device bound to an application's gateway is heard through that application only. One
    # bound to a gateway without an application may not be reported by an application that
    # another gateway stands for (that application could otherwise forge every such device);
    # through an application nobody registered, only the broker's ACL guards it.
    names = application_names(uplink)
    if binding.lorawan_application is not None:
        return binding.lorawan_application in names
    return not registered.intersection(names)


def interpret(
    pending: Sequence[PendingUplink],
    sensors: SensorIndex,
    profiles: Mapping[str, DeviceProfile],
    *,
    now: datetime,
    max_future: timedelta,
    max_age: timedelta | None = None,
) -> tuple[list[DecodedMessage], list[DeadLetter]]:
    """Readings and health events of each uplink, or a dead letter saying why there are none."""
    decoded: list[DecodedMessage] = []
    dead: list[DeadLetter] = []
    for item in pending:
        uplink = item.uplink
        try:
            binding = sensors.find(uplink.dev_eui, uplink.device_id)
            if binding is None:
                raise _unknown_device(uplink)
            if not _may_speak_for(uplink, binding, sensors.applications):
                raise _wrong_application(uplink, binding)
            check_timestamp_window(uplink.received_at, now, max_future, max_age=max_age)
            outcomes = interpret_uplink(
                profile_for(profiles, binding.model),
                uplink,
                device_id=binding.device_id,
                depth_mm=binding.depth_mm,
                full_mark_mm=binding.full_mark_mm,
            )
        except RejectedMessage as exc:
            dead.append(
                DeadLetter(item.topic, item.payload, exc.reason, exc.detail, item.received_at)
            )
            continue
        readings: list[Reading] = [
            o for o in outcomes if isinstance(o, WasteReading | ParkingReading)
        ]
        events = [o for o in outcomes if isinstance(o, HealthEvent)]
        decoded.append(
            DecodedMessage(
                kind=binding.device_kind,
                device_id=binding.device_id,
                readings=tuple(readings),
                topic=item.topic,
                payload=item.payload,
                received_at=item.received_at,
                events=tuple(events),
                f_cnt=uplink.f_cnt,
            )
        )
    return decoded, dead
