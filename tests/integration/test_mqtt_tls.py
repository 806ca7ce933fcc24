"""Ingest over TLS: a Mosquitto TLS listener with a CA, server and client certificates made here."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from citytel.config import Settings
from citytel.errors import ConfigurationError
from citytel.ingest.mqtt import MqttConsumer, probe_broker
from citytel.ingest.pipeline import run_ingest
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import (
    assert_stored_exactly,
    count_readings,
    publish_stream,
    stream,
    wait_until,
)
from tests.integration.services import Broker, free_port, wait_for_port, write_broker_config

pytestmark = pytest.mark.integration

OPENSSL = shutil.which("openssl") or "openssl"


def _openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", key, "-out", cert,
    )  # fmt: skip
    return cert, key


def issue(folder: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` for a server (localhost) or a client: (certificate, key)."""
    cert, key, request = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", key, "-out", request,
    )  # fmt: skip
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "subjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n"
        if server
        else "extendedKeyUsage = clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-extfile", extensions, "-out", cert,
    )  # fmt: skip
    return cert, key


@dataclass
class Pki:
    """The test's certificates: a CA, the broker's and the client's, and a CA nobody uses."""

    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for this module with the openssl command."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "citytel-test-ca")
    return Pki(
        ca=ca[0],
        server=issue(folder, "broker", ca, server=True),
        client=issue(folder, "citytel-ingest", ca, server=False),
        other_ca=make_ca(folder, "someone-else")[0],
    )


@dataclass
class TlsBroker:
    """The project's Mosquitto configuration plus a TLS listener requiring client certificates."""

    plain: Broker
    tls_port: int


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A private Mosquitto: the plain listener publishes, the TLS one is what ingest uses."""
    workdir = tmp_path_factory.mktemp("tls-broker")
    plain, tls_port = Broker(port=free_port(), workdir=workdir), free_port()
    config = write_broker_config(plain.port, workdir)
    config.write_text(
        config.read_text() + f"\nlistener {tls_port} 127.0.0.1\ncafile {pki.ca}\n"
        f"certfile {pki.server[0]}\nkeyfile {pki.server[1]}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([mosquitto, "-c", str(config)])
    try:
        wait_for_port(plain.port)
        wait_for_port(tls_port)
        yield TlsBroker(plain, tls_port)
    finally:
        process.terminate()
        process.wait(timeout=10)


def tls_settings(base: Settings, broker: TlsBroker, pki: Pki, **update: object) -> Settings:
    """``base`` pointed at the TLS listener with the client's certificate."""
    values: dict[str, object] = {
        # The URL names the address; the certificate names localhost: the server name says so.
        "mqtt_url": f"mqtts://127.0.0.1:{broker.tls_port}",
        "mqtt_tls_ca_file": pki.ca,
        "mqtt_tls_cert_file": pki.client[0],
        "mqtt_tls_key_file": pki.client[1],
        "mqtt_tls_server_name": "localhost",
    }
    values.update(update)
    return base.model_copy(update=values)


@pytest.fixture
def plain_settings(tls_broker: TlsBroker, settings: Settings) -> Settings:
    """This test's database and topics, on the TLS broker's plain listener (for publishing)."""
    return settings.model_copy(update={"mqtt_url": tls_broker.plain.url})


async def test_ingest_over_tls_with_a_client_certificate_stores_readings(
    plain_settings: Settings,
    tls_broker: TlsBroker,
    pki: Pki,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
) -> None:
    """Ingest connects to a TLS-only listener with client-certificate auth and stores readings."""
    settings = tls_settings(plain_settings, tls_broker, pki)
    assert await probe_broker(settings) is None
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_ingest(settings, stop=stop, subscribed=subscribed))
    try:
        async with asyncio.timeout(20):
            await subscribed.wait()
        messages = stream(plain_settings, sim_fleet, 300, rate=20_000)
        truth = ground_truth(messages)
        await asyncio.to_thread(publish_stream, plain_settings, messages)
        await wait_until(lambda: count_readings(pool, at_least=len(truth.readings)), within=60)
        await assert_stored_exactly(pool, truth)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def test_wrong_ca_is_refused_with_a_clear_error(
    plain_settings: Settings, tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker certificate the configured CA did not sign: refused, naming the setting to check."""
    settings = tls_settings(plain_settings, tls_broker, pki, mqtt_tls_ca_file=pki.other_ca)
    why = await probe_broker(settings)
    assert why is not None
    assert "certificate was not accepted" in why
    assert "CITYTEL_MQTT_TLS_CA_FILE" in why
    consumer = MqttConsumer(settings, ["citytel/#"])
    with caplog.at_level(logging.WARNING, logger="citytel.ingest.mqtt"):
        consumer.start()
        try:
            async with asyncio.timeout(20):
                while not consumer.reconnects["tls"]:
                    await asyncio.sleep(0.05)
            assert not consumer.subscribed_all
        finally:
            await consumer.stop()
    assert "the broker's certificate was not accepted" in caplog.text


async def test_without_a_client_certificate_the_broker_refuses(
    plain_settings: Settings, tls_broker: TlsBroker, pki: Pki
) -> None:
    """The listener requires a client certificate: without one the probe says it failed."""
    settings = tls_settings(
        plain_settings, tls_broker, pki, mqtt_tls_cert_file=None, mqtt_tls_key_file=None
    )
    why = await probe_broker(settings)
    assert why is not None
    assert f"broker 127.0.0.1:{tls_broker.tls_port}" in why


async def test_plain_mqtt_is_refused_by_the_tls_listener(
    plain_settings: Settings, tls_broker: TlsBroker
) -> None:
    """mqtt:// to the TLS port does not get an MQTT answer: the probe reports it."""
    settings = plain_settings.model_copy(
        update={"mqtt_url": f"mqtt://127.0.0.1:{tls_broker.tls_port}"}
    )
    assert await probe_broker(settings) is not None


async def test_missing_ca_file_stops_ingest_at_start(tmp_path: Path) -> None:
    """A CA file that is not there ends ingest at once naming the setting, database or not."""
    settings = Settings(
        mqtt_url="mqtts://127.0.0.1:1",
        mqtt_tls_ca_file=tmp_path / "missing.pem",
        database_url="postgresql://citytel:hunter2@127.0.0.1:1/nowhere",  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigurationError, match="CITYTEL_MQTT_TLS_CA_FILE: cannot read") as exc:
        async with asyncio.timeout(10):
            await run_ingest(settings, stop=asyncio.Event())
    assert "hunter2" not in str(exc.value)
