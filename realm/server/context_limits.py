"""Which limit caps a request's context, said so that the client knows whom to ask.

A request's context is the least of the model's context length, the tenant's `max_context` limit and
`realm serve --ctx-size`; its prompt plus completion is also bounded by the tenant's `max_tokens`
limit. An error that blames "this model's maximum context length" when a tenant's limit bound is
wrong twice: the number is not the model's, and the fix (raise the tenant's limit) is not said.
"""

from __future__ import annotations

from realm.server.protocol import RequestLimits
from realm.tenants import Tenant


def request_limits(tenant: Tenant, model_context: int, ctx_size: int, default_max_tokens: int,
                   max_prompt_tokens: int, n_vocab: int) -> RequestLimits:
    """The RequestLimits of one of `tenant`'s requests (ctx_size, max_prompt_tokens: 0 is unset)."""
    caps = [(model_context, "this model's maximum context length")]
    caps.append((tenant.limits.max_context, f"tenant {tenant.name!r}'s max_context limit "
                                            f"({_how_to_raise(tenant.name, 'max_context')})"))
    if ctx_size:
        caps.append((ctx_size, "this server's --ctx-size"))
    n_ctx, source = min(caps, key=lambda cap: cap[0])  # the first of equals: the model's, then the tenant's
    tokens_source = (f"tenant {tenant.name!r}'s max_tokens limit on prompt + completion "
                     f"({_how_to_raise(tenant.name, 'max_tokens')})")
    return RequestLimits(n_ctx, tenant.limits.max_tokens, default_max_tokens, max_prompt_tokens or n_ctx, n_vocab,
                         source, tokens_source)


def _how_to_raise(tenant: str, limit: str) -> str:
    return (f"raise it with `realm tenant set-limits {tenant} {limit}=N` or PATCH /admin/tenants/{tenant}/limits")
