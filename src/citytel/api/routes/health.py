"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from citytel.api.schemas import Health
from citytel.config import Settings
from citytel.errors import StorageError
from citytel.ingest.mqtt import probe_broker
from citytel.storage.queries import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """The database and the broker are both reachable."""
    settings: Settings = request.app.state.settings
    checks: dict[str, str] = {}
    pool = request.app.state.pool
    if pool is None:
        checks["database"] = "not connected yet"
    else:
        try:
            await ping(pool)
            checks["database"] = "ok"
        except StorageError as exc:
            checks["database"] = str(exc)
    checks["broker"] = await probe_broker(settings) or "ok"
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())
