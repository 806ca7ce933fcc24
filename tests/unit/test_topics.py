"""citytel's topic layout."""

from __future__ import annotations

import pytest

from citytel.domain import DeviceKind, Reason
from citytel.errors import RejectedMessage
from citytel.formats.topics import native_subscription, native_topic, parse_native_topic

ROOT = "citytel/v1"


def test_round_trip() -> None:
    """A topic built for a device parses back to the same gateway, kind and id."""
    topic = native_topic(ROOT, "gw-7", DeviceKind.PARKING, "CAS-PS-00012")
    address = parse_native_topic(ROOT, topic)
    assert (address.gateway, address.kind, address.device_id) == (
        "gw-7",
        DeviceKind.PARKING,
        "CAS-PS-00012",
    )


def test_shared_subscription() -> None:
    """The subscription is shared by group and covers every gateway, kind and device."""
    assert native_subscription(ROOT, "citytel") == "$share/citytel/citytel/v1/+/+/+"
    assert native_subscription(ROOT, None) == "citytel/v1/+/+/+"


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("other/v1/gw/waste/c1", "not under"),
        ("citytel/v1/gw/waste", "must be"),
        ("citytel/v1/gw/waste/c1/extra", "must be"),
        ("citytel/v1/gw/lamps/c1", "unknown device kind 'lamps'"),
        ("citytel/v1/gw/waste/bad id", "device id 'bad id'"),
        ("citytel/v1//waste/c1", "gateway ''"),
    ],
)
def test_bad_topics(topic: str, words: str) -> None:
    """A topic that does not follow the layout is refused as bad_topic, saying why."""
    with pytest.raises(RejectedMessage) as info:
        parse_native_topic(ROOT, topic)
    assert info.value.reason is Reason.BAD_TOPIC
    assert words in info.value.detail
