"""The MQTT settings are checked at start-up, naming the variable and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from citytel.config import Settings


@pytest.mark.parametrize(
    "url",
    ["http://broker:1883", "broker:1883", "mqtt://", "mqtt://broker:notaport", "mqtt://b:70000"],
)
def test_malformed_broker_url_is_refused_naming_the_variable(url: str) -> None:
    """A URL the client cannot use fails when the settings are built, not at the first connect."""
    with pytest.raises(ValidationError, match="CITYTEL_MQTT_URL must look like mqtt://"):
        Settings(mqtt_url=url)


@pytest.mark.parametrize(
    ("url", "host_port"),
    [
        ("mqtt://broker", ("broker", 1883)),
        ("mqtt://broker:1884", ("broker", 1884)),
    ],
)
def test_broker_url_default_ports(url: str, host_port: tuple[str, int]) -> None:
    """Plain MQTT defaults to port 1883."""
    assert Settings(mqtt_url=url).mqtt_host_port == host_port


def test_keepalive_fits_in_two_bytes() -> None:
    """A keepalive above 65535 s cannot be sent in CONNECT: refused at start-up."""
    with pytest.raises(ValidationError, match="mqtt_keepalive_s"):
        Settings(mqtt_keepalive_s=70_000)
