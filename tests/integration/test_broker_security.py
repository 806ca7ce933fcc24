"""The shipped broker configuration with the password and ACL files citytel writes.

A private Mosquitto runs ``deploy/mosquitto.conf`` as shipped (anonymous access off), with
``password_file`` and ``acl_file`` written from this test's gateway registry by
:func:`citytel.broker.write_broker_files`. Gateways are paho clients, as real ones would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from citytel.broker import write_broker_files
from citytel.config import Settings
from citytel.ingest.pipeline import run_ingest
from citytel.storage.fleet import import_fleet
from citytel.storage.gateways import add_gateway, broker_users, disable_gateway, rotate_gateway
from tests.integration.conftest import feature, wait_until
from tests.integration.services import Broker, free_port
from tests.integration.test_lorawan import (
    LEVEL_BYTES,
    LEVEL_EUI,
    SPOT_BYTES,
    SPOT_EUI,
    chirpstack_v4,
    envelope,
    ttn,
)

pytestmark = pytest.mark.integration

ROOT = "citytel/v1"
INGEST_USER = "citytel-ingest"
NOT_AUTHORIZED = 0x87
CHIRPSTACK_APP = envelope("chirpstack-v4-uplink.json")["deviceInfo"]["applicationId"]


class Client:
    """A paho MQTT v5 client driven synchronously, recording what the broker answers."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.port = port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: ReasonCode | None = None
        self.answered = threading.Event()
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.changed = threading.Condition()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        self.connack = code
        self.answered.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, code: ReasonCode, _p: Any) -> None:
        with self.changed:
            self.acks[mid] = code
            self.changed.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self.changed:
            self.subacks[mid] = codes
            self.changed.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def connect(self) -> ReasonCode:
        """Connect; the broker's CONNACK reason code."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.answered.wait(10), "no CONNACK within 10 s"
        assert self.connack is not None
        if self.connack.is_failure:
            self.close()
        return self.connack

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1; the PUBACK's reason code."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.acks, 10), "no PUBACK"
            return self.acks[mid]

    def subscribe(self, topic: str) -> ReasonCode:
        """Subscribe at QoS 1; the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.subacks, 10), "no SUBACK"
            return self.subacks[mid][0]

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        # paho keeps a socket pair to wake its loop, closed only when the client is collected:
        # left to the garbage collector, it is reported unclosed in whichever test runs then.
        self.client._reset_sockets()


@dataclass
class Secured:
    """A broker running the shipped config, its files written from this test's registry."""

    broker: Broker
    settings: Settings
    pool: asyncpg.Pool
    ingest_password: str

    async def sync(self) -> None:
        """Rewrite the broker files from the registry and make Mosquitto reload them."""
        write_broker_files(self.settings, await broker_users(self.pool))

    async def client(self, username: str | None, password: str | None) -> Client:
        made = Client(self.broker.port, username, password)
        code = await asyncio.to_thread(made.connect)
        assert not code.is_failure, f"{username} refused: {code}"
        return made

    async def refused(self, username: str | None, password: str | None) -> bool:
        """Whether the broker refuses to let this user connect."""
        made = Client(self.broker.port, username, password)
        code = await asyncio.to_thread(made.connect)
        made.close()
        return bool(code.is_failure)


@pytest.fixture
async def secured(tmp_path: Path, database_url: str, pool: asyncpg.Pool) -> AsyncIterator[Secured]:
    """The shipped broker config on its own port, with an empty gateway registry."""
    auth = tmp_path / "auth"
    auth.mkdir()
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    ingest_password = f"ingest-{uuid.uuid4().hex}"
    settings = Settings(
        database_url=database_url,  # type: ignore[arg-type]
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        mqtt_topic_root=ROOT,
        mqtt_username=INGEST_USER,
        mqtt_password=ingest_password,  # type: ignore[arg-type]
        mqtt_client_id=f"citytel-test-{tag}",
        mqtt_share_group=f"g{tag}",
        mqtt_session_expiry_s=600,
        ingest_flush_ms=20,
        ingest_stats_interval_s=3600,
        broker_password_file=auth / "passwd",
        broker_acl_file=auth / "acl",
    )
    write_broker_files(settings, await broker_users(pool))
    broker = Broker(port=port, workdir=tmp_path, auth_dir=auth)
    broker.start()
    assert broker.process is not None
    (auth / "mosquitto.pid").write_text(str(broker.process.pid))
    settings = settings.model_copy(update={"broker_pid_file": auth / "mosquitto.pid"})
    try:
        yield Secured(broker, settings, pool, ingest_password)
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def running_ingest(settings: Settings) -> AsyncIterator[None]:
    """citytel's ingest loop, authenticated as the ingest identity, for the block."""
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_ingest(settings, stop=stop, subscribed=subscribed))
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@contextlib.contextmanager
def closing(*clients: Client) -> Iterator[None]:
    try:
        yield
    finally:
        for client in clients:
            client.close()


def reading(fill: float) -> bytes:
    return json.dumps({"ts": datetime.now(UTC).isoformat(), "fill_pct": fill}).encode()


async def register(pool: asyncpg.Pool, tmp_path: Path, *features: dict[str, Any]) -> None:
    path = tmp_path / f"fleet-{uuid.uuid4().hex[:6]}.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    await import_fleet(pool, path)


def container(ident: str, gateway: str, **props: Any) -> dict[str, Any]:
    return feature(
        "waste_container",
        ident,
        -7.61,
        33.58,
        "maarif",
        capacity_l=1100,
        depth_mm=1200,
        gateway=gateway,
        **props,
    )


async def test_anonymous_and_wrong_passwords_are_refused(secured: Secured) -> None:
    """Without credentials, or with a wrong password, the shipped config refuses the connection."""
    password = await add_gateway(secured.pool, "gw-a")
    await secured.sync()
    assert await secured.refused(None, None)
    assert await secured.refused("gw-a", "not-its-password")
    assert await secured.refused("nobody", password)
    await wait_until(lambda: _connects(secured, "gw-a", password))


async def _connects(secured: Secured, username: str, password: str) -> bool:
    return not await secured.refused(username, password)


async def test_a_gateway_publishes_only_under_its_own_prefix(secured: Secured) -> None:
    """A's publish under B's prefix is refused (0x87) and never delivered; A receives no reading."""
    password_a = await add_gateway(secured.pool, "gw-a")
    password_b = await add_gateway(secured.pool, "gw-b")
    await secured.sync()
    reader = await secured.client(INGEST_USER, secured.ingest_password)
    gateway_a = await secured.client("gw-a", password_a)
    gateway_b = await secured.client("gw-b", password_b)
    with closing(reader, gateway_a, gateway_b):
        assert not reader.subscribe(f"{ROOT}/+/+/+").is_failure
        # Mosquitto 2.0's acl_file grants every SUBSCRIBE and checks read access on each
        # delivery instead: the subscription is accepted, no reading ever reaches it.
        gateway_a.subscribe("#")
        forged = gateway_a.publish(f"{ROOT}/gw-b/waste/C-1", reading(100))
        # Mosquitto answers an MQTT v5 publisher "not authorised" and drops the message.
        assert forged.value == NOT_AUTHORIZED
        payload_b, payload_a = reading(30), reading(10)
        assert not gateway_b.publish(f"{ROOT}/gw-b/waste/C-1", payload_b).is_failure
        assert not gateway_a.publish(f"{ROOT}/gw-a/waste/C-1", payload_a).is_failure
        # One broker thread delivers in order: had the forged message passed, it came first.
        received = [await asyncio.to_thread(reader.next_message) for _ in range(2)]
        assert received == [
            (f"{ROOT}/gw-b/waste/C-1", payload_b),
            (f"{ROOT}/gw-a/waste/C-1", payload_a),
        ]
        # Both readings were delivered before A's PUBACK was sent: A got neither.
        assert gateway_a.messages.empty()


async def test_a_reading_for_another_gateways_device_is_dead_lettered(
    secured: Secured, tmp_path: Path
) -> None:
    """A reading for B's device, published by A under A's own prefix, ends as wrong_gateway."""
    password_a = await add_gateway(secured.pool, "gw-a")
    await add_gateway(secured.pool, "gw-b")
    await register(secured.pool, tmp_path, container("C-A", "gw-a"), container("C-B", "gw-b"))
    await secured.sync()
    gateway_a = await secured.client("gw-a", password_a)
    async with running_ingest(secured.settings):
        with closing(gateway_a):
            assert not gateway_a.publish(f"{ROOT}/gw-a/waste/C-B", reading(100)).is_failure
            assert not gateway_a.publish(f"{ROOT}/gw-a/waste/C-A", reading(20)).is_failure

        async def both_handled() -> bool:
            rows = await secured.pool.fetchval("SELECT count(*) FROM waste_readings")
            letters = await secured.pool.fetchval("SELECT count(*) FROM dead_letters")
            return bool(rows == 1 and letters == 1)

        await wait_until(both_handled)
    letter = await secured.pool.fetchrow("SELECT topic, reason, detail FROM dead_letters")
    assert letter is not None
    assert (letter["topic"], letter["reason"]) == (f"{ROOT}/gw-a/waste/C-B", "wrong_gateway")
    assert "'gw-a'" in letter["detail"]
    assert "'gw-b'" in letter["detail"]
    assert await secured.pool.fetchval("SELECT container_id FROM waste_readings") == "C-A"
    assert await secured.pool.fetchval("SELECT count(*) FROM container_latest") == 1
    # Ingest wrote, at the latest when it stopped, when gateway A was last seen; B never was.
    rows = await secured.pool.fetch("SELECT id, last_seen_at FROM gateways")
    seen = {row["id"]: row["last_seen_at"] for row in rows}
    assert seen["gw-a"] is not None
    assert seen["gw-b"] is None


async def test_lorawan_uplinks_reach_ingest_under_the_shipped_acl(
    secured: Secured, tmp_path: Path
) -> None:
    """TTN and ChirpStack applications, registered as gateways, publish uplinks that are stored."""
    ttn_password = await add_gateway(
        secured.pool, "ttn-casa", lorawan_application="citytel-casa@ttn"
    )
    chirpstack_password = await add_gateway(
        secured.pool, "chirpstack-casa", lorawan_application=CHIRPSTACK_APP
    )
    await register(
        secured.pool,
        tmp_path,
        container(
            "L-WC-1",
            "ttn-casa",
            device_model="milesight-em310-udl",
            dev_eui=LEVEL_EUI,
            network_device_id="bin-1",
        ),
        feature(
            "parking_spot",
            "L-PS-1",
            -7.59,
            33.57,
            "anfa",
            gateway="chirpstack-casa",
            device_model="bosch-tps110",
            dev_eui=SPOT_EUI,
            network_device_id="spot-1",
        ),
    )
    await secured.sync()
    now = datetime.now(UTC)
    ttn_topic, ttn_body = ttn("bin-1", LEVEL_EUI, 1, LEVEL_BYTES, None, now, 7)
    cs_topic, cs_body = chirpstack_v4("spot-1", SPOT_EUI, 1, SPOT_BYTES, None, now, 9)
    ttn_client = await secured.client("ttn-casa", ttn_password)
    chirpstack_client = await secured.client("chirpstack-casa", chirpstack_password)
    async with running_ingest(secured.settings):
        with closing(ttn_client, chirpstack_client):
            assert not ttn_client.publish(ttn_topic, ttn_body).is_failure
            assert not chirpstack_client.publish(cs_topic, cs_body).is_failure
            # Neither application may publish into the other's tree.
            assert chirpstack_client.publish(ttn_topic, ttn_body).value == NOT_AUTHORIZED

        async def both_stored() -> bool:
            waste = await secured.pool.fetchval("SELECT count(*) FROM waste_readings")
            parking = await secured.pool.fetchval("SELECT count(*) FROM parking_readings")
            return bool(waste == 1 and parking == 1)

        await wait_until(both_stored)
    assert await secured.pool.fetchval("SELECT count(*) FROM dead_letters") == 0


@pytest.mark.parametrize(
    ("bound_to", "application", "named"),
    [
        # A DevEUI registered under one application, heard through another.
        ("ttn-casa", "citytel-casa@ttn", "citytel-casa@ttn"),
        # A device of a native gateway: no application may speak for it, else any network-server
        # integration could forge every native device by its DevEUI.
        ("gw-a", None, "'gw-a'"),
    ],
)
async def test_an_uplink_through_an_application_not_the_devices_own_is_wrong_gateway(
    secured: Secured, tmp_path: Path, bound_to: str, application: str | None, named: str
) -> None:
    """A registered application's uplink for a device bound to another gateway is refused."""
    password = await add_gateway(
        secured.pool, "chirpstack-casa", lorawan_application=CHIRPSTACK_APP
    )
    await add_gateway(secured.pool, bound_to, lorawan_application=application)
    await register(
        secured.pool,
        tmp_path,
        container("L-WC-1", bound_to, device_model="milesight-em310-udl", dev_eui=LEVEL_EUI),
    )
    await secured.sync()
    topic, body = chirpstack_v4("bin-1", LEVEL_EUI, 1, LEVEL_BYTES, None, datetime.now(UTC), 3)
    client = await secured.client("chirpstack-casa", password)
    async with running_ingest(secured.settings):
        with closing(client):
            assert not client.publish(topic, body).is_failure

        async def dead_lettered() -> bool:
            return bool(await secured.pool.fetchval("SELECT count(*) FROM dead_letters") == 1)

        await wait_until(dead_lettered)
    letter = await secured.pool.fetchrow("SELECT reason, detail FROM dead_letters")
    assert letter is not None
    assert letter["reason"] == "wrong_gateway"
    assert CHIRPSTACK_APP in letter["detail"]
    assert named in letter["detail"]
    assert await secured.pool.fetchval("SELECT count(*) FROM waste_readings") == 0


async def test_a_disabled_or_rotated_gateway_can_no_longer_publish(secured: Secured) -> None:
    """Disabling refuses the gateway's publishes at once; rotating refuses its old password."""
    old_password = await add_gateway(secured.pool, "gw-a")
    other_password = await add_gateway(secured.pool, "gw-b")
    await secured.sync()
    connected_b = await secured.client("gw-b", other_password)

    new_password = await rotate_gateway(secured.pool, "gw-a")
    await secured.sync()
    await wait_until(lambda: secured.refused("gw-a", old_password))
    assert await _connects(secured, "gw-a", new_password)

    await disable_gateway(secured.pool, "gw-b")
    await secured.sync()
    await wait_until(lambda: secured.refused("gw-b", other_password))
    with closing(connected_b):
        # Mosquitto 2.0 re-checks connected clients on reload: the disabled one is dropped.
        async def dropped() -> bool:
            return not connected_b.client.is_connected()

        await wait_until(dropped)
