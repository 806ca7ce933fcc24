"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from citytel.api.schemas import Health
from citytel.config import Settings
from citytel.errors import StorageError
from citytel.ingest.mqtt import probe_broker
from citytel.storage.queries import ping

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """The database and the broker are both reachable: ok or unavailable, nothing more.

    The reasons are logged, not answered: the route is open to anyone who reaches the port.
    """
    settings: Settings = request.app.state.settings
    checks: dict[str, str] = {}
    pool = request.app.state.pool
    if pool is None:
        checks["database"] = "unavailable"
        log.warning("not ready: the database is not connected yet")
    else:
        try:
            await ping(pool)
            checks["database"] = "ok"
        except StorageError as exc:
            checks["database"] = "unavailable"
            log.warning("not ready: database: %s", exc)
    broker_problem = await probe_broker(settings)
    checks["broker"] = "ok" if broker_problem is None else "unavailable"
    if broker_problem is not None:
        log.warning("not ready: broker: %s", broker_problem)
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())
