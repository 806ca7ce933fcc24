"""Collection rounds: a bounded number planned at a time, a bounded number waiting their turn,
identical ones from a short cache, all of it in worker processes of lower priority."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from fastapi import FastAPI

from citytel.api.app import create_app
from citytel.api.planning import WORKER_NICENESS, PlanningGate
from citytel.config import Settings
from tests.integration.conftest import serve_api
from tests.integration.services import free_port

pytestmark = pytest.mark.integration


def _one_slot(
    settings: Settings, *, cache_s: float, queue: int
) -> tuple[Settings, FastAPI, PlanningGate[bytes]]:
    """An app planning one round at a time, its settings and its gate."""
    bounded = settings.model_copy(
        update={
            "api_planning_concurrency": 1,
            "api_planning_cache_s": cache_s,
            "api_planning_queue": queue,
        }
    )
    app = create_app(bounded)
    return bounded, app, app.state.planning


@pytest.mark.usefixtures("fleet")
async def test_a_round_beyond_the_bound_gets_429_and_identical_ones_the_cached_plan(
    settings: Settings,
) -> None:
    """With one slot held busy and no queue, a new plan is a 429 with Retry-After; a cached one
    still answers."""
    bounded, app, gate = _one_slot(settings, cache_s=60, queue=0)
    async with serve_api(bounded, app) as client:
        made = await client.get("/v1/collection/round", params={"threshold_pct": 50})
        assert made.status_code == 200, made.text
        async with gate.slot():
            refused = await client.get("/v1/collection/round", params={"threshold_pct": 60})
            cached = await client.get("/v1/collection/round", params={"threshold_pct": 50})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "retry" in refused.json()["detail"]
        assert cached.status_code == 200, cached.text
        assert cached.json() == made.json()
        again = await client.get("/v1/collection/round", params={"threshold_pct": 60})
        assert again.status_code == 200, again.text


@pytest.mark.usefixtures("fleet")
async def test_without_a_cache_each_request_is_planned_again(
    settings: Settings,
) -> None:
    """With the cache off, even an identical request needs a free slot."""
    bounded, app, gate = _one_slot(settings, cache_s=0, queue=0)
    async with serve_api(bounded, app) as client:
        assert (await client.get("/v1/collection/round")).status_code == 200
        async with gate.slot():
            refused = await client.get("/v1/collection/round")
        assert refused.status_code == 429, refused.text


@pytest.mark.usefixtures("fleet")
async def test_a_planning_worker_killed_does_not_break_planning(settings: Settings) -> None:
    """A worker process that dies (OOM killer, kill -9) is replaced: the next round is planned."""
    app = create_app(settings.model_copy(update={"api_planning_cache_s": 0}))
    gate: PlanningGate[bytes] = app.state.planning
    async with serve_api(settings, app) as client:
        assert (await client.get("/v1/collection/round")).status_code == 200
        worker = await gate.in_worker(os.getpid)
        os.kill(worker, signal.SIGKILL)
        # Each request after the kill, whether the pool has noticed the death yet or not.
        for _ in range(6):
            answer = await client.get("/v1/collection/round")
            assert answer.status_code == 200, answer.text
            await asyncio.sleep(0.5)
        assert gate.replaced_pools == 1


@pytest.mark.usefixtures("fleet")
async def test_a_round_beyond_the_bound_waits_its_turn_while_the_queue_has_room(
    settings: Settings,
) -> None:
    """With the slot busy, one request waits in a queue of one and is answered once the slot is
    free; the next finds the queue full and gets a 429 at once."""
    bounded, app, gate = _one_slot(settings, cache_s=0, queue=1)
    async with serve_api(bounded, app) as client:
        alone = await client.get("/v1/collection/round", params={"threshold_pct": 50})
        assert alone.status_code == 200, alone.text
        async with gate.slot():
            waiting = asyncio.create_task(
                client.get("/v1/collection/round", params={"threshold_pct": 50})
            )
            while gate.waiting == 0:
                await asyncio.sleep(0.01)
            refused = await client.get("/v1/collection/round", params={"threshold_pct": 60})
            assert not waiting.done()
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        answered = await waiting
        assert answered.status_code == 200, answered.text
        assert answered.json()["stops"] == alone.json()["stops"]


@pytest.mark.usefixtures("fleet")
async def test_rounds_are_planned_in_workers_of_lower_priority(settings: Settings) -> None:
    """The planning workers yield the CPU to the API process: they run niced."""
    app = create_app(settings)
    gate: PlanningGate[bytes] = app.state.planning
    async with serve_api(settings, app) as client:
        assert (await client.get("/v1/collection/round")).status_code == 200
        own = os.nice(0)
        assert await gate.in_worker(os.nice, 0) == min(19, own + WORKER_NICENESS)


@pytest.mark.usefixtures("fleet")
async def test_a_round_whose_fleet_cannot_be_read_is_a_503_saying_to_retry(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads the fleet over its own connection: when that database cannot be
    reached, the answer is a 503 to retry, not a 500, and the next round is planned again."""
    app = create_app(settings.model_copy(update={"api_planning_cache_s": 0}))
    async with serve_api(settings, app) as client:
        nowhere = f"postgresql://citytel@127.0.0.1:{free_port()}/citytel"
        with monkeypatch.context() as patched:
            patched.setattr(app.state.reads, "url", lambda: nowhere)
            failed = await client.get("/v1/collection/round")
        assert failed.status_code == 503, failed.text
        assert "retry" in failed.json()["detail"]
        assert "127.0.0.1" not in failed.text
        assert (await client.get("/v1/collection/round")).status_code == 200
