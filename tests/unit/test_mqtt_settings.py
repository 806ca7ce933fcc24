"""The MQTT settings are checked at start-up, naming the variable and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from citytel.config import Settings
from citytel.errors import ConfigurationError
from citytel.ingest.mqtt import tls_context


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
        ("mqtts://broker", ("broker", 8883)),
        ("mqtts://broker:18883", ("broker", 18883)),
    ],
)
def test_broker_url_default_ports(url: str, host_port: tuple[str, int]) -> None:
    """Plain MQTT defaults to port 1883, MQTT over TLS to 8883."""
    assert Settings(mqtt_url=url).mqtt_host_port == host_port


def test_missing_tls_file_names_the_setting(tmp_path: Path) -> None:
    """A CA file that does not exist stops the client at start-up, naming the variable."""
    settings = Settings(mqtt_url="mqtts://broker", mqtt_tls_ca_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigurationError, match="CITYTEL_MQTT_TLS_CA_FILE: cannot read"):
        tls_context(settings)


def test_unreadable_certificate_names_the_setting(tmp_path: Path) -> None:
    """A client certificate that is not one is refused naming the settings."""
    junk = tmp_path / "client.pem"
    junk.write_text("not a certificate")
    settings = Settings(mqtt_url="mqtts://broker", mqtt_tls_cert_file=junk)
    with pytest.raises(ConfigurationError, match="CITYTEL_MQTT_TLS_CERT_FILE"):
        tls_context(settings)


def test_key_without_certificate_is_refused(tmp_path: Path) -> None:
    """A client key alone cannot authenticate: refused, naming both settings."""
    key = tmp_path / "client.key"
    key.write_text("key")
    settings = Settings(mqtt_url="mqtts://broker", mqtt_tls_key_file=key)
    with pytest.raises(ConfigurationError, match="CITYTEL_MQTT_TLS_CERT_FILE"):
        tls_context(settings)


def test_tls_files_without_mqtts_are_refused(tmp_path: Path) -> None:
    """TLS files with a plain mqtt:// URL would send credentials in clear: refused."""
    settings = Settings(mqtt_url="mqtt://broker", mqtt_tls_ca_file=tmp_path / "ca.pem")
    with pytest.raises(ConfigurationError, match="not mqtts://"):
        tls_context(settings)


def test_plain_url_has_no_tls_context() -> None:
    """mqtt:// without TLS settings connects in clear; mqtts:// verifies with the system CAs."""
    assert tls_context(Settings(mqtt_url="mqtt://broker")) is None
    context = tls_context(Settings(mqtt_url="mqtts://broker"))
    assert context is not None
    assert context.check_hostname


def test_keepalive_fits_in_two_bytes() -> None:
    """A keepalive above 65535 s cannot be sent in CONNECT: refused at start-up."""
    with pytest.raises(ValidationError, match="mqtt_keepalive_s"):
        Settings(mqtt_keepalive_s=70_000)
