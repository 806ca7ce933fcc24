"""The FastAPI application: lifespan, error mapping and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from citytel import __version__
from citytel.api.answers import AnswerCache
from citytel.api.auth import KeyChecker
from citytel.api.deps import refuse_nul
from citytel.api.events import ChangeFeed, EventHub
from citytel.api.limits import BodyLimit
from citytel.api.live_spots import LiveSpots
from citytel.api.metrics import ApiMetrics
from citytel.api.planning import PlanningGate
from citytel.api.routes import (
    collection,
    containers,
    dead_letters,
    devices,
    events,
    health,
    keys,
    parking,
    provisioning,
    zones,
)
from citytel.api.routes.console import mount_console
from citytel.api.schemas import Problem
from citytel.config import Settings, get_settings
from citytel.errors import (
    ConflictError,
    InvalidQueryError,
    MissingScopeError,
    NotAuthenticatedError,
    NotFoundError,
    SaturatedError,
    StorageError,
    TransientStorageError,
)
from citytel.ingest.pipeline import Decoders, sleep_unless
from citytel.storage.pool import wait_for_pool
from citytel.storage.replica import ReadReplica

log = logging.getLogger(__name__)

_DOCS_ASSETS = Path(__file__).resolve().parent / "static" / "docs"


def _location(loc: tuple[int | str, ...]) -> str:
    where = {"query": "query parameter", "path": "path parameter", "body": "body field"}
    if len(loc) >= 2 and loc[0] in where:
        return f"{where[str(loc[0])]} '{'.'.join(str(p) for p in loc[1:])}'"
    return ".".join(str(p) for p in loc)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = [
        {"parameter": _location(tuple(e["loc"])), "message": str(e["msg"])} for e in exc.errors()
    ]
    detail = "; ".join(f"{e['parameter']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    # One place decides the status of every domain error.
    if isinstance(exc, NotAuthenticatedError):
        return JSONResponse(
            status_code=401,
            content={"detail": str(exc)},
            headers={"WWW-Authenticate": 'Bearer realm="citytel"'},
        )
    if isinstance(exc, MissingScopeError):
        return JSONResponse(
            status_code=403,
            content={"detail": str(exc)},
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="citytel", error="insufficient_scope", scope="{exc.scope}"'
                )
            },
        )
    if isinstance(exc, NotFoundError):
        return JSONResponse(status_code=404, content={"detail": str(exc)})
    if isinstance(exc, ConflictError):
        return JSONResponse(status_code=409, content={"detail": str(exc)})
    if isinstance(exc, InvalidQueryError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})
    if isinstance(exc, SaturatedError):
        return JSONResponse(
            status_code=429,
            content={"detail": str(exc)},
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    if isinstance(exc, TransientStorageError):
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "the database is unavailable; retry shortly"},
            headers={"Retry-After": "2"},
        )
    log.error("storage error: %s", exc)
    return JSONResponse(status_code=500, content={"detail": "internal storage error"})


_ERRORS = {
    "401": "no API key, or an unknown or revoked one",
    "403": "the API key lacks the scope this route needs",
    "422": "invalid parameters: which, and why",
}


def _openapi_with_our_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with the error bodies this API really sends (``Problem``).

    FastAPI documents its own 422 shape; ours is :class:`Problem` (see ``_invalid_request``),
    and every route with a scope also answers 401 and 403.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for operations in document["paths"].values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                statuses = ["401", "403"] if operation.get("security") else []
                statuses += ["422"] if "422" in responses else []
                for status in statuses:
                    responses[status] = {"description": _ERRORS[status], "content": problem}
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        return document

    return openapi


def create_app(settings: Settings, *, database_url: str | None = None) -> FastAPI:
    """Build the API for ``settings``; the pool is opened by the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        app.state.pool = None

        async def connect() -> None:
            # `citytel api` refuses to start on a database that refuses it for good (checked
            # before the app is built); one that becomes unusable while it waits is logged and
            # tried again, and /readyz says "unavailable" meanwhile.
            while not stop.is_set():
                try:
                    app.state.pool = await wait_for_pool(
                        settings, stop=stop, database_url=database_url
                    )
                except StorageError as exc:
                    log.error("%s; trying again in 30 s", exc)  # noqa: TRY400 - says what to do
                    await sleep_unless(stop, 30)
                else:
                    return

        # The API starts even while the database is away: /healthz answers, /readyz says why
        # it is not ready, and data routes answer 503 until the pool exists.
        connecting = asyncio.create_task(connect())
        live: LiveSpots | None = app.state.live_spots
        refreshing = asyncio.create_task(live.run(stop)) if live is not None else None
        feed: ChangeFeed | None = app.state.change_feed
        feeding = asyncio.create_task(feed.run(stop)) if feed is not None else None
        replica: ReadReplica = app.state.reads
        checking = asyncio.create_task(replica.run(stop))
        try:
            yield
        finally:
            stop.set()
            await connecting
            await checking
            if refreshing is not None:
                await refreshing
            if feeding is not None:
                await feeding
            # After the live view: it may be reading from the replica until it stops.
            await replica.close()
            if app.state.pool is not None:
                await app.state.pool.close()
            app.state.planning.close()

    app = FastAPI(
        dependencies=[Depends(refuse_nul)],
        title="citytel",
        version=__version__,
        summary="Waste-container fill levels and parking occupancy for a city, live.",
        description="Every route but the health checks needs an API key with the scope it names "
        "(`citytel keys create`); send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        lifespan=lifespan,
        # Served below from the package's own copies (scripts/vendor_docs.sh), not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = None
    app.state.migrated = False
    app.state.readiness_problems = {}
    app.state.decoders = Decoders.from_settings(settings)
    app.state.key_checker = KeyChecker(settings)
    app.state.container_answers = AnswerCache[bytes](settings.api_containers_cache_s)
    # Rounds are planned whole (read, sorted out, ordered, encoded) in its worker processes.
    app.state.planning = PlanningGate[bytes](
        settings.api_planning_concurrency,
        settings.api_planning_cache_s,
        settings.api_planning_queue,
    )
    # Read routes and the live parking view read from a replica while it keeps up; everything
    # else (writes, replay, provisioning, keys, the change feed) uses the primary's pool.
    app.state.reads = ReadReplica(settings, lambda: app.state.pool)
    app.state.live_spots = (
        LiveSpots(settings, app.state.reads.pool) if settings.api_live_spots else None
    )
    ApiMetrics(app.state.live_spots, app.state.reads).install(app)
    # The change feed stays on the primary: a standby's snapshots cannot say which transactions
    # were running, and a feed moved between servers would see states go back and publish them.
    app.state.change_feed = (
        ChangeFeed(settings, lambda: app.state.pool, EventHub(settings.api_events_retained))
        if settings.api_events
        else None
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(NotFoundError, _domain_error)
    app.add_exception_handler(InvalidQueryError, _domain_error)
    app.add_exception_handler(StorageError, _domain_error)
    app.add_exception_handler(ConflictError, _domain_error)
    app.add_exception_handler(SaturatedError, _domain_error)
    app.add_exception_handler(NotAuthenticatedError, _domain_error)
    app.add_exception_handler(MissingScopeError, _domain_error)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.include_router(health.router)
    app.include_router(containers.router)
    app.include_router(collection.router)
    app.include_router(parking.router)
    app.include_router(zones.router)
    app.include_router(zones.parking_router)
    app.include_router(devices.router)
    app.include_router(dead_letters.router)
    app.include_router(keys.router)
    app.include_router(provisioning.router)
    _serve_docs(app)
    app.include_router(events.router)
    mount_console(app)
    app.openapi = _openapi_with_our_errors(app)  # type: ignore[method-assign]
    return app


def _serve_docs(app: FastAPI) -> None:
    """/docs and /redoc, with every asset served by the API itself."""
    assets = "/static/docs"
    app.mount(assets, StaticFiles(directory=_DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{assets}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{assets}/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{assets}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )


def create_app_from_env() -> FastAPI:
    """The app for the process's settings: the factory uvicorn workers import."""
    return create_app(get_settings())
