"""The demo ends its own persistent MQTT session on a clean exit, on a real Mosquitto."""

from __future__ import annotations

import asyncio
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citytel.config import Settings
from citytel.ingest.mqtt import probe_broker

pytestmark = pytest.mark.integration


def session_was_present(settings: Settings, client_id: str) -> bool:
    """Connect as ``client_id`` resuming its session (7 days), and say whether one was there."""
    host, port = settings.mqtt_host_port
    answered = threading.Event()
    present: list[bool] = []

    def on_connect(
        _client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags, *_rest: object
    ) -> None:
        present.append(flags.session_present)
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 7 * 24 * 3600
    client.connect(host, port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0]


async def test_a_clean_start_as_the_client_ends_its_persistent_session(settings: Settings) -> None:
    """probe_broker with the demo's client id removes the session ingest left on the broker."""
    client_id = f"citytel-demo-test-{uuid.uuid4().hex[:8]}"
    assert not await asyncio.to_thread(session_was_present, settings, client_id)
    assert await asyncio.to_thread(session_was_present, settings, client_id), "kept"
    assert await probe_broker(settings, within=5.0, client_id=client_id) is None
    assert not await asyncio.to_thread(session_was_present, settings, client_id), "ended"
    await probe_broker(settings, within=5.0, client_id=client_id)
