"""Realm: a multi-tenant LLM runtime where sandboxed WebAssembly guests drive generation."""

__version__ = "0.1.0"
