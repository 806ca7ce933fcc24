"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from citytel.api.schemas import Health
from citytel.config import Settings
from citytel.errors import StorageError
from citytel.ingest.mqtt import probe_broker
from citytel.storage.migrate import NOT_MIGRATED, missing_migrations
from citytel.storage.queries import ping
from citytel.storage.replica import ReadReplica

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


async def _database(app: FastAPI) -> tuple[str, str]:
    """The short public state of the database, and the detail for the log."""
    pool = app.state.pool
    if pool is None:
        return "unavailable", "the database has not been reached yet"
    try:
        await ping(pool)
        if not app.state.migrated:
            missing = await missing_migrations(pool)
            if missing:
                return NOT_MIGRATED, f"{NOT_MIGRATED} (missing: {', '.join(missing)})"
            # Migrations are never undone under a running API: checked until they are there.
            app.state.migrated = True
    except StorageError as exc:
        return "unavailable", str(exc)
    return "ok", ""


def _log_change(app: FastAPI, problems: dict[str, str]) -> None:
    # The reasons go to the log, once per change, not to whoever can reach /readyz.
    if problems == app.state.readiness_problems:
        return
    app.state.readiness_problems = problems
    for check, detail in problems.items():
        log.warning("not ready: %s: %s", check, detail)
    if not problems:
        log.info("ready: the database and the broker answer")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """The database (migrated) and the broker are both reachable: ok or unavailable, nothing more.

    With a read replica, its state (ok, lagging, unavailable) and lag are told too; a replica
    that is not ok does not make the API unready: reads fall back to the primary. The reasons
    are logged, not answered: the route is open to anyone who reaches the port.
    """
    app: FastAPI = request.app
    settings: Settings = app.state.settings
    database, detail = await _database(app)
    checks = {"database": database}
    problems = {"database": detail} if database != "ok" else {}
    broker_problem = await probe_broker(settings)
    checks["broker"] = "ok" if broker_problem is None else "unavailable"
    if broker_problem is not None:
        problems["broker"] = broker_problem
    _log_change(app, problems)
    ready = not problems
    replica: ReadReplica = app.state.reads
    lag_s = None
    if replica.configured:
        # Its reasons are logged by the replica's own checks, as reads move.
        checks["replica"] = replica.state.value
        lag_s = None if replica.lag_s is None else round(replica.lag_s, 1)
    body = Health(status="ok" if ready else "unavailable", checks=checks, replica_lag_s=lag_s)
    content = body.model_dump(exclude_none=True)
    return JSONResponse(status_code=200 if ready else 503, content=content)
