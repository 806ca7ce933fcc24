"""ChirpStack MQTT integration: ``application/{app}/device/{dev_eui}/event/{event}``.

ChirpStack v4 and v3 share the topic; the body tells them apart. v4 nests the device under
``deviceInfo`` and sends the decoded payload as ``object``; v3 is flat, sends ``devEUI`` as
base64 (default JSON marshaler) or hex (legacy marshaler), and the decoded payload as a JSON
document inside the string ``objectJSON``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from citytel.domain import Reason
from citytel.errors import RejectedMessage
from citytel.formats.envelope import (
    EventKind,
    LorawanTopic,
    Uplink,
    check_same,
    decoded_object,
    dev_eui,
    dig,
    first_time,
    frame_counters,
    load_envelope,
    optional_str,
    payload_bytes,
    required_str,
    rx_times,
    share,
)

_KINDS = {"up": EventKind.UPLINK, "status": EventKind.STATUS}


def chirpstack_subscriptions(share_group: str | None) -> list[str]:
    """The subscriptions that receive every device event of every application."""
    return [share("application/+/device/+/event/+", share_group)]


def parse_chirpstack_topic(topic: str) -> LorawanTopic:
    """Split a ChirpStack event topic and classify its event.

    ``up`` is an uplink and ``status`` a battery report; ``join``, ``ack``, ``txack``, ``log``,
    ``location``, ``integration`` and any later event type are ignored, as are ``command/*``
    topics (downlinks on their way to a device).

    Raises:
        RejectedMessage: ``bad_topic`` when the topic is not
            ``application/{app}/device/{dev_eui}/event/{event}``.
    """
    parts = topic.split("/")
    if (
        len(parts) != 6
        or parts[0] != "application"
        or parts[2] != "device"
        or parts[4] not in {"event", "command"}
        or not all(parts)
    ):
        detail = f"topic {topic!r} is not application/{{app}}/device/{{dev_eui}}/event/{{event}}"
        raise RejectedMessage(Reason.BAD_TOPIC, detail)
    _, application, _, device, channel, event = parts
    kind = _KINDS.get(event, EventKind.IGNORED) if channel == "event" else EventKind.IGNORED
    return LorawanTopic(application, None, device, event, kind)


def decode_chirpstack(topic: str, payload: bytes, *, now: datetime) -> Uplink | None:
    """Turn a ChirpStack v4 or v3 message into an :class:`Uplink`; ``None`` for other events.

    A status event becomes an :class:`Uplink` without payload that carries ``battery_pct``;
    one without a battery level (mains power, or level unavailable) is ``None``. ``now`` is
    used only when the envelope carries no time at all, as v3 status events never do.

    Raises:
        RejectedMessage: a malformed topic or envelope, with the reason and what is wrong.
    """
    address = parse_chirpstack_topic(topic)
    if address.kind is EventKind.IGNORED:
        return None
    body = load_envelope(payload, f"ChirpStack {address.event} event")
    if isinstance(body.get("deviceInfo"), dict):
        uplink = _v4(body, address, now)
    elif "devEUI" in body or "applicationID" in body:
        uplink = _v3(body, address, now)
    else:
        detail = "body has neither 'deviceInfo' (ChirpStack v4) nor 'devEUI' (ChirpStack v3)"
        raise RejectedMessage(Reason.MISSING_FIELD, detail)
    if address.kind is EventKind.STATUS and uplink.battery_pct is None:
        return None
    return uplink


def _v4(body: dict[str, Any], address: LorawanTopic, now: datetime) -> Uplink:
    eui = dev_eui(required_str(body, "deviceInfo.devEui"), "deviceInfo.devEui")
    application = required_str(body, "deviceInfo.applicationId")
    _check_address(address, application, eui)
    times = [("time", body.get("time")), *rx_times(body.get("rxInfo"), "nsTime", "gwTime")]
    f_cnt, f_port = frame_counters(body, "fCnt", "fPort")
    return Uplink(
        network="chirpstack_v4",
        application=application,
        device_id=optional_str(body, "deviceInfo.deviceName"),
        dev_eui=eui,
        received_at=first_time(times, now),
        f_cnt=f_cnt,
        f_port=f_port,
        raw=payload_bytes(body, "data"),
        network_decoded=decoded_object(body.get("object"), "object"),
        battery_pct=_battery(body, address),
    )


def _v3(body: dict[str, Any], address: LorawanTopic, now: datetime) -> Uplink:
    eui = dev_eui(required_str(body, "devEUI"), "devEUI", base64_allowed=True)
    application = _v3_application(body)
    _check_address(address, application, eui)
    f_cnt, f_port = frame_counters(body, "fCnt", "fPort")
    return Uplink(
        network="chirpstack_v3",
        application=application,
        device_id=optional_str(body, "deviceName"),
        dev_eui=eui,
        received_at=first_time(rx_times(body.get("rxInfo"), "time"), now),
        f_cnt=f_cnt,
        f_port=f_port,
        raw=payload_bytes(body, "data"),
        network_decoded=decoded_object(body.get("objectJSON"), "objectJSON"),
        battery_pct=_battery(body, address),
    )


def _v3_application(body: dict[str, Any]) -> str:
    # The v3 JSON marshaler writes the 64-bit application id as a string; the legacy one as a
    # number. Both name the same application.
    value = body.get("applicationID")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return required_str(body, "applicationID")


def _check_address(address: LorawanTopic, application: str, eui: str) -> None:
    check_same("application", address.application, application)
    check_same("device", address.device, eui)


def _battery(body: dict[str, Any], address: LorawanTopic) -> float | None:
    if address.kind is not EventKind.STATUS:
        return None
    if body.get("externalPowerSource") or body.get("batteryLevelUnavailable"):
        return None
    # Zero values are left out of ChirpStack's JSON: a status without batteryLevel is 0 %.
    level = dig(body, "batteryLevel")
    level = 0 if level is None else level
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level <= 100:
        detail = f"batteryLevel must be a percentage from 0 to 100, not {level!r}"
        raise RejectedMessage(Reason.OUT_OF_RANGE, detail)
    return float(level)
