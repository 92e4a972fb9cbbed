"""Merged LoRA: `W + s * B @ A` built once per (adapter, scale), within a memory budget.

A sequence that asks for merged mode runs its rows through its own copy of every adapted product
(Q|K|V, gate|up, output, down: arch.layout.PROJECTIONS), the base weight plus each part's scaled
`B @ A`, instead of the base product plus the low-rank term. The copies live in float form (the
NumPy backend: float32, the cpu backend: the float type `merged_weight_type` picks, the wgpu backend:
F32 GPU buffers) next to the shared base weights, which are never modified. Unadapted products stay
the base ones.

The mode belongs to the sequence, never to the step: merged and unmerged differ in their last bits,
so a row is computed merged exactly when its own sequence asked for it, whoever shares the step
(docs/lora.md). A cache entry is held by the sequences using it (lora.lru); idle entries are dropped
least recently used first when a new one needs room; one that cannot fit beside the entries in use (or
the tenant's share) is Overloaded, one larger than the budget an AdapterError naming it, raised when
the sequence selects it, never in a step other sequences share. An
entry is built without holding the cache: a sequence whose entry is cached never waits for another's
build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import PROJECTIONS
from host_functions.errors import AdapterError, Overloaded
from host_functions.fair_share import NO_TENANT, Charges, Claim, NeverFits, Refused
from host_functions.formats.gguf_file import RawTensor
from host_functions.formats.quants import dequantize
from host_functions.lora.adapter import LoraAdapter
from host_functions.lora.lru import RefCountedLRU
from host_functions.lora.unmerged import FusedPairs, fused_pairs

DEFAULT_MERGED_BUDGET_BYTES = 2 << 30

# A backend's merged copy of one product: on the CPU backends a callable (n, n_in) float32 ->
# (n, n_out) float32, on the wgpu backend the parts' F32 weights on the GPU. Only the backend reads it.
Projection = Any
MergedKey = tuple[str, float]  # (adapter digest, scale)


@dataclass(eq=False)
class MergedLora:
    """One adapter at one scale merged into a model's weights: the adapted products per layer."""

    adapter: LoraAdapter
    scale: float
    layers: list[dict[str, Projection]] = field(repr=False)  # layer -> product key -> merged projection
    nbytes: int = 0

    @property
    def key(self) -> MergedKey:
        return self.adapter.digest, self.scale

    def projection(self, layer: int, key: str) -> Projection | None:
        """The merged product `key` of `layer`, or None where the adapter leaves it as it is."""
        return self.layers[layer].get(key)


def fused_float_weight(parts: Sequence[RawTensor]) -> np.ndarray:
    """The stacked weights of a product (a backend's `projection_tensors`) dequantized to float32
    (n_out, n_in): a MergeHost's float_weight for backends that keep the weights in their GGUF encoding."""
    return np.concatenate([dequantize(raw) for raw in parts])


class MergeHost(Protocol):
    """What a backend gives the cache: its float weights and projections over merged float weights."""

    def float_weight(self, layer: int, key: str) -> np.ndarray:
        """The product's base weight as float32 (n_out, n_in), for reading."""

    def merged_nbytes(self, layer: int, key: str) -> int:
        """Bytes a merged copy of the product keeps."""

    def merged_projection(self, layer: int, key: str, weight: np.ndarray) -> Projection:
        """A projection over the merged float32 `weight` (n_out, n_in), rounding its input as the base does.

        It is released when the cache drops its entry (nothing else may keep it).
        """


class MergedLoraCache:
    """Merged weights of one backend's model, keyed by (adapter digest, scale), least recently used first."""

    def __init__(self, host: MergeHost, config: ModelConfig,
                 budget_bytes: int = DEFAULT_MERGED_BUDGET_BYTES) -> None:
        if budget_bytes <= 0:
            raise AdapterError(f"the merged LoRA memory budget must be positive, got {budget_bytes}")
        self._host, self._config = host, config
        self._entries: RefCountedLRU[MergedKey, MergedLora] = RefCountedLRU(budget_bytes)
        self.charges = Charges(budget_bytes, "bytes of merged LoRA weights")  # per tenant (docs/isolation.md)

    @property
    def budget_bytes(self) -> int:
        return self._entries.budget_bytes

    @property
    def used_bytes(self) -> int:
        return self._entries.used_bytes

    def acquire(self, adapter: LoraAdapter, scale: float, claim: Claim = NO_TENANT) -> MergedLora:
        """The merged weights of `adapter` at `scale` for claim.tenant, built if needed; hold them until
        `release`.

        Raises AdapterError when they can never fit (the budget, what a tenant may hold), Overloaded
        when they cannot fit now beside the entries in use, or the tenant's fair share of them.
        """
        entry = self._acquire(adapter, scale)
        try:
            self.charges.charge(claim, entry.key, entry.nbytes)
        except (NeverFits, Refused) as exc:
            self._entries.release(entry.key)
            detail = f"its merged weights: {exc} (docs/isolation.md); use unmerged mode"
            raise (AdapterError(detail, adapter.name) if isinstance(exc, NeverFits) else Overloaded(detail)) from None
        return entry

    def _acquire(self, adapter: LoraAdapter, scale: float) -> MergedLora:
        key = (adapter.digest, float(scale))
        cached = self._entries.hold(key)
        if cached is not None:
            return cached
        needed = self.merged_nbytes(adapter)

        def no_room(held: int) -> AdapterError | Overloaded:  # held entries are released as sequences end
            detail = (f"its merged weights ({needed} bytes) do not fit the merged LoRA memory budget of "
                      f"{self.budget_bytes} bytes ({held} held by sequences in merged mode); use unmerged mode")
            return AdapterError(detail, adapter.name) if needed > self.budget_bytes else Overloaded(detail)

        return self._entries.acquire(key, needed, lambda: self._build(adapter, float(scale)), no_room)

    def release(self, entry: MergedLora, tenant: str = "") -> None:
        """A sequence of `tenant` is done with `entry`; it stays cached until room is needed."""
        self.charges.discharge(tenant, entry.key, entry.nbytes)
        self._entries.release(entry.key)

    def cached(self) -> list[MergedLora]:
        """The entries built, least recently used first."""
        return self._entries.values()

    def in_use(self) -> dict[MergedKey, int]:
        """How many sequences hold each entry in use."""
        return self._entries.users()

    def merged_nbytes(self, adapter: LoraAdapter) -> int:
        """Bytes an entry of `adapter` takes: the merged copies of every product it adapts."""
        return sum(self._host.merged_nbytes(layer, key) for layer, key, _ in self._adapted(adapter))

    def _adapted(self, adapter: LoraAdapter) -> list[tuple[int, str, FusedPairs]]:
        """(layer, product key, the adapter's pairs for it) for every product the adapter changes."""
        found = []
        for layer in range(self._config.n_layers):
            for p in PROJECTIONS:
                fused = fused_pairs(adapter, layer, p.key, self._config)
                if fused is not None:
                    found.append((layer, p.key, fused))
        return found

    def _build(self, adapter: LoraAdapter, scale: float) -> MergedLora:
        layers: list[dict[str, Projection]] = [{} for _ in range(self._config.n_layers)]
        total = 0
        for layer, key, fused in self._adapted(adapter):
            weight = np.array(self._host.float_weight(layer, key), np.float32)  # a copy: the base stays
            for part in fused.parts:
                delta = part.b @ fused.a[part.rank]  # (n_out_part, n_in)
                weight[part.out] += np.float32(scale * part.alpha_over_rank) * delta
            layers[layer][key] = self._host.merged_projection(layer, key, weight)
            total += self._host.merged_nbytes(layer, key)
        return MergedLora(adapter, scale, layers, total)
