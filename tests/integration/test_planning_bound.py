"""Collection rounds: a bounded number planned at a time, identical ones from a short cache."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from citytel.api.app import create_app
from citytel.api.planning import PlanningGate
from citytel.api.schemas import CollectionRound
from citytel.config import Settings
from tests.integration.conftest import serve_api

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("fleet")
async def test_a_round_beyond_the_bound_gets_429_and_identical_ones_the_cached_plan(
    settings: Settings,
) -> None:
    """With one slot held busy, a new plan is a 429 with Retry-After; a cached one still answers."""
    bounded = settings.model_copy(
        update={"api_planning_concurrency": 1, "api_planning_cache_s": 60}
    )
    app = create_app(bounded)
    gate: PlanningGate[CollectionRound] = app.state.planning
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
    bounded = settings.model_copy(update={"api_planning_concurrency": 1, "api_planning_cache_s": 0})
    app = create_app(bounded)
    gate: PlanningGate[CollectionRound] = app.state.planning
    async with serve_api(bounded, app) as client:
        assert (await client.get("/v1/collection/round")).status_code == 200
        async with gate.slot():
            refused = await client.get("/v1/collection/round")
        assert refused.status_code == 429, refused.text


@pytest.mark.usefixtures("fleet")
async def test_a_planning_worker_killed_does_not_break_planning(settings: Settings) -> None:
    """A worker process that dies (OOM killer, kill -9) is replaced: the next round is planned."""
    app = create_app(settings.model_copy(update={"api_planning_cache_s": 0}))
    gate: PlanningGate[CollectionRound] = app.state.planning
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
