"""The fault suite runs on a broker and a PostgreSQL cluster of its own, to break at will."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.services import (
    Broker,
    PgCluster,
    create_template,
    drop_database,
    running_broker,
    running_cluster,
)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster, so that stopping it touches nothing else."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_server_url(pg_cluster: PgCluster) -> str:
    """Test databases live on the private cluster."""
    return pg_cluster.url


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A migrated template on the private cluster (its own, not the shared suite's)."""
    name = create_template(pg_server_url)
    yield name
    drop_database(pg_server_url, name)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto of this test's own, with the project's configuration, to restart at will."""
    with running_broker(tmp_path) as running:
        yield running
