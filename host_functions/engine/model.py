"""A loaded model (shared weights, tokenizer, backend) and the sequences that run on it.

`Model` is what every tenant shares; `Sequence` is one KV cache (a block table in the model's KV
pool) plus the step in progress. A step is append -> forward_layer(0..n_layers-1) -> finish, which
is exactly what the guest ABI exposes. No activation is visible between layers, so `forward_layer`
only checks the order and `finish` hands the whole step to `Model.run_step`: a model loaded with
`batched=True` owns a `Scheduler` that batches the steps of every live sequence; without one the step
runs at once on the backend. One hand-off per step (per prefill chunk), never per layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np

from host_functions.arch.config import ModelConfig
from host_functions.backends.base import Backend, LogitsWanted, StepItem
from host_functions.engine.scheduler import Scheduler, StepOwner
from host_functions.engine.step_rules import (
    check_appendable,
    check_next_layer,
    check_room,
    check_step_complete,
    check_token_ids,
)
from host_functions.errors import AdapterError, BackendError, ModelFormatError, SequenceError
from host_functions.fair_share import NO_TENANT, Claim
from host_functions.formats.gguf_file import GGUFFile
from host_functions.kv.block_table import KVCache
from host_functions.kv.prefix_keys import block_keys, sequence_key
from host_functions.lora.adapter import LoraAdapter
from host_functions.lora.merged import MergedLora
from host_functions.lora.pool import AdapterPool
from host_functions.tokenizer import Tokenizer

BACKENDS = ("auto", "cpu", "numpy", "wgpu")
DEFAULT_SEQUENCE_CAPACITY = 4096
# A step of more tokens runs as chunks of this many, cut by the sequence alone (never by what else is
# in the batch), so attention sees the same query blocks in any company (batch invariance) and a
# long prompt shares the scheduler's per-step token budget with other tenants.
PREFILL_CHUNK = 128


def create_backend(name: str, config: ModelConfig, gguf: GGUFFile,
                   progress: Callable[[float], None] | None = None) -> Backend:
    """Instantiate a backend by name; "auto" picks wgpu on a real GPU adapter, else cpu.

    numpy is the float32 reference, only ever chosen by name. Raises BackendError for an unknown name
    or a backend that cannot start here.
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "auto":
        name = "wgpu" if _real_gpu_available() else "cpu"
    if name == "wgpu":
        from host_functions.backends.wgpu.backend import WgpuBackend

        return WgpuBackend(config, gguf.tensors, progress=progress)
    if name == "cpu":
        from host_functions.backends.cpu_backend import CpuBackend

        return CpuBackend(config, gguf.tensors, progress=progress)
    from host_functions.backends.numpy_backend import NumpyBackend

    return NumpyBackend(config, gguf.tensors, progress=progress)


def _real_gpu_available() -> bool:
    try:
        from host_functions.backends.wgpu.context import GPUContext

        return not GPUContext.get().is_cpu_adapter
    except Exception:  # no wgpu, no adapter, no driver: the CPU path is the answer
        return False


class Model:
    """One GGUF model loaded for inference: config, tokenizer, a compute backend and its KV pool."""

    def __init__(self, path: Path, config: ModelConfig, tokenizer: Tokenizer, backend: Backend,
                 scheduler: Scheduler | None = None, adapters: AdapterPool | None = None) -> None:
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.backend = backend
        self.scheduler = scheduler  # batches every sequence's steps; None: each step runs alone, at once
        # LoRA adapters loaded for this model, shared by every tenant
        self.adapters = AdapterPool(config) if adapters is None else adapters

    @classmethod
    def load(cls, path: str | Path, backend: str = "numpy",
             progress: Callable[[float], None] | None = None, kv_memory: int | None = None,
             batched: bool = False) -> Model:
        """Read, validate and prepare a GGUF model with a KV pool of kv_memory bytes (default: from
        free memory), with a Scheduler if `batched`; raises RealmError subclasses on bad files or a
        budget too small for one block."""
        gguf = GGUFFile(path)
        config = ModelConfig.from_gguf(gguf)
        tokenizer = Tokenizer.from_metadata(gguf.metadata)
        if tokenizer.vocab_size != config.n_vocab:  # llama.cpp refuses such a file too
            raise ModelFormatError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, token_embd.weight "
                                   f"{config.n_vocab} rows")
        compute = create_backend(backend, config, gguf, progress)
        compute.configure_kv(kv_memory)
        return cls(gguf.path, config, tokenizer, compute, Scheduler(compute, gguf.path.name) if batched else None)

    def set_kv_memory(self, budget_bytes: int) -> None:
        """Replace the KV pool by one of budget_bytes; only while no sequence holds blocks."""
        pool = self.backend.kv_pool
        if pool is not None and pool.stats().blocks_used:
            raise SequenceError("cannot resize the KV pool while sequences hold blocks")
        self.backend.configure_kv(budget_bytes)

    def run_step(self, item: StepItem, owner: StepOwner | None = None) -> np.ndarray | None:
        """Run one sequence's step: through the scheduler, batched with every other sequence's (see
        Scheduler.run for what it raises), or without one alone and now, raising KVPoolFull (naming
        the budget) when the pool has no room: nothing waits then."""
        if self.scheduler is not None:
            return self.scheduler.run(item, owner or StepOwner())
        with self.backend.step_lock:
            item.cache.reserve(item.pos + len(item.tokens), (owner or StepOwner()).kv_claim)
            return self.backend.step([item])[0]

    def first_layers(self, n_layers: int) -> Model:
        """The same model cut after its first n_layers, straight into the output head (self-speculation's
        draft): it shares the weights and the backend, and its sequences run n_layers per step."""
        if not 1 <= n_layers < self.config.n_layers:
            raise SequenceError(f"a model of {self.config.n_layers} layers can be cut after "
                                f"1..{self.config.n_layers - 1} layers, not {n_layers}")
        # One backend, scheduler and adapter pool: its steps are batched with ours.
        return Model(self.path, dataclasses.replace(self.config, n_layers=n_layers), self.tokenizer, self.backend,
                     self.scheduler, self.adapters)

    def open_sequence(self, capacity: int | None = None, n_ctx: int | None = None) -> Sequence:
        """A new empty sequence with its own KV cache of at most `capacity` tokens, set up for a context
        of n_ctx tokens (default: its capacity), which picks LongRoPE's factors as llama.cpp's n_ctx
        does. Raises SequenceError unless 0 < capacity <= n_ctx <= the model's context length."""
        limit = min(self.config.context_length, DEFAULT_SEQUENCE_CAPACITY) if capacity is None else capacity
        context = limit if n_ctx is None else n_ctx
        if not 0 < limit <= context <= self.config.context_length:
            raise SequenceError(f"sequence capacity must be 1..{self.config.context_length} and at most its "
                                f"context, got capacity {limit} in a context of {context}")
        return Sequence(self, limit, context)

    def hidden_states(self, tokens: Seq[int], owner: StepOwner | None = None,
                      n_ctx: int | None = None) -> np.ndarray:
        """The final hidden states (after the output norm) at every position of `tokens`, one prefill
        in a sequence of its own set up for n_ctx positions (default: just the tokens), batched with
        every other sequence's steps: float32 (n_tokens, n_embd). Raises SequenceError when the tokens
        exceed n_ctx or n_ctx the model's context, and what the step runner raises for `owner`."""
        seq = self.open_sequence(max(len(tokens), 1), n_ctx)
        try:
            seq.append(tokens)
            for layer in range(self.config.n_layers):
                seq.forward_layer(layer)
            return seq.finish(owner=owner, hidden=True)
        finally:
            seq.close()

    def logits_for(self, tokens: Seq[int], lora: tuple[LoraAdapter, float] | None = None,
                   merged: bool = False, n_ctx: int | None = None) -> np.ndarray:
        """Logits at every position of `tokens` (one prefill pass) in a sequence set up for n_ctx
        positions (default: just the tokens; LongRoPE's factors depend on it), with an optional
        (adapter, scale) applied unmerged or `merged`: float32 (n_tokens, n_vocab). Raises
        SequenceError when the tokens exceed n_ctx or n_ctx the model's context, AdapterError when
        merged weights do not fit their budget or the backend cannot merge."""
        seq = self.open_sequence(max(len(tokens), 1) if n_ctx is None else n_ctx)
        try:
            if lora is not None:
                seq.set_adapter(*lora, merged=merged)
            seq.append(tokens)
            for layer in range(self.config.n_layers):
                seq.forward_layer(layer)
            return seq.finish(all_positions=True)
        finally:
            seq.close()


class Sequence:
    """One token sequence: its KV cache, committed tokens and the step in progress."""

    def __init__(self, model: Model, capacity: int, n_ctx: int | None = None) -> None:
        self.model = model
        self.capacity = capacity
        self.n_ctx = capacity if n_ctx is None else n_ctx  # the context it is set up for (LongRoPE's factors)
        self.tokens: list[int] = []  # in the KV cache
        self.pending: list[int] = []  # appended, not yet run through the layers
        self.layers_done = 0  # layer calls of the step in progress (order only: the step runs at finish)
        self._cache: KVCache | None = model.backend.new_cache(capacity)
        self.adapter: tuple[LoraAdapter, float] | None = None  # applied to every step from now on
        self.merged: MergedLora | None = None  # that adapter merged into the weights (merged mode), held
        self._merged_tenant = ""  # whose share `merged` is charged to
        self.cached_tokens = 0  # prompt positions taken from the prefix cache instead of computed
        self._redo = 0  # last committed tokens whose KV is not held (a shared block was dropped): rerun first
        self._chain: bytes | None = None  # the prefix key its blocks were computed under (b"": mixed)

    @property
    def closed(self) -> bool:
        return self._cache is None

    @property
    def kv_blocks(self) -> int:
        """Pool blocks this sequence holds now."""
        return 0 if self._cache is None else len(self._cache.blocks)

    def append(self, ids: Seq[int]) -> None:
        """Queue tokens for the next step."""
        self._open_cache()
        check_appendable(self)
        check_room(self, len(ids))
        check_token_ids(np.asarray(ids, np.int64), self.model.config.n_vocab)
        self.pending.extend(int(t) for t in ids)

    def set_adapter(self, adapter: LoraAdapter | None, scale: float = 1.0, merged: bool = False,
                    claim: Claim = NO_TENANT) -> None:
        """Apply `adapter` at `scale` (None: no adapter) to the steps from now on, unmerged (W x + s B (A x))
        or `merged` (W + s B A, a cached copy, charged to claim.tenant); the base weights stay as they are.

        Raises AdapterError when the merged weights can never fit the backend's budget (or what the
        tenant may hold), or the backend runs LoRA unmerged only; Overloaded when they do not fit now
        beside those in use (or the tenant's share); the sequence keeps its previous adapter then.
        """
        self._open_cache()
        entry = None
        if adapter is not None and merged:
            cache = self.model.backend.merged_lora
            if cache is None:
                raise AdapterError(f"the {self.model.backend.name} backend applies LoRA unmerged only")
            entry = cache.acquire(adapter, float(scale), claim)
        self._release_merged()
        self._merged_tenant = claim.tenant
        self.adapter = None if adapter is None else (adapter, float(scale))
        self.merged = entry

    def forward_layer(self, layer: int) -> None:
        """Record that layer `layer` (they must come in order 0, 1, ...) is wanted; it runs at finish."""
        self._open_cache()
        check_next_layer(self, layer, self.model.config.n_layers)
        self.layers_done += 1

    def finish(self, all_positions: bool = False, owner: StepOwner | None = None, hidden: bool = False) -> np.ndarray:
        """Run the step through the model's step runner: logits of the last pending token (n_vocab,),
        or (n_pending, n_vocab) of all of them; with `hidden`, instead of logits, the hidden states of
        all of them after the output norm (n_pending, n_embd), what embeddings pool.

        The pending tokens go in chunks of PREFILL_CHUNK, each committed once it has run. A first
        step takes the longest prefix of full blocks its tenant has cached (docs/prefix_cache.md) and
        runs only the rest (at least its last token). Whatever the runner raises (KVPoolFull, a
        deadline, a cancellation) propagates; the tokens not committed are dropped and their KV blocks
        given back, so the sequence stays usable.
        """
        cache = self._open_cache()
        check_step_complete(self, self.model.config.n_layers)
        owner = owner or StepOwner()
        committed = list(self.tokens)
        redo = self.tokens[len(self.tokens) - self._redo:] if self._redo else []
        del self.tokens[len(self.tokens) - len(redo):]
        work, self.pending, self.layers_done, self._redo = redo + self.pending, [], 0, 0
        key = self._prefix_key(owner.tenant)
        every: LogitsWanted | None = "hidden" if hidden else "all" if all_positions else None
        reuse = not self.tokens and every is None and cache.pool.prefix_cache  # cached positions give no rows
        keys = block_keys(key, work[:-1], cache.pool.block_tokens) if reuse else []
        try:
            with cache.pool.gate.hold(keys[-1] if keys else None, owner.deadline, owner.should_stop):
                if keys:
                    taken = cache.take_prefix(keys, len(work) - 1, owner.tenant)
                    self.tokens, work = work[:taken], work[taken:]
                    self.cached_tokens += taken
                rows = self._run_chunks(cache, work, every, owner)
                if self._chain == key:
                    cache.register(key, self.tokens)
        except BaseException:
            done = len(self.tokens)
            if done < len(committed):
                self.tokens = committed
            self._cut_kv(done)
            raise
        return np.concatenate(rows)[len(redo):] if every else rows[-1]

    def _run_chunks(self, cache: KVCache, work: list[int], every: LogitsWanted | None,
                    owner: StepOwner) -> list[np.ndarray]:
        """Run `work` in chunks of PREFILL_CHUNK, committing each; the rows each chunk gave: `every`
        ("all" logits or "hidden" states) of every position, else the last position's logits."""
        rows: list[np.ndarray] = []
        for start in range(0, len(work), PREFILL_CHUNK):
            chunk = work[start : start + PREFILL_CHUNK]
            last = start + PREFILL_CHUNK >= len(work)
            wants: LogitsWanted = every or ("last" if last else "none")
            item = StepItem(np.asarray(chunk, np.int32), len(self.tokens), cache, wants,
                            self.model.config.n_layers, self.adapter, self.merged, self.n_ctx)
            logits = self.model.run_step(item, owner)
            self.tokens.extend(chunk)
            if logits is not None:
                rows.append(logits)
        return rows

    def _prefix_key(self, tenant: str) -> bytes:
        """The chain start of this sequence's blocks (prefix_keys): what their keys and values depend
        on. A sequence whose adapter changes with positions already run stops offering its blocks."""
        adapter = None if self.adapter is None else (self.adapter[0].digest, self.adapter[1], self.merged is not None)
        key = sequence_key(tenant, str(self.model.path), self.model.config.n_layers, self.n_ctx, adapter)
        if self._chain is None or not self.tokens:
            self._chain = key
        elif self._chain != key:
            self._chain = b""
        return key

    def _cut_kv(self, n: int) -> None:
        """Keep the KV of positions 0..n-1 at most; what a shared block held is recomputed at the next step."""
        assert self._cache is not None
        self._redo = len(self.tokens) - self._cache.truncate(n)

    def fork(self) -> Sequence:
        """A new sequence with the same tokens, adapter and context, sharing this one's full KV blocks
        (its partly filled last block is recomputed at the child's next step). Raises SequenceError
        while a step is in progress or once closed, AdapterError as set_adapter."""
        cache = self._open_cache()
        if self.pending or self.layers_done:
            raise SequenceError("cannot fork a sequence with a step in progress")
        child = Sequence(self.model, self.capacity, self.n_ctx)
        assert child._cache is not None
        child._cache.free()
        child._cache = cache.fork(len(self.tokens) - self._redo)
        child.tokens, child._chain = list(self.tokens), self._chain
        child._redo = len(self.tokens) - len(child._cache.blocks) * cache.pool.block_tokens
        if self.adapter is not None:
            child.set_adapter(*self.adapter, merged=self.merged is not None,
                              claim=Claim(self._merged_tenant))
        return child

    def step(self, ids: Seq[int], owner: StepOwner | None = None) -> np.ndarray:
        """append + every layer + finish: the logits after the last of `ids`."""
        self.append(ids)
        for layer in range(self.model.config.n_layers):
            self.forward_layer(layer)
        return self.finish(owner=owner)

    def truncate(self, n: int) -> None:
        """Keep only the first n committed tokens (drops any step in progress), freeing their blocks."""
        self._open_cache()
        if not 0 <= n <= len(self.tokens):
            raise SequenceError(f"cannot truncate a {len(self.tokens)}-token sequence to {n}")
        kept = len(self.tokens) - self._redo
        del self.tokens[n:]
        self.pending, self.layers_done = [], 0
        self._cut_kv(min(n, kept))

    def close(self) -> None:
        """Give the KV blocks back; further use raises SequenceError."""
        if self._cache is not None:
            self._cache.free()
        self._cache = None
        self._release_merged()

    def _release_merged(self) -> None:
        if self.merged is not None and self.model.backend.merged_lora is not None:
            self.model.backend.merged_lora.release(self.merged, self._merged_tenant)
        self.merged = None

    def _open_cache(self) -> KVCache:
        """The sequence's KV cache; SequenceError once the sequence is closed."""
        if self._cache is None:
            raise SequenceError("sequence is closed")
        return self._cache
