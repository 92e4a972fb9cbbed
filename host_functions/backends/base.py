"""Compute backends: the forward pass of one transformer, one batched step at a time.

A backend owns the model's weights in its own form (NumPy: dequantized float32 arrays; wgpu: the
quantized GGUF bytes resident on the GPU) and the KV memory of every sequence (a paged pool, see
host_functions.kv.pool). The unit of work is a *step*: the new tokens of one or many sequences,

    logits = backend.step([StepItem(tokens, pos, cache, wants), ...])   # one entry per item

where each item's tokens sit at positions pos..pos+n-1 of its own sequence, attend over that
sequence's cache only (causally, within the layer's sliding window), and `wants` says which logits
come back: the last row ("last", decoding), every row ("all", verifying drafts) or none ("none", a
prefill chunk); or, for "hidden" (embeddings), every row's final hidden state after the output norm
instead of logits. Callers reserve the cache's blocks (`cache.reserve`) before the step.

The per-sequence primitives the default `step` is built from stay public for kernel tests:
    x = backend.embed(tokens)                       # (n_tokens, n_embd), backend-resident
    for i in range(n_layers): x = backend.layer(i, x, cache, pos)   # writes K/V at pos..pos+n-1
    logits = backend.logits(x, last_only=True)       # NumPy float32, (1 or n_tokens, n_vocab)
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import weight_name
from host_functions.formats.gguf_file import RawTensor
from host_functions.kv.block_table import KVCache
from host_functions.kv.pool import BLOCK_TOKENS, KVPool, default_budget
from host_functions.lora.adapter import LoraAdapter
from host_functions.lora.merged import MergedLora, MergedLoraCache

Activations = Any  # backend-specific handle to hidden states of shape (n_tokens, n_embd)
LogitsWanted = Literal["none", "last", "all", "hidden"]  # "hidden": every row's normed hidden state
T = TypeVar("T")


@dataclass
class StepItem:
    """One sequence's share of a step: its new tokens, where they go, and which logits it needs."""

    tokens: np.ndarray  # (n,) int32
    pos: int  # position of tokens[0] in the sequence
    cache: KVCache
    wants: LogitsWanted = "last"
    n_layers: int | None = None  # run only the first n_layers, then the head (self-speculation's draft)
    lora: tuple[LoraAdapter, float] | None = None  # the sequence's adapter and its scale, applied unmerged
    merged: MergedLora | None = None  # the same adapter merged into the weights, when the sequence asked for it
    n_ctx: int | None = None  # the context its sequence is set up for (LongRoPE's factors); None: the cache's capacity

    def layers(self, config: ModelConfig) -> int:
        return config.n_layers if self.n_layers is None else self.n_layers

    @property
    def context(self) -> int:
        """The context its sequence is set up for, which picks LongRoPE's factors (ModelConfig.rope_factors)."""
        return self.cache.capacity if self.n_ctx is None else self.n_ctx


class Backend(ABC):
    """The forward pass of one model on one kind of hardware; shared by every sequence."""

    name: ClassVar[str]

    def __init__(self, config: ModelConfig, tensors: Mapping[str, RawTensor]) -> None:
        self.config = config
        self.tensors = tensors  # the model file's tensors (memory-mapped), by GGUF name
        self.kv_pool: KVPool | None = None
        self.merged_lora: MergedLoraCache | None = None  # set by backends that can run LoRA merged
        self.step_lock = threading.Lock()  # one step at a time on the backend, whoever runs it

    def projection_tensors(self, layer: int, key: str) -> list[RawTensor]:
        """The GGUF weights whose rows make up product `key` of `layer` (arch.layout), in column order."""
        return [self.tensors[weight_name(layer, m.name)] for m in self.config.layout.projection_matrices(key)]

    def kv_block_bytes(self, block_tokens: int) -> int:
        """Bytes one block of `block_tokens` positions takes across every layer (K and V)."""
        return 2 * self.config.n_layers * block_tokens * self.config.kv_dim * self.kv_element_bytes()

    def kv_element_bytes(self) -> int:
        return 4

    def configure_kv(self, budget_bytes: int | None = None) -> KVPool:
        """Create the model's KV pool of budget_bytes (default: from free memory); QuotaExceeded if too small."""
        self.kv_pool = KVPool(default_budget() if budget_bytes is None else budget_bytes,
                              self.kv_block_bytes(BLOCK_TOKENS), BLOCK_TOKENS)
        self._allocate_kv(self.kv_pool)
        return self.kv_pool

    @abstractmethod
    def _allocate_kv(self, pool: KVPool) -> None:
        """Create the storage of `pool`'s blocks (NumPy arrays, GPU buffers)."""

    def new_cache(self, capacity: int) -> KVCache:
        """An empty block table of at most `capacity` positions in this model's pool."""
        return KVCache(self.kv_pool or self.configure_kv(), capacity)

    def step(self, items: Sequence[StepItem]) -> list[np.ndarray | None]:
        """Run every item's tokens through the model; per item the logits it wants, float32
        (n_vocab,) for "last", (n, n_vocab) for "all", None for "none"; (n, n_embd) hidden states after
        the output norm for "hidden"."""
        depths = {item.layers(self.config) for item in items}
        if len(depths) == 1:
            return self._step(items, depths.pop())
        by_index: dict[int, np.ndarray | None] = {}  # drafts cut after fewer layers: one step per depth
        for depth in depths:
            group = [i for i, item in enumerate(items) if item.layers(self.config) == depth]
            by_index.update(zip(group, self._step([items[i] for i in group], depth), strict=True))
        return [by_index[i] for i in range(len(items))]

    def _step(self, items: Sequence[StepItem], n_layers: int) -> list[np.ndarray | None]:
        """A step whose items all run n_layers; by default one item after another (backends batch)."""
        out: list[np.ndarray | None] = []
        for item in items:
            x = self.embed(item.tokens)
            for i in range(n_layers):
                x = self.layer(i, x, item.cache, item.pos)
            if item.wants == "hidden":
                out.append(self.final_norm(x))
            else:
                out.append(None if item.wants == "none" else _shaped(self.logits(x, last_only=item.wants == "last"),
                                                                      item))
        return out

    @abstractmethod
    def embed(self, tokens: np.ndarray) -> Activations:
        """Embedding rows (scaled by config.embedding_scale) for int32 token ids."""

    @abstractmethod
    def layer(self, index: int, x: Activations, cache: KVCache, pos: int) -> Activations:
        """Run transformer block `index` on x, the tokens at positions pos..pos+n-1 of the sequence.

        Stores their keys/values in `cache` and attends causally (and within the layer's sliding
        window) over the cache's positions 0..pos+n-1.
        """

    @abstractmethod
    def logits(self, x: Activations, last_only: bool = True) -> np.ndarray:
        """Final norm and output projection: float32 (1 or n_tokens, n_vocab)."""

    @abstractmethod
    def final_norm(self, x: Activations) -> np.ndarray:
        """The final norm alone (the hidden states the output projection reads): float32 (n_tokens, n_embd)."""

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights a decode step reads (for bandwidth figures)."""
        return 0


def row_rope_factors(config: ModelConfig, factors: Mapping[str, np.ndarray],
                     runs: Sequence[tuple[int, int]]) -> np.ndarray | None:
    """Each row's rope factors, (n_rows, head_dim/2), for runs of (n_rows, n_ctx): the set the context of
    the run's sequence picks (ModelConfig.rope_factors, from `factors` by tensor name); None for a model
    without rope factors."""
    parts = []
    for n_rows, n_ctx in runs:
        name = config.rope_factors(n_ctx)
        if name is None:
            return None
        parts.append(np.broadcast_to(factors[name], (n_rows, config.head_dim // 2)))
    return np.concatenate(parts) if parts else None


def wanted_rows(item: StepItem, first_row: int) -> np.ndarray:
    """The step rows (int64) whose logits (or hidden states) an item starting at first_row wants: its
    last, all, or none."""
    rows = np.arange(first_row, first_row + len(item.tokens))
    return rows[-1:] if item.wants == "last" else rows[:0] if item.wants == "none" else rows


def head_outputs(items: Sequence[StepItem], picks: Sequence[np.ndarray], n_vocab: int,
                 logits_of: Callable[[np.ndarray], np.ndarray],
                 hidden_of: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray | None]:
    """Each item's output from its picked step rows: the logits of every item that wants logits, from
    one logits_of(rows) call over all their rows, and hidden_of(rows) for each item that wants hidden
    states. Both work row by row, so neither depends on the item's company (batch invariance)."""
    wanted = [(item, pick) for item, pick in zip(items, picks, strict=True) if item.wants != "hidden"]
    rows = np.concatenate([pick for _, pick in wanted]) if wanted else np.zeros(0, np.int64)
    logits = logits_of(rows) if rows.size else np.zeros((0, n_vocab), np.float32)
    outputs = iter(split_logits([item for item, _ in wanted], [pick for _, pick in wanted], logits))
    return [hidden_of(pick) if item.wants == "hidden" else next(outputs)
            for item, pick in zip(items, picks, strict=True)]


def split_logits(items: Sequence[StepItem], picks: Sequence[np.ndarray], logits: np.ndarray) -> list[np.ndarray | None]:
    """Hand each item its rows of `logits` (the rows of `picks`, concatenated), shaped as it wants."""
    out: list[np.ndarray | None] = []
    at = 0
    for item, pick in zip(items, picks, strict=True):
        part = logits[at : at + len(pick)]
        out.append(None if item.wants == "none" else _shaped(part, item))
        at += len(pick)
    return out


def _shaped(logits: np.ndarray, item: StepItem) -> np.ndarray:
    return logits[-1] if item.wants == "last" else logits


def in_grouped_order(items: Sequence[StepItem], run: Callable[[list[StepItem]], list[T]]) -> list[T]:
    """run(items reordered), each result handed back at its item's place. The order: the unmerged
    items first, each (adapter, scale) together in order of first appearance, then each merged
    entry's items together, so every projection and adapter term covers contiguous rows (a row's
    result must not depend on its place for this to be invisible)."""
    groups: dict[tuple[int, float], int] = {}

    def group(item: StepItem) -> tuple[int, int]:
        if item.merged is not None:
            return 1, groups.setdefault((id(item.merged), 0.0), len(groups))
        if item.lora is None:
            return 0, -1
        return 0, groups.setdefault((id(item.lora[0]), item.lora[1]), len(groups))

    keys = [group(item) for item in items]
    order = sorted(range(len(items)), key=keys.__getitem__)
    by_item = dict(zip(order, run([items[i] for i in order]), strict=True))
    return [by_item[i] for i in range(len(items))]


def merged_ranges(rows: Sequence[tuple[slice, MergedLora | None]]) -> list[tuple[slice, MergedLora]]:
    """The row ranges of consecutive (rows, merged entry) spans that share one merged entry (in
    `in_grouped_order` they come last and contiguous)."""
    groups: list[tuple[slice, MergedLora]] = []
    for span, merged in rows:
        if merged is None:
            continue
        if groups and groups[-1][1] is merged:
            groups[-1] = (slice(groups[-1][0].start, span.stop), merged)
        else:
            groups.append((span, merged))
    return groups
