"""Misconfiguration fails fast and says why: the setting, the server, the fix — never a password.

Each case runs ``citytel`` as a real process against the tests' PostgreSQL and Mosquitto (or a
port nobody listens on), and reads everything it printed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from citytel.cli import main
from citytel.config import Settings, get_settings
from citytel.storage.migrate import NOT_MIGRATED, migrate
from tests.integration.conftest import serve_api
from tests.integration.services import Broker, drop_database, free_port, with_database

pytestmark = pytest.mark.integration

PASSWORD = f"pw-{uuid.uuid4().hex}"
MQTT_PASSWORD = f"mqtt-pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def role(pg_server_url: str) -> Iterator[str]:
    """A login role with a password of its own (any authentication method accepts it)."""
    name = f"citytel_pw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
    yield name
    with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def as_user(url: str, user: str, *, database: str | None = None, port: int | None = None) -> str:
    """``url`` with this user, the secret password, and another database or port if given."""
    parts = urlsplit(url)
    netloc = f"{user}:{PASSWORD}@{parts.hostname}:{port or parts.port or 5432}"
    path = f"/{database}" if database else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    """The name of a database that exists and has never been migrated."""
    name = f"citytel_bare_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    drop_database(pg_server_url, name)


def citytel(
    command: list[str], env: dict[str, str], log: Path, *, within: float = 60.0
) -> tuple[int, str]:
    """Run ``citytel COMMAND`` to its end; its exit code and everything it printed."""
    # No metrics port unless the test sets one: tests elsewhere may hold the default.
    full_env = {
        **os.environ,
        "CITYTEL_MQTT_PASSWORD": MQTT_PASSWORD,
        "CITYTEL_INGEST_METRICS_PORT": "0",
        **env,
    }
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "citytel", *command],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=within,
            check=False,
        )
    return done.returncode, log.read_text()


def assert_no_secret(text: str) -> None:
    """Neither password appears, nor a traceback."""
    assert PASSWORD not in text
    assert MQTT_PASSWORD not in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["ingest"], ["api"], ["fleet", "import", "x.geojson"], ["simulate"], ["demo"]],
)
def test_invalid_settings_are_refused_naming_each_variable(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command refuses invalid settings at start: one line per variable, exit 2, no secret."""
    monkeypatch.setenv("CITYTEL_DATABASE_URL", f"postgresql://u:{PASSWORD}@db:notaport/citytel")
    monkeypatch.setenv("CITYTEL_MQTT_URL", f"mqtt://u:{MQTT_PASSWORD}@broker:99999")
    monkeypatch.setenv("CITYTEL_INGEST_BATCH_SIZE", "0")
    monkeypatch.setenv("CITYTEL_LOG_LEVEL", "loud")
    get_settings.cache_clear()
    try:
        code = main(command)
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "invalid setting CITYTEL_DATABASE_URL",
        "invalid setting CITYTEL_MQTT_URL",
        "invalid setting CITYTEL_INGEST_BATCH_SIZE",
        "invalid setting CITYTEL_LOG_LEVEL",
    ]
    assert "postgresql://user:password@host:5432/citytel" in lines[0]
    assert "greater than or equal to 1" in lines[2]
    assert_no_secret(out + err)


def test_invalid_settings_in_a_real_process(tmp_path: Path) -> None:
    """The same from the console script: one clear line, exit 2, no traceback, no password."""
    env = {"CITYTEL_DATABASE_URL": f"mysql://root:{PASSWORD}@db/citytel"}
    code, output = citytel(["ingest"], env, tmp_path / "out.log")
    assert code == 2, output
    assert output.strip().startswith("citytel: invalid setting CITYTEL_DATABASE_URL: must look")
    assert_no_secret(output)


@pytest.mark.parametrize("command", ["ingest", "api"])
def test_missing_database_is_a_permanent_error_saying_what_to_do(
    command: str, pg_server_url: str, role: str, tmp_path: Path
) -> None:
    """A database that does not exist stops ingest and the API at once, with the fix."""
    url = as_user(pg_server_url, role, database="citytel_nowhere")
    code, output = citytel([command], {"CITYTEL_DATABASE_URL": url}, tmp_path / "out.log")
    host_port = f"{urlsplit(url).hostname}:{urlsplit(url).port}"
    assert code == 2, output
    assert f"database {host_port}/citytel_nowhere does not exist: run `citytel migrate`" in output
    assert "retrying" not in output
    assert_no_secret(output)


@pytest.mark.parametrize("command", ["ingest", "api", "migrate"])
def test_missing_role_is_a_permanent_error_saying_what_to_do(
    command: str, pg_server_url: str, tmp_path: Path
) -> None:
    """A role the server does not know stops the process at once, naming the setting to fix."""
    url = as_user(pg_server_url, f"nobody_{uuid.uuid4().hex[:6]}")
    code, output = citytel([command], {"CITYTEL_DATABASE_URL": url}, tmp_path / "out.log")
    assert code == 2, output
    assert "does not exist" in output
    if command != "migrate":
        assert "create that role on the server, or fix the user name and password" in output
    assert "retrying" not in output
    assert_no_secret(output)


@pytest.mark.parametrize("command", ["ingest", "api"])
def test_unmigrated_database_stops_ingest_and_api_at_start(
    command: str, pg_server_url: str, role: str, empty_database: str, tmp_path: Path
) -> None:
    """On a database that was never migrated, ingest and the API exit 2 telling to migrate."""
    url = as_user(pg_server_url, role, database=empty_database)
    code, output = citytel([command], {"CITYTEL_DATABASE_URL": url}, tmp_path / "out.log")
    assert code == 2, output
    assert f"{NOT_MIGRATED} (missing: 0001_registry, 0002_readings" in output
    assert_no_secret(output)


async def test_readyz_says_not_migrated_and_nothing_else(
    pg_server_url: str,
    role: str,
    empty_database: str,
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/readyz is 503 "database not migrated: run `citytel migrate`", short; ready once migrated."""
    url = as_user(pg_server_url, role, database=empty_database)
    settings = Settings(database_url=url, mqtt_url=broker.url)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO)
    async with serve_api(settings, ready=False, key_scopes=()) as api:
        async with asyncio.timeout(10):
            while (response := await api.get("/readyz")).json()["checks"]["database"] == (
                "unavailable"
            ):
                await asyncio.sleep(0.05)
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "checks": {"database": NOT_MIGRATED, "broker": "ok"},
        }
        assert "not ready: database: database not migrated" in caplog.text
        assert "0001_registry" in caplog.text  # the detail is in the log, not in the answer
        await asyncio.to_thread(migrate, settings)
        response = await api.get("/readyz")
        assert response.status_code == 200, response.text
    assert_no_secret(caplog.text)


async def test_readyz_hides_where_the_broker_is(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable broker is "unavailable" in /readyz; its host:port and reason go to the log."""
    port = free_port()
    away = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{port}"})
    async with serve_api(away, ready=False, key_scopes=()) as api:
        async with asyncio.timeout(10):
            while (response := await api.get("/readyz")).json()["checks"]["database"] != "ok":
                await asyncio.sleep(0.05)
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "unavailable"}
    assert f"127.0.0.1:{port}" not in response.text
    assert f"not ready: broker: broker 127.0.0.1:{port} unreachable" in caplog.text


def run_until_logged(
    env: dict[str, str], log: Path, wanted: str, *, times: int = 2, within: float = 60.0
) -> str:
    """Start ``citytel ingest``, wait until ``wanted`` was logged ``times`` times, stop it."""
    full_env = {**os.environ, "CITYTEL_MQTT_PASSWORD": MQTT_PASSWORD, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "citytel", "ingest"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + within
        while log.read_text().count(wanted) < times:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()
    return log.read_text()


def test_unreachable_broker_is_retried_naming_host_and_port(
    pg_server_url: str, role: str, database_url: str, tmp_path: Path
) -> None:
    """Ingest keeps retrying a broker nobody answers at, each line naming its host:port."""
    port = free_port()
    env = {
        "CITYTEL_DATABASE_URL": as_user(database_url, role),
        "CITYTEL_MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "CITYTEL_MQTT_USERNAME": "citytel",
        "CITYTEL_INGEST_METRICS_PORT": "0",
    }
    del pg_server_url
    output = run_until_logged(env, tmp_path / "out.log", f"broker 127.0.0.1:{port}: connection")
    assert "reconnecting in" in output
    assert_no_secret(output)


def test_unreachable_database_is_retried_naming_host_and_port(
    broker: Broker, role: str, pg_server_url: str, tmp_path: Path
) -> None:
    """Ingest keeps retrying a database nobody answers at, each line naming host:port/database."""
    port = free_port()
    env = {
        "CITYTEL_DATABASE_URL": as_user(pg_server_url, role, database="citytel", port=port),
        "CITYTEL_MQTT_URL": broker.url,
        "CITYTEL_INGEST_METRICS_PORT": "0",
    }
    wanted = f"database 127.0.0.1:{port}/citytel unreachable"
    output = run_until_logged(env, tmp_path / "out.log", wanted)
    assert "retrying in" in output
    assert_no_secret(output)


def test_metrics_port_in_use_stops_ingest_naming_the_setting(
    pg_server_url: str, role: str, database_url: str, broker: Broker, tmp_path: Path
) -> None:
    """A metrics port another process holds stops ingest at start, naming the setting to change."""
    del pg_server_url
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "CITYTEL_DATABASE_URL": as_user(database_url, role),
            "CITYTEL_MQTT_URL": broker.url,
            "CITYTEL_INGEST_METRICS_PORT": str(port),
        }
        code, output = citytel(["ingest"], env, tmp_path / "out.log")
    assert code == 2, output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output
    assert "set CITYTEL_INGEST_METRICS_PORT to a free port (0 switches metrics off)" in output
    assert_no_secret(output)
