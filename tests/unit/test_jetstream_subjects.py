"""MQTT topics as nats-server's MQTT listener turns them into subjects, and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citytel.config import Settings
from citytel.errors import ConfigurationError
from citytel.ingest.jetstream import (
    server_urls,
    stream_subjects,
    subject_to_topic,
    topic_to_subject,
)


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("citytel/v1/gw-1/waste/WC-1", "citytel.v1.gw-1.waste.WC-1"),
        ("citytel/v1/gw.1/waste/WC-1", "citytel.v1.gw//1.waste.WC-1"),
        ("/a", "/.a"),
        ("a//b", "a./.b"),
        ("citytel/v1/+/+/+", "citytel.v1.*.*.*"),
        ("application/#", "application.>"),
    ],
)
def test_topic_to_subject(topic: str, subject: str) -> None:
    """Levels become tokens; dots, empty levels and wildcards as the server maps them."""
    assert topic_to_subject(topic) == subject


levels = st.text(st.characters(exclude_characters="/+#\x00 ", codec="utf-8"), max_size=6)


@given(st.lists(levels, min_size=1, max_size=6).map("/".join))
def test_a_topic_survives_the_round_trip(topic: str) -> None:
    """The pipeline sees the topic the gateway published, whatever its dots and empty levels."""
    assert subject_to_topic(topic_to_subject(topic)) == topic


def test_stream_subjects_cover_the_native_and_lorawan_trees() -> None:
    """The stream captures what ingest subscribes to on MQTT, as subjects."""
    settings = Settings(mqtt_topic_root="city/v1")
    assert stream_subjects(settings) == [
        "city.v1.*.*.*",
        "v3.*.devices.*.up",
        "application.*.device.*.event.*",
    ]
    native_only = Settings(mqtt_topic_root="city/v1", mqtt_lorawan=False)
    assert stream_subjects(native_only) == ["city.v1.*.*.*"]


def test_a_bad_nats_url_names_the_setting() -> None:
    """A URL that is not nats:// is refused with the setting to fix."""
    with pytest.raises(ConfigurationError, match="CITYTEL_NATS_URL"):
        server_urls(Settings(nats_url="http://n1:4222"))
    both = Settings(nats_url="nats://n1:4222, nats://n2:4222")
    assert server_urls(both) == ["nats://n1:4222", "nats://n2:4222"]
