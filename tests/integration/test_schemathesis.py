"""Generated requests against the served API: no 5xx, and every answer matches the OpenAPI schema.

schemathesis draws requests from the app's own OpenAPI document, for every operation, and sends
each with a key of every scope (so both the 403s and the real answers are exercised). Examples are
bounded per operation to keep the run short.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from citytel.api.app import create_app
from citytel.config import Settings
from citytel.keys import Scope
from citytel.storage.fleet import import_fleet
from tests.integration.conftest import create_key, feature
from tests.integration.services import Broker, clone_database, drop_database, free_port

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 8


@dataclass
class Served:
    """The API running in a thread of its own, with a key of every scope."""

    base: str
    keys: dict[Scope, str] = field(default_factory=dict)


def _fleet_file(directory: Path) -> Path:
    features = [
        feature(
            "waste_container",
            f"T-WC-{i:03d}",
            -7.6 + i * 0.001,
            33.57,
            "maarif",
            capacity_l=1100,
            depth_mm=1200,
        )
        for i in range(10)
    ] + [
        feature("parking_spot", f"T-PS-{i:03d}", -7.59 + i * 0.001, 33.57, "anfa")
        for i in range(10)
    ]
    path = directory / "fleet.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def served(
    broker: Broker, pg_server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The API on its own database with a small fleet, served by uvicorn in a thread.

    A thread, because schemathesis's tests are synchronous: the server needs a loop of its own.
    """
    url = clone_database(pg_server_url, template_db)
    fleet = _fleet_file(tmp_path_factory.mktemp("schemathesis"))
    port = free_port()
    served = Served(base=f"http://127.0.0.1:{port}")
    app_settings = Settings(database_url=url, mqtt_url=broker.url)  # type: ignore[arg-type]
    server = uvicorn.Server(
        uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="warning")
    )

    async def main() -> None:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        try:
            await import_fleet(pool, fleet)
        finally:
            await pool.close()
        for scope in Scope:
            served.keys[scope] = await create_key(url, scope, name=f"every-{scope.name.lower()}")
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the API's thread ended before it started serving"
            assert time.monotonic() < deadline, "the API did not start within 30 s"
            time.sleep(0.05)
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        drop_database(pg_server_url, urlsplit(url).path.lstrip("/"))


# The app's own document, built without a server: one test per operation of its route table.
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


def _operations() -> list[Operation]:
    found = []
    for result in SCHEMA.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot read: {result}"
        operation = result.ok()
        content = operation.definition.raw.get("responses", {}).get("200", {}).get("content", {})
        # An event stream never ends, so a generated request would wait for ever: the streams
        # are exercised by test_events.py and their scopes by test_auth.py.
        if "text/event-stream" not in content:
            found.append(operation)
    return found


OPERATIONS = _operations()


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_generated_requests(operation: Operation, served: Served) -> None:
    """No 5xx and no answer outside the documented schema, whatever the key's scope."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def each(case: schemathesis.Case[Operation]) -> None:
        for key in served.keys.values():
            response = case.call(base_url=served.base, headers={"Authorization": f"Bearer {key}"})
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )

    each()
