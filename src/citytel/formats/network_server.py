"""One entry point for LoRaWAN network-server messages, whichever server sent them."""

from __future__ import annotations

from datetime import datetime

from citytel.domain import Reason
from citytel.errors import RejectedMessage
from citytel.formats.chirpstack import decode_chirpstack
from citytel.formats.envelope import Uplink
from citytel.formats.ttn import decode_ttn


def decode_lorawan(topic: str, payload: bytes, *, now: datetime) -> Uplink | None:
    """Turn a The Things Stack or ChirpStack message into an :class:`Uplink`.

    Returns ``None`` for events that are not readings (joins, downlinks, acks, logs, ...).

    Raises:
        RejectedMessage: a topic of neither server, or a malformed envelope.
    """
    if topic.startswith("v3/"):
        return decode_ttn(topic, payload, now=now)
    if topic.startswith("application/"):
        return decode_chirpstack(topic, payload, now=now)
    detail = (
        f"topic {topic!r} is neither The Things Stack (v3/...) nor ChirpStack (application/...)"
    )
    raise RejectedMessage(Reason.BAD_TOPIC, detail)


def is_lorawan_topic(topic: str) -> bool:
    """Whether a topic is a network server's rather than citytel's own."""
    return topic.startswith(("v3/", "application/"))
