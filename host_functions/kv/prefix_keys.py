"""Keys of cached KV blocks: a chained hash that no tenant can make collide with another's.

A full block's key is hash(previous block's key, the block's token ids), the chain starting from a
sequence key made of what changes the block's keys and values (model file, layers run, context it is
set up for, adapter digest, scale and mode) and the tenant's salt. The salt is an HMAC of the tenant's
name under a per-process random secret: the host derives it from the identity it authenticated,
never from a request field, so a tenant cannot name another's blocks, and no key outlives the process
(the cache is in memory). docs/prefix_cache.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

import numpy as np

_SECRET = secrets.token_bytes(32)  # per process: salts are never stored, sent or comparable elsewhere
_DIGEST = 16


def tenant_salt(tenant: str) -> bytes:
    """The tenant's salt ("" is the engine used without a tenant, e.g. `realm run`)."""
    return hmac.new(_SECRET, tenant.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def sequence_key(tenant: str, *parts: object) -> bytes:
    """The chain's start for a tenant's sequence whose KV depends on `parts` (model, layers, adapter, ...)."""
    h = hashlib.blake2b(tenant_salt(tenant), digest_size=_DIGEST)
    h.update(repr(parts).encode("utf-8", "surrogatepass"))
    return h.digest()


def chain(previous: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a full block of `tokens` following the block (or sequence key) `previous`."""
    h = hashlib.blake2b(previous, digest_size=_DIGEST)
    h.update(np.asarray(tokens, "<i4").tobytes())
    return h.digest()


def block_keys(start: bytes, tokens: Sequence[int], block_tokens: int, first: int = 0) -> list[bytes]:
    """Keys of the full blocks first, first+1, ... of `tokens`, `start` being block first-1's key (or the
    sequence key when first is 0)."""
    keys, previous = [], start
    for b in range(first, len(tokens) // block_tokens):
        previous = chain(previous, tokens[b * block_tokens:(b + 1) * block_tokens])
        keys.append(previous)
    return keys
