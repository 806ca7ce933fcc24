"""The JetStream suite: a 3-node NATS cluster per test, and a PostgreSQL cluster to break."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from nats.js.errors import NotFoundError as JsNotFoundError

from citytel.config import Settings
from citytel.errors import ConfigurationError
from citytel.ingest.jetstream import connect, setup_stream, topic_to_subject
from simulators.publisher import publish
from simulators.stream import SimulatedMessage
from tests.integration.faults.conftest import pg_cluster, pg_server_url, template_db
from tests.integration.nats_cluster import NatsCluster, running_nats_cluster

__all__ = ["pg_cluster", "pg_server_url", "template_db"]


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed nats-server nodes of this test's own, JetStream and MQTT on each."""
    with running_nats_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def settings(nats_cluster: NatsCluster, database_url: str) -> Settings:
    """Ingest from the cluster's stream (3 replicas), gateways on node n1's MQTT listener."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        database_url=database_url,  # type: ignore[arg-type]
        ingest_source="jetstream",
        mqtt_url=f"mqtt://127.0.0.1:{nats_cluster.node('n1').mqtt_port}",
        mqtt_topic_root=f"test-{tag}/citytel/v1",
        mqtt_client_id=f"citytel-test-{tag}",
        nats_url=nats_cluster.url,
        nats_stream=f"CITYTEL_{tag}",
        nats_durable=f"ingest-{tag}",
        nats_replicas=3,
        nats_max_bytes=256 * 1024**2,
        # Short, so that a dead worker's messages come back within the test.
        nats_ack_wait_s=3,
        nats_max_deliver=3,
        ingest_flush_ms=20,
        ingest_batch_size=200,
        ingest_stats_interval_s=3600,
    )


NO_SUITABLE_PEERS = 10005  # JetStream's error code while the cluster lacks the replicas' nodes


async def set_up(settings: Settings, within: float = 30.0) -> None:
    """``citytel nats setup``, once the cluster has elected its JetStream meta leader."""
    async with asyncio.timeout(within):
        while True:
            try:
                await setup_stream(settings)
            except BadRequestError as exc:
                # 10005, "no suitable peers for placement": the nodes have not all joined yet
                # (slow on a busy machine); any other refusal is the test's to see.
                if exc.err_code != NO_SUITABLE_PEERS:
                    raise
                await asyncio.sleep(0.25)
            except ConfigurationError:
                raise
            except Exception:
                await asyncio.sleep(0.25)
            else:
                return


@pytest.fixture
async def stream_ready(settings: Settings) -> Settings:
    """The stream and the durable consumer exist, as ``citytel nats setup`` makes them."""
    await set_up(settings)
    return settings


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """A JetStream client of the test's own on the cluster."""
    nc: NatsClient = await connect(settings, name="test")
    yield nc.jetstream()
    await nc.close()


def gateway_publish(
    settings: Settings, messages: list[SimulatedMessage], *, port: int, connections: int = 4
) -> int:
    """Publish as gateways do (paho, MQTT 3.1.1, QoS 1), over a few connections in parallel.

    Returns the PUBACKs received. nats-server acknowledges each QoS 1 publish after a
    replicated store of its own, so one connection is slow: real cities have many gateways.
    """
    host = settings.mqtt_host_port[0]
    shares = [messages[i::connections] for i in range(connections)]
    with ThreadPoolExecutor(connections) as pool:
        results = pool.map(
            lambda share: publish(
                share,
                host=host,
                port=port,
                client_id=f"gw-{uuid.uuid4().hex[:8]}",
                mqtt_version=4,
                timeout_s=60,
            ),
            shares,
        )
        return sum(stats.acknowledged for stats in results)


async def bridge_publish(settings: Settings, messages: list[SimulatedMessage]) -> None:
    """Publish straight into the stream, as a bridge or network-server integration would.

    Each message is retried until the stream acknowledges it; its id makes a retry after a
    lost acknowledgement a duplicate the stream drops (the dedupe window).
    """
    nc = await connect(settings, name="bridge")
    js = nc.jetstream()
    run = uuid.uuid4().hex[:8]

    async def one(index: int, message: SimulatedMessage) -> None:
        subject = topic_to_subject(message.topic)
        while True:
            try:
                await js.publish(
                    subject, message.payload, timeout=2, headers={"Nats-Msg-Id": f"{run}-{index}"}
                )
            except Exception:
                await asyncio.sleep(0.2)
            else:
                return

    try:
        window = 100
        for start in range(0, len(messages), window):
            await asyncio.gather(
                *(one(start + i, m) for i, m in enumerate(messages[start : start + window]))
            )
    finally:
        await nc.close()


async def stream_leader(
    js: JetStreamContext, settings: Settings, *, other_than: str | None = None, within: float = 30
) -> str:
    """The name of the node that leads the stream, once one (other than ``other_than``) does.

    Right after a leader dies the stream has none for a while: the election takes seconds, more
    on a busy machine, and meanwhile the JetStream API answers "unavailable", or nobody answers
    (when the dead node led the meta group too) and the request times out. One look would then
    fail the test on the election's timing; this waits for the outcome, within ``within`` s.
    """
    async with asyncio.timeout(within):
        while True:
            try:
                info = await js.stream_info(settings.nats_stream)
            except JsNotFoundError:
                raise
            except NatsError:
                await asyncio.sleep(0.25)
                continue
            assert info.cluster is not None
            leader = info.cluster.leader
            if leader and leader != other_than:
                return leader
            await asyncio.sleep(0.25)
