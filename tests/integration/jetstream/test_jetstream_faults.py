"""Zero loss on the JetStream path: a known stream is published while the cluster, a worker or
the database breaks; every valid reading ends stored exactly once and every malformed message
dead-lettered, as in the Mosquitto fault suite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from nats.js import JetStreamContext

from citytel.config import Settings
from simulators.fleet import Fleet as SimFleet
from simulators.stream import SimulatedMessage, ground_truth
from tests.integration.conftest import count_readings, stream, wait_until
from tests.integration.faults.test_faults import FAULTY, settle
from tests.integration.jetstream.conftest import bridge_publish, stream_leader
from tests.integration.nats_cluster import NatsCluster, jetstream_env
from tests.integration.processes import IngestProcess
from tests.integration.services import PgCluster

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def worker(settings: Settings, log: Path) -> IngestProcess:
    """A ``citytel ingest`` process reading this test's stream."""
    return IngestProcess(settings, log, env=jetstream_env(settings))


def publishing(settings: Settings, messages: list[SimulatedMessage]) -> asyncio.Task[None]:
    return asyncio.create_task(bridge_publish(settings, messages))


async def test_stream_leader_killed_mid_stream(
    stream_ready: Settings,
    nats_cluster: NatsCluster,
    js: JetStreamContext,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """kill -9 of the stream's leader: another node leads, ingest and publisher go on."""
    ingest = worker(stream_ready, tmp_path / "ingest.log")
    ingest.start()
    messages = stream(stream_ready, sim_fleet, 3000, rate=1500, **FAULTY)
    truth = ground_truth(messages)
    sending = publishing(stream_ready, messages)
    try:
        await wait_until(lambda: count_readings(pool, at_least=600), within=60)
        leader = await stream_leader(js, stream_ready)
        await asyncio.to_thread(nats_cluster.node(leader).kill)
        async with asyncio.timeout(120):
            await sending
        await settle(pool, truth, within=60)
        # Another node leads: waited for, since the election may still be going on here (the
        # stream's backlog can be all in before it ends); no other leader within 30 s fails.
        await stream_leader(js, stream_ready, other_than=leader)
    finally:
        ingest.stop()
        sending.cancel()


async def test_one_of_two_workers_killed_the_other_takes_over(
    stream_ready: Settings, sim_fleet: SimFleet, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """kill -9 of one worker, never restarted: the other gets its unacknowledged messages."""
    first = worker(stream_ready, tmp_path / "a.log")
    second = worker(stream_ready, tmp_path / "b.log")
    first.start()
    second.start()
    messages = stream(stream_ready, sim_fleet, 3000, rate=1500, **FAULTY)
    truth = ground_truth(messages)
    sending = publishing(stream_ready, messages)
    try:
        await wait_until(lambda: count_readings(pool, at_least=600), within=60)
        first.kill()
        async with asyncio.timeout(120):
            await sending
        # The ack wait is 3 s here: what the dead worker held comes back to the survivor.
        await settle(pool, truth, within=60)
        assert first.process is not None
        assert first.process.poll() is not None  # still dead: nobody resumed its identity
    finally:
        first.stop()
        second.stop()
        sending.cancel()


async def test_whole_cluster_killed_and_restarted(
    stream_ready: Settings,
    nats_cluster: NatsCluster,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """Every node killed with a backlog in the stream: after the restart nothing is missing."""
    messages = stream(stream_ready, sim_fleet, 3000, rate=5000, **FAULTY)
    truth = ground_truth(messages)
    await bridge_publish(stream_ready, messages[:2000])  # a backlog, before any worker runs
    ingest = worker(stream_ready, tmp_path / "ingest.log")
    ingest.start()
    try:
        await wait_until(lambda: count_readings(pool, at_least=300), within=60)
        await asyncio.to_thread(nats_cluster.kill)
        await asyncio.sleep(1)
        await asyncio.to_thread(nats_cluster.start)
        async with asyncio.timeout(120):
            await bridge_publish(stream_ready, messages[2000:])
        await settle(pool, truth, within=90)
    finally:
        ingest.stop()


async def test_database_stopped_mid_stream(
    stream_ready: Settings,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    pg_cluster: PgCluster,
    tmp_path: Path,
) -> None:
    """PostgreSQL down longer than the ack wait: the worker keeps its messages in progress."""
    ingest = worker(stream_ready, tmp_path / "ingest.log")
    ingest.start()
    messages = stream(stream_ready, sim_fleet, 3000, rate=1500, **FAULTY)
    truth = ground_truth(messages)
    sending = publishing(stream_ready, messages)
    try:
        await wait_until(lambda: count_readings(pool, at_least=600), within=60)
        await asyncio.to_thread(pg_cluster.stop, "immediate")
        await asyncio.sleep(2 * stream_ready.nats_ack_wait_s)
        await asyncio.to_thread(pg_cluster.start)
        async with asyncio.timeout(120):
            await sending
        await settle(pool, truth, within=60)
        assert "retrying" in ingest.log.read_text()
    finally:
        ingest.stop()
        sending.cancel()


async def test_held_messages_are_not_redelivered_while_the_database_is_down(
    stream_ready: Settings,
    js: JetStreamContext,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    pg_cluster: PgCluster,
    tmp_path: Path,
) -> None:
    """A live worker retrying through an outage keeps its messages from other workers."""
    ingest = worker(stream_ready, tmp_path / "ingest.log")
    ingest.start()
    messages = stream(stream_ready, sim_fleet, 50, rate=10_000)
    truth = ground_truth(messages)
    try:
        await asyncio.to_thread(pg_cluster.stop, "immediate")
        await bridge_publish(stream_ready, messages)

        async def all_held() -> bool:
            info = await js.consumer_info(stream_ready.nats_stream, stream_ready.nats_durable)
            return bool(info.num_ack_pending == len(messages) and info.num_pending == 0)

        await wait_until(all_held, within=30)
        # Another worker pulls for three ack waits: the first worker keeps them in progress.
        other = await js.pull_subscribe_bind(
            durable=stream_ready.nats_durable, stream=stream_ready.nats_stream
        )
        with pytest.raises(TimeoutError):
            await other.fetch(len(messages), timeout=3 * stream_ready.nats_ack_wait_s)
        await other.unsubscribe()
        await asyncio.to_thread(pg_cluster.start)
        await settle(pool, truth, within=60)
    finally:
        ingest.stop()
        if not await asyncio.to_thread(pg_is_up, pg_cluster):
            await asyncio.to_thread(pg_cluster.start)


def pg_is_up(cluster: PgCluster) -> bool:
    """Whether the cluster accepts connections (a failed test may leave it stopped)."""
    return (cluster.datadir / "postmaster.pid").exists()
