"""The table of host functions: every import of module `realm`, registered by the @host decorator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HostFunction:
    """One import of module `realm`: its i32 parameter names and the implementation."""

    name: str
    params: tuple[str, ...]
    impl: Callable[..., int]
    doc: str


HOST_FUNCTIONS: dict[str, HostFunction] = {}


def host(*params: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register `impl(session, memory, *params) -> int` as the import named after the function."""

    def register(impl: Callable[..., int]) -> Callable[..., int]:
        HOST_FUNCTIONS[impl.__name__] = HostFunction(impl.__name__, params, impl, (impl.__doc__ or "").strip())
        return impl

    return register
