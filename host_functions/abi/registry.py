"""The table of host functions: every import of module `realm`, registered by the @host decorator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HostFunction:
    """One import of module `realm`: its i32 parameter names and the implementation.

    `grows` marks the functions that can add to what the request keeps on the host; the sandbox
    checks the request's host-memory budget after each of their calls.
    """

    name: str
    params: tuple[str, ...]
    impl: Callable[..., int]
    doc: str
    grows: bool = False


HOST_FUNCTIONS: dict[str, HostFunction] = {}


def host(*params: str, grows: bool = False) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register `impl(session, memory, *params) -> int` as the import named after the function."""

    def register(impl: Callable[..., int]) -> Callable[..., int]:
        HOST_FUNCTIONS[impl.__name__] = HostFunction(impl.__name__, params, impl, (impl.__doc__ or "").strip(),
                                                     grows)
        return impl

    return register
