"""citytel's own topic layout: ``{root}/{gateway}/{waste|parking}/{device_id}``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from citytel.domain import DeviceKind, Reason
from citytel.errors import RejectedMessage

# Ids are ours to index and show in URLs: keep them to a safe, printable alphabet.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_KINDS = {kind.value: kind for kind in DeviceKind}


@dataclass(frozen=True, slots=True)
class TopicAddress:
    """Where a native message came from and which device it is about."""

    gateway: str
    kind: DeviceKind
    device_id: str


def is_valid_id(value: str) -> bool:
    """Whether ``value`` may be a gateway, container or spot id."""
    return _ID.match(value) is not None


def native_topic(root: str, gateway: str, kind: DeviceKind, device_id: str) -> str:
    """The topic a gateway publishes a device's readings on."""
    return f"{root}/{gateway}/{kind.value}/{device_id}"


def native_subscription(root: str, share_group: str | None) -> str:
    """The (shared) subscription that receives every native reading under ``root``."""
    topic = f"{root}/+/+/+"
    return f"$share/{share_group}/{topic}" if share_group else topic


def parse_native_topic(root: str, topic: str) -> TopicAddress:
    """Split a native topic into gateway, kind and device id.

    Raises:
        RejectedMessage: ``bad_topic`` when the topic is not ``{root}/{gateway}/{kind}/{id}``.
    """
    prefix = root + "/"
    if not topic.startswith(prefix):
        detail = f"topic {topic!r} is not under {root!r}"
        raise RejectedMessage(Reason.BAD_TOPIC, detail)
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3:
        detail = f"topic {topic!r} must be {root}/{{gateway}}/{{waste|parking}}/{{device_id}}"
        raise RejectedMessage(Reason.BAD_TOPIC, detail)
    gateway, kind_segment, device_id = parts
    kind = _KINDS.get(kind_segment)
    if kind is None:
        detail = f"unknown device kind {kind_segment!r} in topic; expected 'waste' or 'parking'"
        raise RejectedMessage(Reason.BAD_TOPIC, detail)
    for label, value in (("gateway", gateway), ("device id", device_id)):
        if not is_valid_id(value):
            detail = (
                f"{label} {value!r} in topic is not a valid id "
                "(1-64 characters: letters, digits, '.', '_', ':', '-')"
            )
            raise RejectedMessage(Reason.BAD_TOPIC, detail)
    return TopicAddress(gateway=gateway, kind=kind, device_id=device_id)
