"""Push over Server-Sent Events, read by a real HTTP client from a server fed by MQTT ingest."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from citytel.api.app import create_app
from citytel.api.events import ChangeFeed
from citytel.config import Settings
from citytel.domain import DEFAULT_GATEWAY
from tests.integration.conftest import Fleet, publish_raw, serve_api, wait_until

pytestmark = pytest.mark.integration

START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
LAT, LON = 33.5731, -7.5898
_tick = itertools.count(1)


def push_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "api_live_refresh_ms": 50,
            "api_events_refresh_ms": 50,
            "api_events_debounce_ms": 50,
            "api_events_keepalive_s": 0.2,
            **update,
        }
    )


@dataclass(frozen=True)
class Sse:
    """One server-sent event."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Events parsed from a streamed response, keep-alive comments skipped."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, within: float = 10.0) -> Sse:
        event, ident = "message", None
        data: list[str] = []
        async with asyncio.timeout(within):
            while True:
                line = await anext(self._lines)
                if line == "":
                    if data:
                        return Sse(event, "\n".join(data), ident)
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    ident = value


@contextlib.asynccontextmanager
async def events(
    api: httpx.AsyncClient, path: str = "/v1/events", *, last_id: str | None = None, **params: Any
) -> AsyncIterator[tuple[SseReader, list[Sse]]]:
    """A stream of ``path``, open once the server says it is ready; and what came before that."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    async with api.stream("GET", path, params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader, before = SseReader(response), []
        if path == "/v1/events":
            while (got := await reader.next()).event != "ready":
                before.append(got)
            before.append(got)
        yield reader, before


async def feed_ready(api: httpx.AsyncClient, app: FastAPI) -> ChangeFeed:
    """The app's change feed, once its first read is done (changes are counted from there)."""
    feed: ChangeFeed = app.state.change_feed

    async def read_once() -> bool:
        return feed.as_of is not None

    await wait_until(read_once)
    assert (await api.get("/readyz")).status_code == 200
    return feed


def fill(settings: Settings, container: str, fill_pct: float) -> tuple[str, bytes]:
    ts = START + timedelta(seconds=next(_tick))
    body = {"ts": ts.isoformat(), "fill_pct": fill_pct}
    return f"{settings.mqtt_topic_root}/{DEFAULT_GATEWAY}/waste/{container}", json.dumps(
        body
    ).encode()


def parked(settings: Settings, spot: str, *, occupied: bool) -> tuple[str, bytes]:
    ts = START + timedelta(seconds=next(_tick))
    body = {"ts": ts.isoformat(), "occupied": occupied}
    return f"{settings.mqtt_topic_root}/{DEFAULT_GATEWAY}/parking/{spot}", json.dumps(body).encode()


async def publish(settings: Settings, *messages: tuple[str, bytes]) -> None:
    await asyncio.to_thread(publish_raw, settings, list(messages))


async def published_up_to(feed: ChangeFeed, seq: int) -> None:
    async def there() -> bool:
        return feed.hub.last_seq >= seq

    await wait_until(there)


async def test_reading_committed_after_connecting_is_pushed(
    settings: Settings, fleet: Fleet, ingest: Any
) -> None:
    """A fill reading and a spot reading published over MQTT arrive as events, with their state."""
    await ingest()
    settings = push_settings(settings)
    app = create_app(settings)
    async with serve_api(settings, app) as api:
        await feed_ready(api, app)
        async with events(api) as (stream, before):
            assert [e.event for e in before] == ["ready"]
            await publish(settings, fill(settings, fleet.containers[4], 42.5))
            got = await stream.next()
            assert got.event == "container"
            assert (got.json()["id"], got.json()["fill_pct"]) == (fleet.containers[4], 42.5)
            await publish(settings, parked(settings, fleet.spots[3], occupied=False))
            got = await stream.next()
            assert got.event == "spot"
            assert (got.json()["id"], got.json()["status"]) == (fleet.spots[3], "free")


async def test_resume_with_last_event_id_misses_and_repeats_nothing(
    settings: Settings, fleet: Fleet, ingest: Any
) -> None:
    """Events committed while a client was away are replayed after its Last-Event-ID, once."""
    await ingest()
    settings = push_settings(settings)
    app = create_app(settings)
    async with serve_api(settings, app) as api:
        feed = await feed_ready(api, app)
        async with events(api) as (_, before):
            left_at = before[-1].id
        seq = feed.hub.last_seq
        await publish(settings, fill(settings, fleet.containers[0], 10.0))
        await publish(settings, fill(settings, fleet.containers[1], 20.0))
        await published_up_to(feed, seq + 2)
        async with events(api, last_id=left_at) as (stream, before):
            assert [e.event for e in before] == ["ready"]
            missed = [await stream.next(), await stream.next()]
        assert [(e.json()["id"], e.json()["fill_pct"]) for e in missed] == [
            (fleet.containers[0], 10.0),
            (fleet.containers[1], 20.0),
        ]
        async with events(api, last_id=missed[-1].id) as (stream, _):
            await publish(settings, fill(settings, fleet.containers[2], 30.0))
            got = await stream.next()
        assert (got.json()["id"], got.json()["fill_pct"]) == (fleet.containers[2], 30.0)
        assert got.id == feed.hub.event_id(seq + 3)


async def test_a_client_that_cannot_resume_is_told(
    settings: Settings, fleet: Fleet, ingest: Any
) -> None:
    """An id from another stream, or one older than the retained events, gets a reset event."""
    await ingest()
    settings = push_settings(settings, api_events_retained=1)
    app = create_app(settings)
    async with serve_api(settings, app) as api:
        feed = await feed_ready(api, app)
        async with events(api, last_id="0-1") as (_, before):
            assert [e.event for e in before] == ["reset", "ready"]
            assert "not from this server's current stream" in before[0].json()["reason"]
        async with events(api) as (_, before):
            left_at = before[-1].id
        seq = feed.hub.last_seq
        await publish(settings, fill(settings, fleet.containers[0], 10.0))
        await published_up_to(feed, seq + 1)
        await publish(settings, fill(settings, fleet.containers[1], 20.0))
        await published_up_to(feed, seq + 2)
        async with events(api, last_id=left_at) as (_, before):
            assert [e.event for e in before] == ["reset", "ready"]
            assert "no longer retained" in before[0].json()["reason"]


async def test_filters_by_kind_zone_and_box(settings: Settings, fleet: Fleet, ingest: Any) -> None:
    """Each stream receives only the events of its kind, zone or bounding box."""
    await ingest()
    settings = push_settings(settings)
    app = create_app(settings)
    # fleet.containers[0] is in anfa at (-7.600, 33.570), [1] in maarif; the spots lie east.
    box = "-7.6005,33.5695,-7.5995,33.5705"
    async with (
        serve_api(settings, app) as api,
        events(api, kind="spot") as (spots, _),
        events(api, zone="maarif") as (maarif, _),
        events(api, bbox=box, kind="container,device") as (boxed, _),
    ):
        feed = await feed_ready(api, app)
        seq = feed.hub.last_seq
        c0, c1, s0 = fleet.containers[0], fleet.containers[1], fleet.spots[0]
        await publish(settings, fill(settings, c0, 1.0), fill(settings, c1, 1.0))
        await publish(settings, parked(settings, s0, occupied=True))
        await published_up_to(feed, seq + 3)
        await publish(settings, fill(settings, c0, 2.0), fill(settings, c1, 2.0))
        await publish(settings, parked(settings, s0, occupied=False))

        async def read(stream: SseReader) -> list[tuple[str, str]]:
            got = [await stream.next(), await stream.next()]
            return [(e.event, e.json()["id"]) for e in got]

        assert await read(spots) == [("spot", s0), ("spot", s0)]
        assert await read(maarif) == [("container", c1), ("container", c1)]
        assert await read(boxed) == [("container", c0), ("container", c0)]
        assert (await api.get("/v1/events", params={"kind": "bins"})).status_code == 422


async def test_disconnected_clients_are_cleaned_up(settings: Settings, fleet: Fleet) -> None:
    """Closing streams ends their subscriptions and the server's tasks for them."""
    assert fleet.containers
    settings = push_settings(settings)
    app = create_app(settings)
    async with serve_api(settings, app) as api:
        feed = await feed_ready(api, app)
        baseline = len(asyncio.all_tasks())
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(3):
                await streams.enter_async_context(events(api))
            await streams.enter_async_context(
                events(api, "/v1/parking/free/stream", lat=LAT, lon=LON, limit=1)
            )
            assert feed.hub.subscribers == 3
            assert len(asyncio.all_tasks()) > baseline

        async def cleaned_up() -> bool:
            return feed.hub.subscribers == 0 and len(asyncio.all_tasks()) <= baseline

        await wait_until(cleaned_up, within=10)


async def test_free_spot_stream_pushes_when_the_nearest_is_taken(
    settings: Settings, fleet: Fleet, ingest: Any
) -> None:
    """The parking stream sends a new answer when the nearest free spot becomes occupied."""
    await ingest()
    settings = push_settings(settings)
    near, next_near = fleet.spots[0], fleet.spots[1]
    await publish(
        settings,
        parked(settings, near, occupied=False),
        parked(settings, next_near, occupied=False),
    )
    async with (
        serve_api(settings) as api,
        events(api, "/v1/parking/free/stream", lat=LAT, lon=LON, limit=1) as (stream, _),
    ):
        while True:
            got = await stream.next()
            assert got.event == "free"
            if [s["id"] for s in got.json()["items"]] == [near]:
                break
        await publish(settings, parked(settings, near, occupied=True))
        got = await stream.next()
        assert got.event == "free"
        assert [s["id"] for s in got.json()["items"]] == [next_near]
