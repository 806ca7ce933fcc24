"""Push: Server-Sent Events subscribers beside a steady reading rate, and what they cost.

Two runs of ``seconds`` each against one ``citytel api`` and one ingest worker, readings
published at ``rate``/s and a closed-loop free-spot search load beside them: the first run
without subscribers, the second with ``clients`` connected. The subscribers are mostly idle:
mobile apps waiting on ``GET /v1/parking/free/stream`` near a spot of the fleet, told only when
their answer changes. ``WATCHERS`` of them follow ``GET /v1/events?kind=container`` and time
each event on arrival.

An event carries the container's latest reading (its id and ``measured_at``), so its delivery
is timed from that reading's ``received_at`` (stamped by ingest before the batch commits: an
upper bound of commit -> client, by at most the batch's flush and write) and from its
publication. The refresh period of the change feed (``CITYTEL_API_EVENTS_REFRESH_MS``, 500 ms)
is most of it. API CPU is the API process's user + system time over each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.api_load import http_load, parameters
from bench.database import populate_latest, reset
from bench.load import Workload, start_paced
from bench.services import (
    API_PIDS,
    Services,
    auth_headers,
    citytel_api,
    cpu_seconds,
    create_api_key,
)
from bench.steady import _distribution_ms, _received

WATCHERS = 5
_CONNECT_IN = 200  # subscribers connected at once


class _Subscribers:
    """``count`` SSE clients on an event loop of their own thread, until stopped."""

    def __init__(self, base: str, key: str, paths: list[str], count: int) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(key).items())
        self.paths, self.count = paths, count
        self.arrivals: dict[tuple[str, str], float] = {}
        self.connected = 0
        self.failed = 0
        self.bytes = 0
        self.last_event_id: str | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> _Subscribers:
        self._thread.start()
        self._ready.wait(120)
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        for lo in range(0, self.count, _CONNECT_IN):
            opened = await asyncio.gather(
                *(self._open(i) for i in range(lo, min(self.count, lo + _CONNECT_IN))),
                return_exceptions=True,
            )
            for i, stream in enumerate(opened, start=lo):
                if isinstance(stream, BaseException):
                    self.failed += 1
                    continue
                self.connected += 1
                tasks.append(asyncio.create_task(self._read(i < WATCHERS, stream)))
        self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _open(self, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = "/v1/events?kind=container" if i < WATCHERS else self.paths[i % len(self.paths)]
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
            f"{self.head}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            message = f"subscription refused: {head[:60]!r}"
            raise RuntimeError(message)
        return reader, writer

    async def _read(
        self, watcher: bool, stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ) -> None:
        reader, writer = stream
        try:
            if not watcher:
                while chunk := await reader.read(65536):
                    self.bytes += len(chunk)
                return
            # Each frame is one chunk of the chunked response, so a data line is never split.
            while line := await reader.readline():
                self.bytes += len(line)
                if line.startswith(b"id: "):
                    self.last_event_id = line[4:].strip().decode()
                if line.startswith(b"data: {"):
                    at = time.time()
                    body = json.loads(line[6:])
                    if "measured_at" in body:
                        self.arrivals.setdefault((body["id"], body["measured_at"]), at)
        finally:
            writer.close()


def _one_run(
    services: Services,
    workload: Workload,
    base_url: str,
    key: str,
    *,
    first: int,
    rate: float,
    seconds: float,
    clients: int,
    concurrency: int,
    publishers: int,
) -> dict[str, Any]:
    count = int(rate * seconds)
    api_pid = API_PIDS[base_url]
    spots = [
        f"/v1/parking/free/stream?{urlencode(p)}"
        for p in parameters(workload.fleet_geojson)["parking"]
    ]
    searches = [p.replace("/free/stream?", "/free?") for p in spots]
    with _Subscribers(base_url, key, spots, clients) as subscribers:
        cpu0, t_cpu0 = cpu_seconds(api_pid), time.monotonic()
        paced = start_paced(
            workload,
            port=services.broker.port,
            root="bench/push",
            base=first,
            count=count,
            rate=rate,
            t0=time.time() + 0.5,
            processes=publishers,
        )
        try:
            searched = http_load(
                base_url,
                searches,
                concurrency=concurrency,
                warmup=0.5,
                duration=seconds,
                work=services.workdir,
                key=key,
            )
            paced.finish(within=60)
            published_at = list(paced.published_at[:])
        finally:
            paced.kill()
        cpu = (cpu_seconds(api_pid) - cpu0) / (time.monotonic() - t_cpu0)
        time.sleep(2)  # the last refresh's events
    published = {
        (workload.keys[first + i][0], workload.keys[first + i][1]): published_at[i]
        for i in range(count)
    }
    timed = {
        (device, datetime.fromisoformat(ts)): at
        for (device, ts), at in subscribers.arrivals.items()
    }
    received = asyncio.run(_received(services.database_url))
    from_received = [at - received[k] for k, at in timed.items() if k in received]
    from_published = [at - published[k] for k, at in timed.items() if k in published]
    return {
        "subscribers": {
            "asked": clients,
            "connected": subscribers.connected,
            "refused": subscribers.failed,
            "bytes_received": subscribers.bytes,
        },
        "readings": count,
        "events_timed": len(timed),
        # <epoch>-<seq>: how many events the API's hub had published when the run ended.
        "last_event_id": subscribers.last_event_id,
        "received_to_client": _distribution_ms(from_received),
        "published_to_client": _distribution_ms(from_published),
        "api_cores_busy": round(cpu, 3),
        "free_spot_searches": searched,
    }


def run(
    services: Services,
    workload: Workload,
    *,
    base: int,
    rate: float,
    seconds: float,
    clients: int,
    concurrency: int,
    publishers: int,
) -> dict[str, Any]:
    """The same load without and with ``clients`` subscribers; figures and their ratios."""
    if base + 2 * int(rate * seconds) > len(workload.keys):
        message = "the workload is too small for this push run"
        raise ValueError(message)
    reset(services.database_url)
    # Older than the run's readings, so that each of them is a change the feed can push.
    oldest = min(ts for _, ts in workload.keys[base : base + 2 * int(rate * seconds)])
    populate_latest(
        services.database_url, hours_ago=(datetime.now(UTC) - oldest) / timedelta(hours=1) + 1
    )
    key = create_api_key(services, "bench-push")
    worker = services.worker("bench/push", "bench-push-0")
    worker.start()
    try:
        with citytel_api(services, key=key) as base_url:
            runs = {}
            for name, subscribers, first in (
                ("without_subscribers", 0, base),
                ("with_subscribers", clients, base + int(rate * seconds)),
            ):
                runs[name] = _one_run(
                    services,
                    workload,
                    base_url,
                    key,
                    first=first,
                    rate=rate,
                    seconds=seconds,
                    clients=subscribers,
                    concurrency=concurrency,
                    publishers=publishers,
                )
    finally:
        worker.stop()
    without, with_ = runs["without_subscribers"], runs["with_subscribers"]
    with contextlib.suppress(ZeroDivisionError, KeyError):
        runs["ratio_search_rps_with_vs_without"] = round(
            with_["free_spot_searches"]["rps"] / without["free_spot_searches"]["rps"], 3
        )
        runs["ratio_api_cpu_with_vs_without"] = round(
            with_["api_cores_busy"] / without["api_cores_busy"], 3
        )
    return {"rate_target": rate, "seconds": seconds, "clients": clients, **runs}
