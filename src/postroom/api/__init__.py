"""The REST API: ``create_app(settings)`` builds the FastAPI application."""

from __future__ import annotations

from postroom.api.app import create_app

__all__ = ["create_app"]
