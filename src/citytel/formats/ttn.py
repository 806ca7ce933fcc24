"""The Things Stack (v3) MQTT integration: ``v3/{app}[@{tenant}]/devices/{device}/{event}``."""

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

UPLINK_EVENT = "up"


def ttn_subscriptions(share_group: str | None) -> list[str]:
    """The subscriptions that receive the uplinks of every application the client may read.

    ``+`` matches a whole level, so one filter covers ``{app}@{tenant}`` (The Things Network,
    Cloud, Enterprise) and plain ``{app}`` (Open Source). Share only where the topics reach a
    broker that supports shared subscriptions (a bridge into our own Mosquitto); The Things
    Stack's MQTT server speaks MQTT 3.1.1 and does not document them.
    """
    return [share(f"v3/+/devices/+/{UPLINK_EVENT}", share_group)]


def parse_ttn_topic(topic: str) -> LorawanTopic:
    """Split a The Things Stack event topic and classify its event.

    ``up`` is an uplink. Everything else (``join``, ``down/queued``, ``down/sent`` and the other
    ``down/*``, ``service/data``, ``location/solved``) is ignored: not readings, and not
    refused either, so that an event type added by a later server version does not fill the
    dead-letter store.

    Raises:
        RejectedMessage: ``bad_topic`` when the topic is not ``v3/{app}/devices/{device}/...``.
    """
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "v3" or parts[2] != "devices" or not all(parts[:4]):
        detail = f"topic {topic!r} is not v3/{{app}}[@{{tenant}}]/devices/{{device}}/{{event}}"
        raise RejectedMessage(Reason.BAD_TOPIC, detail)
    application, _, tenant = parts[1].partition("@")
    event = "/".join(parts[4:])
    kind = EventKind.UPLINK if event == UPLINK_EVENT else EventKind.IGNORED
    return LorawanTopic(application, tenant or None, parts[3], event, kind)


def decode_ttn(topic: str, payload: bytes, *, now: datetime) -> Uplink | None:
    """Turn a The Things Stack message into an :class:`Uplink`; ``None`` for other events.

    ``now`` is used only when the envelope carries no time at all.

    Raises:
        RejectedMessage: a malformed topic or envelope, with the reason and what is wrong.
    """
    address = parse_ttn_topic(topic)
    if address.kind is not EventKind.UPLINK:
        return None
    body = load_envelope(payload, "The Things Stack uplink")
    device_id = required_str(body, "end_device_ids.device_id")
    check_same("device", address.device, device_id)
    application = optional_str(body, "end_device_ids.application_ids.application_id")
    if application is not None:
        check_same("application", address.application, application)
    message = dig(body, "uplink_message")
    if not isinstance(message, dict):
        detail = "required object 'uplink_message' is missing"
        raise RejectedMessage(Reason.MISSING_FIELD, detail)
    f_cnt, f_port = frame_counters(message, "f_cnt", "f_port")
    eui = optional_str(body, "end_device_ids.dev_eui")
    if eui is not None:
        eui = dev_eui(eui, "end_device_ids.dev_eui")
    return Uplink(
        network="ttn",
        application=address.application,
        tenant=address.tenant,
        device_id=device_id,
        dev_eui=eui,
        received_at=first_time(_times(body, message), now),
        f_cnt=f_cnt,
        f_port=f_port,
        raw=payload_bytes(message, "frm_payload"),
        network_decoded=decoded_object(
            message.get("decoded_payload"), "uplink_message.decoded_payload"
        ),
    )


def _times(body: dict[str, Any], message: dict[str, Any]) -> list[tuple[str, Any]]:
    # The application server's time first: it is the one clock every uplink has, and the
    # same for every gateway that heard the frame.
    return [
        ("received_at", body.get("received_at")),
        ("uplink_message.received_at", message.get("received_at")),
        *rx_times(message.get("rx_metadata"), "time"),
    ]
