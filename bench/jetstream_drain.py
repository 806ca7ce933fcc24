"""JetStream drain: a backlog waiting in a stream, drained by citytel workers or a bare consumer.

A ``nats-server`` of the run's own (one node, JetStream on file storage) holds the backlog;
``citytel ingest`` with ``CITYTEL_INGEST_SOURCE=jetstream`` drains it into PostgreSQL with one and
two workers, and a bare nats-py pull consumer that only acknowledges drains the same backlog: the
ceiling set by the server and the client library.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

from tests.integration.nats_cluster import jetstream_env
from tests.integration.services import free_port, wait_for_port

from bench.database import dead_letters, reset, wait_for_count
from bench.load import Workload
from bench.services import Services, start_group, stop_group
from citytel.config import Settings
from citytel.ingest.jetstream import connect, setup_stream, topic_to_subject

_FETCH = 1000  # the batch size of citytel's default CITYTEL_INGEST_BATCH_SIZE
_PUBLISH_WINDOW = 1000


def _settings(url: str, label: str) -> Settings:
    return Settings(
        nats_url=url,
        nats_stream=f"BENCH_{label}",
        nats_durable=f"bench-{label}",
        mqtt_topic_root=f"bench/{label}",
        mqtt_lorawan=False,
        nats_max_bytes=4 * 1024**3,
    )


async def _fill(settings: Settings, workload: Workload, count: int) -> float:
    """Set the stream up and publish the backlog into it; returns the seconds it took."""
    await setup_stream(settings)
    nc = await connect(settings, name="bench-publisher")
    js = nc.jetstream()
    root = settings.mqtt_topic_root
    started = time.monotonic()
    try:
        for start in range(0, count, _PUBLISH_WINDOW):
            indices = range(start, min(count, start + _PUBLISH_WINDOW))
            await asyncio.gather(
                *(
                    js.publish(topic_to_subject(workload.topic(root, i)), workload.payloads[i])
                    for i in indices
                )
            )
    finally:
        await nc.close()
    return time.monotonic() - started


async def _bare(settings: Settings, count: int, within: float) -> dict[str, Any]:
    """Fetch batches of 1000 and acknowledge each message, nothing else."""
    nc = await connect(settings, name="bench-bare")
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=settings.nats_durable, stream=settings.nats_stream)
    received, first = 0, 0.0
    try:
        async with asyncio.timeout(within):
            while received < count:
                try:
                    msgs = await sub.fetch(_FETCH, timeout=5)
                except TimeoutError:
                    continue
                if not first:
                    first = time.monotonic()
                for msg in msgs:
                    await msg.ack()
                received += len(msgs)
            await nc.flush()
        last = time.monotonic()
    finally:
        await nc.close()
    seconds = last - first
    return {
        "messages": count,
        "received": received,
        "seconds": round(seconds, 3),
        "rate": round(count / seconds),
    }


async def _first_delivery(settings: Settings, within: float) -> float:
    """Wall-clock time the consumer first handed a message out."""
    nc = await connect(settings, name="bench-watch")
    js = nc.jetstream()
    try:
        async with asyncio.timeout(within):
            while True:
                info = await js.consumer_info(settings.nats_stream, settings.nats_durable)
                if info.delivered is not None and info.delivered.consumer_seq:
                    return time.time()
                await asyncio.sleep(0.01)
    finally:
        await nc.close()


def drain_bare(url: str, workload: Workload, *, count: int) -> dict[str, Any]:
    """The baseline: a bare nats-py pull consumer drains a backlog of ``count``."""
    settings = _settings(url, "bare")
    publish_s = asyncio.run(_fill(settings, workload, count))
    result = asyncio.run(_bare(settings, count, within=120 + count / 1000))
    result["publish_rate"] = round(count / publish_s)
    return result


def drain_citytel(
    services: Services, url: str, workload: Workload, *, count: int, workers: int
) -> dict[str, Any]:
    """``workers`` real ``citytel ingest`` processes drain a backlog of ``count`` from the stream.

    The clock runs from the consumer's first delivery to the moment the last reading is seen
    committed.
    """
    label = f"js{workers}"
    settings = _settings(url, label)
    asyncio.run(_fill(settings, workload, count))
    database = services.database_url
    reset(database)
    procs = [
        services.worker(settings.mqtt_topic_root, f"bench-{label}-{i}") for i in range(workers)
    ]
    for worker in procs:
        worker.env.update(jetstream_env(settings))
    for worker in procs:
        worker.start(wait=False)
    try:
        first = asyncio.run(_first_delivery(settings, within=60))
        seen_at, committed = wait_for_count(database, count, within=120 + count / 500)
    finally:
        for worker in procs:
            worker.stop()
    seconds = seen_at - first
    return {
        "workers": workers,
        "messages": count,
        "committed": committed,
        "complete": committed >= count,
        "dead_letters": dead_letters(database),
        "seconds": round(seconds, 3),
        "rate": round(count / seconds),
    }


def run(services: Services, workload: Workload, *, count: int) -> dict[str, Any]:
    """A private nats-server; the bare consumer, then one and two citytel workers."""
    program = shutil.which("nats-server")
    if program is None:
        return {"skipped": "nats-server is not installed (scripts/bootstrap.sh installs it)"}
    port = free_port()
    store = services.workdir / "nats"
    store.mkdir()
    config = services.workdir / "nats.conf"
    config.write_text(
        f'server_name: bench\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: "{store}" }}\n'
    )
    with (services.workdir / "nats.log").open("ab") as out:
        process = start_group([program, "-c", str(config)], out=out)
    try:
        wait_for_port(port)
        url = f"nats://127.0.0.1:{port}"
        bare = drain_bare(url, workload, count=count)
        one = drain_citytel(services, url, workload, count=count, workers=1)
        two = drain_citytel(services, url, workload, count=count, workers=2)
    finally:
        stop_group(process)
    return {
        "messages": count,
        "server": "one nats-server node, JetStream file storage, stream replicas 1",
        "bare_nats_py": bare,
        "citytel_1_worker": one,
        "citytel_2_workers": two,
        "ratios": {
            "citytel_vs_bare_nats_py": round(one["rate"] / bare["rate"], 3),
            "two_workers_vs_bare_nats_py": round(two["rate"] / bare["rate"], 3),
            "two_workers_vs_one": round(two["rate"] / one["rate"], 3),
        },
    }
