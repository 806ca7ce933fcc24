"""The broker files citytel writes: Mosquitto's password hashes and the ACL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from citytel.broker import BrokerUser, acl_file, hash_password, ingest_user, verify_password
from citytel.config import Settings
from citytel.errors import ConfigurationError


def test_hashes_are_mosquittos_pbkdf2_format() -> None:
    """A hash is ``$7$101$salt$digest`` and verifies its own password only."""
    stored = hash_password("s3cret")
    assert stored.startswith("$7$101$")
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    assert hash_password("s3cret") != stored  # a new salt each time


def test_a_hash_written_by_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    """Our reading of the format agrees with Mosquitto's own tool (installed with Mosquitto)."""
    path = tmp_path / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(path), "gw-1", "pw-1"], check=True)
    _, stored = path.read_text().strip().split(":", 1)
    assert verify_password("pw-1", stored)
    assert not verify_password("pw-2", stored)


def test_the_acl_confines_each_gateway_to_its_prefix() -> None:
    """Gateways write under their own prefix only; the ingest identity reads the trees it needs."""
    settings = Settings(mqtt_topic_root="citytel/v1")
    text = acl_file(
        settings,
        "citytel-ingest",
        [BrokerUser("gw-1", "h"), BrokerUser("cs-app", "h", lorawan_application="app-1")],
    )
    blocks = [block.splitlines() for block in text.split("\n\n")[1:]]
    assert blocks == [
        [
            "user citytel-ingest",
            "topic read citytel/v1/+/+/+",
            "topic read v3/+/devices/+/up",
            "topic read application/+/device/+/event/+",
        ],
        ["user gw-1", "topic write citytel/v1/gw-1/#"],
        [
            "user cs-app",
            "topic write citytel/v1/cs-app/#",
            "topic write application/app-1/#",
            "topic write v3/app-1/#",
        ],
    ]
    assert "pattern" not in text


def test_the_ingest_identity_must_be_configured() -> None:
    """Without CITYTEL_MQTT_USERNAME/PASSWORD the files would lock ingest out: refused, named."""
    with pytest.raises(ConfigurationError, match="CITYTEL_MQTT_USERNAME"):
        ingest_user(Settings(mqtt_username=None))
