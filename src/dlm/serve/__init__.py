"""`dlm serve`: an OpenAI-compatible server with step-level continuous batching (app.py: routes; engine.py)."""

from .app import create_app

__all__ = ["create_app"]
