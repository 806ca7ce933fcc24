"""An application factory for running the API under uvicorn with several worker processes."""

from __future__ import annotations

from fastapi import FastAPI

from citytel.api.app import create_app
from citytel.config import Settings


def create() -> FastAPI:
    """The citytel API for the settings in the environment (``uvicorn --factory``)."""
    return create_app(Settings())
