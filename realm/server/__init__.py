"""`realm serve`: the OpenAI-compatible multi-tenant HTTP server (see docs/serve.md)."""

from realm.server.app import Server, ServerConfig, create_app

__all__ = ["Server", "ServerConfig", "create_app"]
