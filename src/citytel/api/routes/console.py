"""The operations console: one page and its assets, served from the package, no key needed.

The page is a client of the public API like any other (it sends the key the operator pastes);
only its files and its basemap setting are served here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from citytel.api.deps import SettingsDep

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def console_page() -> FileResponse:
    """The console's single page."""
    return FileResponse(CONSOLE_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/console/settings.json")
async def console_settings(settings: SettingsDep) -> dict[str, str | None]:
    """What the page cannot know by itself: the basemap (CITYTEL_CONSOLE_STYLE_URL)."""
    return {"style_url": settings.console_style_url or None}


def mount_console(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/console/``."""
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR), name="console")
