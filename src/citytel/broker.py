"""Mosquitto's password and ACL files, generated from the gateway registry.

citytel writes both files whole (to a temporary file, then renamed over the old one) and asks
Mosquitto to reload them with SIGHUP. The password hashes are Mosquitto 2's own format
(``$7$``: PBKDF2-HMAC-SHA512, as ``mosquitto_passwd`` writes them), so the broker checks them
without any plugin. Pure functions apart from :func:`write_broker_files` and :func:`reload`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from citytel.config import Settings
from citytel.errors import ConfigurationError
from citytel.formats.chirpstack import chirpstack_subscriptions
from citytel.formats.ttn import ttn_subscriptions

log = logging.getLogger(__name__)

# Mosquitto's own default. The passwords citytel hands out are 192 random bits, which no
# number of iterations makes stronger or weaker; a low count keeps each CONNECT cheap.
_ITERATIONS = 101
_SALT_BYTES = 12


@dataclass(frozen=True, slots=True)
class BrokerUser:
    """One gateway as the broker sees it: its user name, password hash and what it may write."""

    username: str
    password_hash: str
    lorawan_application: str | None = None


def new_password() -> str:
    """A random password for a gateway (shown once, stored only hashed)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``password`` hashed as ``mosquitto_passwd`` does (``$7${iterations}$salt$hash``)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${_ITERATIONS}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash."""
    try:
        _, version, iterations, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        found = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    return version == "7" and secrets.compare_digest(found, expected)


def password_file(ingest: BrokerUser, gateways: Sequence[BrokerUser]) -> str:
    """The text of Mosquitto's ``password_file``."""
    lines = [f"{user.username}:{user.password_hash}" for user in (ingest, *gateways)]
    return "\n".join(lines) + "\n"


def acl_file(settings: Settings, ingest_username: str, gateways: Sequence[BrokerUser]) -> str:
    """The text of Mosquitto's ``acl_file``: what is not granted here is refused.

    The ingest identity may read the native tree and, when LoRaWAN is on, the network servers'
    uplink topics it subscribes to; each gateway may only write under its own prefix (and, for
    a network-server application, its ChirpStack or The Things Stack application tree). Nobody
    else may read readings.
    """
    root = settings.mqtt_topic_root
    reads = [f"{root}/+/+/+"]
    if settings.mqtt_lorawan:
        reads += ttn_subscriptions(None) + chirpstack_subscriptions(None)
    lines = [
        "# Written by citytel from its gateway registry (`citytel gateways`): edits are lost.",
        "",
        f"user {ingest_username}",
        *(f"topic read {topic}" for topic in reads),
    ]
    for gateway in gateways:
        lines += ["", f"user {gateway.username}", f"topic write {root}/{gateway.username}/#"]
        if gateway.lorawan_application:
            app = gateway.lorawan_application
            lines += [f"topic write application/{app}/#", f"topic write v3/{app}/#"]
    return "\n".join(lines) + "\n"


def ingest_user(settings: Settings) -> BrokerUser:
    """The ingest identity, from the ingest process's own MQTT settings.

    Raises:
        ConfigurationError: CITYTEL_MQTT_USERNAME or CITYTEL_MQTT_PASSWORD is not set.
    """
    if not settings.mqtt_username or settings.mqtt_password is None:
        message = (
            "CITYTEL_MQTT_USERNAME and CITYTEL_MQTT_PASSWORD must be set to the ingest "
            "identity's credentials: the broker files citytel writes include it"
        )
        raise ConfigurationError(message)
    password = settings.mqtt_password.get_secret_value()
    return BrokerUser(settings.mqtt_username, hash_password(password))


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    # Mosquitto reads them as its own user, whoever wrote them. Readable hashes of 192-bit random
    # passwords give nothing away; keep the directory itself private to the broker's host.
    temporary.chmod(0o644)
    temporary.replace(path)


def write_broker_files(settings: Settings, gateways: Sequence[BrokerUser]) -> bool:
    """Write the password and ACL files and reload the broker; False when none is configured.

    Raises:
        ConfigurationError: only one of the two files is configured, or the ingest identity is
            missing.
    """
    passwd, acl = settings.broker_password_file, settings.broker_acl_file
    if passwd is None and acl is None:
        return False
    if passwd is None or acl is None:
        message = "set both CITYTEL_BROKER_PASSWORD_FILE and CITYTEL_BROKER_ACL_FILE, or neither"
        raise ConfigurationError(message)
    ingest = ingest_user(settings)
    clash = [g.username for g in gateways if g.username == ingest.username]
    if clash:
        message = f"gateway {clash[0]!r} has the ingest identity's user name; rename one of them"
        raise ConfigurationError(message)
    try:
        _replace(passwd, password_file(ingest, gateways))
        _replace(acl, acl_file(settings, ingest.username, gateways))
    except OSError as exc:
        message = f"cannot write the broker files ({exc}); check CITYTEL_BROKER_*_FILE"
        raise ConfigurationError(message) from exc
    reload(settings)
    return True


def reload(settings: Settings) -> bool:
    """Ask Mosquitto to re-read its files (SIGHUP to CITYTEL_BROKER_PID_FILE's process).

    Returns False, after saying what to do, when no pid file is configured.
    """
    if settings.broker_pid_file is None:
        log.warning(
            "broker files written; reload Mosquitto so that they apply (send it SIGHUP, e.g. "
            "`docker compose kill -s SIGHUP mqtt`), or set CITYTEL_BROKER_PID_FILE"
        )
        return False
    try:
        pid = int(settings.broker_pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        message = f"cannot signal the broker from CITYTEL_BROKER_PID_FILE ({exc})"
        raise ConfigurationError(message) from exc
    return True
