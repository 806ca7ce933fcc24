"""The HTTP API: routes, response schemas and their dependencies."""

from citytel.api.app import create_app

__all__ = ["create_app"]
