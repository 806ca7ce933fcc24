"""Gateways publish MQTT to nats-server; ingest reads the JetStream stream into the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from nats.js import JetStreamContext

from citytel.config import Settings
from citytel.errors import ConfigurationError, IngestFailed
from citytel.ingest.jetstream import setup_stream
from citytel.ingest.pipeline import run_ingest
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import (
    RunningIngest,
    count_readings,
    raw_message,
    stream,
    wait_until,
)
from tests.integration.faults.test_faults import FAULTY, settle
from tests.integration.jetstream.conftest import bridge_publish, gateway_publish, set_up
from tests.integration.nats_cluster import NatsCluster

pytestmark = pytest.mark.integration


async def test_gateway_mqtt_reaches_database(
    stream_ready: Settings,
    nats_cluster: NatsCluster,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """paho at QoS 1 to the MQTT listeners: each reading stored once, faults dead-lettered."""
    await ingest()
    messages = stream(stream_ready, sim_fleet, 1200, rate=5000, **FAULTY)
    # Gateways spread over two nodes' MQTT listeners: the stream captures from the whole cluster.
    halves = [messages[0::2], messages[1::2]]
    acknowledged = await asyncio.gather(
        asyncio.to_thread(
            gateway_publish, stream_ready, halves[0], port=nats_cluster.node("n1").mqtt_port
        ),
        asyncio.to_thread(
            gateway_publish, stream_ready, halves[1], port=nats_cluster.node("n2").mqtt_port
        ),
    )
    assert sum(acknowledged) == len(messages)
    await settle(pool, ground_truth(messages), within=60)


async def test_puback_does_not_mean_the_stream_has_it(
    settings: Settings, nats_cluster: NatsCluster, js: JetStreamContext
) -> None:
    """nats-server PUBACKs a QoS 1 publish that the stream refused: the PUBACK is no receipt."""
    full = settings.model_copy(update={"nats_max_msgs": 5})
    await set_up(full)
    root = full.mqtt_topic_root
    messages = [raw_message(f"{root}/gw-1/waste/c-{i}", b'{"fill_pct": 1}') for i in range(20)]
    acknowledged = await asyncio.to_thread(
        gateway_publish, full, messages, port=nats_cluster.node("n1").mqtt_port, connections=1
    )
    info = await js.stream_info(full.nats_stream)
    assert acknowledged == 20
    assert info.state.messages == 5  # discard=new refused the other 15, after their PUBACK


async def test_message_handed_out_too_often_is_dead_lettered(
    stream_ready: Settings, sim_fleet: SimFleet, js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    """A message whose workers kept dying is dead-lettered and ended, not redelivered forever."""
    settings = stream_ready.model_copy(update={"nats_max_deliver": 2})
    messages = stream(settings, sim_fleet, 1, rate=1000)
    await bridge_publish(settings, messages)
    # A worker takes it and dies before committing (never acknowledges).
    doomed = await js.pull_subscribe_bind(
        durable=settings.nats_durable, stream=settings.nats_stream
    )
    taken = await doomed.fetch(1, timeout=10)
    assert taken[0].metadata.num_delivered == 1
    await doomed.unsubscribe()
    stop = asyncio.Event()
    task = asyncio.create_task(run_ingest(settings, stop=stop))
    try:

        async def lettered() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM dead_letters"))

        await wait_until(lettered, within=30)
        row = await pool.fetchrow("SELECT topic, payload, reason, detail FROM dead_letters")
        assert row is not None
        assert (row["topic"], bytes(row["payload"])) == (messages[0].topic, messages[0].payload)
        assert row["reason"] == "unreadable"
        assert "delivered 2 times" in row["detail"]

        async def gone() -> bool:
            info = await js.consumer_info(settings.nats_stream, settings.nats_durable)
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await wait_until(gone, within=10)
        await asyncio.sleep(settings.nats_ack_wait_s + 1)  # no redelivery comes back
        assert await count_readings(pool) == 0
        assert await pool.fetchval("SELECT times_received FROM dead_letters") == 1
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def test_setup_reports_a_mismatch_and_updates_on_request(stream_ready: Settings) -> None:
    """An existing stream unlike the settings is named with the setting to change."""
    changed = stream_ready.model_copy(
        update={"nats_max_bytes": 128 * 1024**2, "nats_ack_wait_s": 10.0}
    )
    with pytest.raises(ConfigurationError, match="CITYTEL_NATS_MAX_BYTES"):
        await setup_stream(changed)
    updated = await setup_stream(changed, update=True)
    assert len(updated.updated) == 2
    again = await setup_stream(changed)
    assert (again.created, again.updated, len(again.unchanged)) == ([], [], 2)


async def test_ingest_without_setup_says_what_to_run(settings: Settings) -> None:
    """Ingest on a cluster without the stream stops, naming `citytel nats setup`."""
    stop = asyncio.Event()
    with pytest.raises(IngestFailed, match="citytel nats setup"):
        async with asyncio.timeout(30):
            await run_ingest(settings, stop=stop)
