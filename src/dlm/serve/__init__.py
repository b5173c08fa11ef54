"""`dlm serve`: an OpenAI-compatible server with step-level continuous batching (see app.py, engine.py)."""

from .app import create_app

__all__ = ["create_app"]
