"""The HTTP API (FastAPI): OpenAI-compatible routes, REST resources and the studio."""

from tally.api.app import create_app

__all__ = ["create_app"]
