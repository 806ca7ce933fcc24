"""The shipped NATS cluster configuration (deploy/nats/): it parses, and its users hold.

The three nodes are started from the shipped files themselves; only what must differ on one
machine is rewritten (ports, host names of the routes, the JetStream directory), and each
rewrite must find its text, so a change of the shipped files cannot slip past this test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from citytel.config import Settings
from citytel.ingest.jetstream import connect, setup_stream
from tests.integration.nats_cluster import nats_server
from tests.integration.services import free_port, wait_for_port

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "nats"
NODES = ("nats-1", "nats-2", "nats-3")
PASSWORDS = {
    "CITYTEL_NATS_INGEST_PASSWORD": "ingest-secret",
    "CITYTEL_NATS_SYS_PASSWORD": "sys-secret",
    "CITYTEL_GATEWAY_GW_0001_PASSWORD": "gw-0001-secret",
    "CITYTEL_GATEWAY_GW_0002_PASSWORD": "gw-0002-secret",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYTEL_", "NATS_"))}
    return {**env, **PASSWORDS, **extra}


@pytest.mark.parametrize("node", NODES)
def test_shipped_config_parses(node: str) -> None:
    """`nats-server -t` accepts deploy/nats/nats.conf for each node, with its passwords set."""
    done = subprocess.run(
        [nats_server(), "-t", "-c", str(DEPLOY / "nats.conf")],
        env=_env(NATS_SERVER_NAME=node),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_shipped_config_refuses_to_start_without_a_password() -> None:
    """A password left unset is an error naming it, not an empty password."""
    env = _env(NATS_SERVER_NAME="nats-1")
    del env["CITYTEL_GATEWAY_GW_0002_PASSWORD"]
    done = subprocess.run(
        [nats_server(), "-t", "-c", str(DEPLOY / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "CITYTEL_GATEWAY_GW_0002_PASSWORD" in done.stderr


@dataclass
class _Node:
    name: str
    port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None


def _rewrite(text: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        assert old in text, f"the shipped configuration no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def shipped_cluster() -> Iterator[list[_Node]]:
    """deploy/nats/ run as three local nodes on free ports."""
    root = Path(tempfile.mkdtemp(prefix="citytel-deploy-nats-"))
    nodes = [
        _Node(name, free_port(), free_port(), free_port(), free_port(), root / name)
        for name in NODES
    ]
    try:
        for node in nodes:
            shutil.copytree(DEPLOY, node.workdir)
            config = node.workdir / "nats.conf"
            routes = [
                (f"nats-route://{peer.name}:6222", f"nats-route://127.0.0.1:{peer.cluster_port}")
                for peer in nodes
            ]
            config.write_text(
                _rewrite(
                    config.read_text(),
                    [
                        ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{node.port}"),
                        ("http: 0.0.0.0:8222", f"http: 127.0.0.1:{node.http_port}"),
                        ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{node.cluster_port}"),
                        ("listen: 0.0.0.0:1883", f"listen: 127.0.0.1:{node.mqtt_port}"),
                        ('store_dir: "/data/jetstream"', f'store_dir: "{node.workdir / "js"}"'),
                        ("max_file_store: 20GB", "max_file_store: 1GB"),
                        *routes,
                    ],
                )
            )
            with (node.workdir / "nats.log").open("ab") as log:
                node.process = subprocess.Popen(
                    [nats_server(), "-c", str(config)],
                    env=_env(NATS_SERVER_NAME=node.name),
                    stdout=log,
                    stderr=log,
                )
        for node in nodes:
            wait_for_port(node.port)
            wait_for_port(node.mqtt_port)
        yield nodes
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _mqtt_publish(port: int, user: str, password: str, topic: str) -> str:
    """One QoS 1 publish as a gateway; what happened: 'acked', 'refused: ...' or 'dropped'."""
    outcome: dict[str, str] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{user}-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.username_pw_set(user, password)

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        outcome.setdefault("connect", str(code))

    def on_publish(_c: mqtt.Client, _u: Any, _m: int, _code: ReasonCode, _p: Any) -> None:
        outcome.setdefault("published", "acked")

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        outcome.setdefault("gone", str(code))

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while "connect" not in outcome and time.monotonic() < deadline:
            time.sleep(0.02)
        if outcome.get("connect") != "Success":
            return f"refused: {outcome.get('connect', 'no CONNACK')}"
        client.publish(topic, b'{"ts":"2026-01-01T00:00:00Z","fill_pct":10}', qos=1)
        deadline = time.monotonic() + 10
        while not {"published", "gone"} & outcome.keys() and time.monotonic() < deadline:
            time.sleep(0.02)
        return outcome.get("published", "dropped")
    finally:
        client.disconnect()
        client.loop_stop()


async def _messages(settings: Settings, subject: str) -> int:
    nc = await connect(settings, name="test-deploy")
    try:
        info = await nc.jetstream().stream_info(settings.nats_stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


async def test_shipped_cluster_keeps_gateways_to_their_prefix(
    shipped_cluster: list[_Node],
) -> None:
    """The shipped users: ingest sets the stream up; a gateway publishes only under its prefix.

    gw-0001 publishing under gw-0002's prefix never reaches the stream, while its own readings
    do; a gateway's credentials open no NATS client connection; a wrong password is refused.
    """
    nodes = shipped_cluster
    settings = Settings(
        nats_url=",".join(f"nats://127.0.0.1:{n.port}" for n in nodes),
        nats_username="citytel-ingest",
        nats_password=PASSWORDS["CITYTEL_NATS_INGEST_PASSWORD"],  # type: ignore[arg-type]
        nats_replicas=3,
        # Within the 1 GB each node may store here (the shipped 20 GB rewritten above).
        nats_max_bytes=256 * 1024**2,
        mqtt_lorawan=False,
    )
    async with asyncio.timeout(60):
        while True:  # the cluster elects its JetStream meta leader first
            try:
                await setup_stream(settings)
                break
            except Exception:
                await asyncio.sleep(0.25)

    port = nodes[1].mqtt_port
    own, other = "citytel/v1/gw-0001/waste/WC-1", "citytel/v1/gw-0002/waste/WC-2"
    password = PASSWORDS["CITYTEL_GATEWAY_GW_0001_PASSWORD"]
    wrong = await asyncio.to_thread(_mqtt_publish, port, "gw-0001", password, other)
    right = await asyncio.to_thread(_mqtt_publish, port, "gw-0001", password, own)
    bad_password = await asyncio.to_thread(_mqtt_publish, port, "gw-0001", "nope", own)
    assert right == "acked"
    assert bad_password.startswith("refused")

    async with asyncio.timeout(30):
        while await _messages(settings, "citytel.v1.gw-0001.waste.WC-1") < 1:
            await asyncio.sleep(0.1)
    # Published before the accepted one, on the same node: had it been let in, it would be there.
    assert await _messages(settings, "citytel.v1.gw-0002.waste.WC-2") == 0, wrong

    gateway_as_client = NatsClient()
    try:
        with pytest.raises(nats_errors.Error, match="Authorization Violation"):
            await gateway_as_client.connect(
                settings.nats_url.split(",")[0],
                user="gw-0001",
                password=password,
                allow_reconnect=False,
                connect_timeout=5,
                max_reconnect_attempts=0,
            )
    finally:
        await gateway_as_client.close()
