"""The operator dashboard: server-rendered pages under ``/ui/`` (fleet, devices, rollouts,
models, the loop), logged in with an API token held in an HttpOnly cookie."""

from .routes import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
