"""ModelConfig: every hyperparameter of a model, read from GGUF metadata once.

Nothing else in Realm reads architecture keys; it asks the config (including the per-layer
facts such as a gemma3 layer's sliding window and rope base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from host_functions.arch.layout import (
    ARCHITECTURES,
    OUTPUT_WIDTHS,
    Activation,
    Architecture,
    Matrix,
    Output,
    RopeLayout,
    Width,
    bias_name,
    projection,
    projection_of,
    weight_name,
)
from host_functions.errors import ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import GGUFFile

SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
MAX_CONTEXT = 1 << 24  # tokens: the largest context_length a model may declare


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only transformer of one of the architectures in arch.layout."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layers: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    norm_eps: float
    rope_base: float
    rope_base_local: float  # rope base of sliding-window layers (gemma3); equals rope_base elsewhere
    rope_layout: RopeLayout  # llama rotates pairs (x[2i], x[2i+1]); gemma3, qwen2, qwen3, phi3 rotate halves (NeoX)
    sliding_window: int  # 0: no sliding-window layers
    context_length: int
    embedding_scale: float  # gemma multiplies token embeddings by sqrt(n_embd)
    ffn_activation: Activation
    qk_norm: bool  # RMS norms on Q and K heads before rope (the layout has attn_q_norm: gemma3, qwen3)
    sandwich_norms: bool  # post-attention and post-FFN norms (the layout has post_attention_norm: gemma3)
    tied_output: bool  # no output.weight: logits use token_embd.weight
    # The rope factor vectors that divide each pair's angle: ("rope_freqs.weight",) (Llama 3.1), LongRoPE's
    # ("rope_factors_short.weight", "rope_factors_long.weight") (Phi-3), or none; see rope_factors.
    rope_factor_sets: tuple[str, ...]
    rope_original_context: int  # LongRoPE's long factors serve sequences set up for more positions than this
    rope_attn_factor: float  # cos and sin are multiplied by it (LongRoPE's attention scaling; 1 elsewhere)

    @property
    def layout(self) -> Architecture:
        """This architecture's row of the structure table (arch.layout)."""
        return ARCHITECTURES[self.arch]

    def width(self, width: Width) -> int:
        """A symbolic width of the structure table in this model's numbers."""
        return {"embd": self.n_embd, "q": self.q_dim, "kv": self.kv_dim, "ff": self.n_ff, "head": self.head_dim}[width]

    def matrix_shape(self, matrix: Matrix) -> tuple[int, int]:
        """A layer matrix's (rows, columns): the widths of the outputs it holds, summed, by its product's input."""
        return sum(self.width(OUTPUT_WIDTHS[out]) for out in matrix.holds), self.width(projection_of(matrix).inp)

    def matrix_rows(self, matrix: Matrix) -> dict[Output, slice]:
        """The rows of each output a layer matrix holds (a fused attn_qkv: q, k, v), in its row order."""
        return self._stacked(matrix.holds)

    def output_columns(self, key: str) -> dict[Output, slice]:
        """The columns of each output (q, k, v for "qkv") in the result of product `key`."""
        return self._stacked(projection(key).outputs)

    def _stacked(self, outputs: tuple[Output, ...]) -> dict[Output, slice]:
        """Where each of `outputs` lies when their widths are laid end to end."""
        spans: dict[Output, slice] = {}
        at = 0
        for out in outputs:
            width = self.width(OUTPUT_WIDTHS[out])
            spans[out] = slice(at, at + width)
            at += width
        return spans

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    def is_sliding(self, layer: int) -> bool:
        """gemma3 interleaves five sliding-window layers with one global layer."""
        return self.sliding_window > 0 and layer % 6 < 5

    def layer_window(self, layer: int) -> int:
        """How many most recent positions (the current one included) a layer attends to; 0 means all."""
        return self.sliding_window if self.is_sliding(layer) else 0

    def layer_rope_base(self, layer: int) -> float:
        return self.rope_base_local if self.is_sliding(layer) else self.rope_base

    @property
    def long_rope(self) -> bool:
        """Whether the rope factors depend on the context a sequence is set up for (LongRoPE)."""
        return len(self.rope_factor_sets) == 2

    def rope_factors(self, n_ctx: int) -> str | None:
        """The rope factor tensor of a sequence set up for n_ctx positions (None: no factors).

        As llama.cpp's build_rope_factors: rope_freqs where the file has it, else LongRoPE's long
        factors when n_ctx exceeds rope.scaling.original_context_length and its short ones otherwise.
        """
        if not self.rope_factor_sets:
            return None
        return self.rope_factor_sets[-1 if n_ctx > self.rope_original_context else 0]

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> ModelConfig:
        """Read and validate the hyperparameters; raises ModelFormatError or UnsupportedError."""
        arch = f.require("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedError(
                f"{f.path}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        n_embd = _integer(f, f"{arch}.embedding_length")
        n_head = _integer(f, f"{arch}.attention.head_count")
        head_dim = _integer(f, f"{arch}.attention.key_length", n_embd // max(n_head, 1))
        embd = f.tensor("token_embd.weight")
        row = ARCHITECTURES[arch]
        rope_base = _number(f, f"{arch}.rope.freq_base", 10000.0)
        context_length = _integer(f, f"{arch}.context_length", 2048)
        cfg = cls(
            arch=arch,
            n_vocab=embd.shape[0],
            n_embd=n_embd,
            n_layers=_integer(f, f"{arch}.block_count"),
            n_ff=_integer(f, f"{arch}.feed_forward_length"),
            n_head=n_head,
            n_head_kv=_integer(f, f"{arch}.attention.head_count_kv", n_head),
            head_dim=head_dim,
            norm_eps=_number(f, f"{arch}.attention.layer_norm_rms_epsilon"),
            rope_base=rope_base,
            rope_base_local=rope_base if row.local_rope_base is None else row.local_rope_base,
            rope_layout=row.rope_layout,
            sliding_window=_integer(f, f"{arch}.attention.sliding_window", 0) if row.sliding_window else 0,
            context_length=context_length,
            embedding_scale=math.sqrt(n_embd) if row.embedding_scaled else 1.0,
            ffn_activation=row.activation,
            qk_norm=row.has_norm("attn_q_norm"),
            sandwich_norms=row.has_norm("post_attention_norm"),
            tied_output="output.weight" not in f.tensors,
            rope_factor_sets=_rope_factor_sets(f),
            rope_original_context=_integer(f, f"{arch}.rope.scaling.original_context_length", context_length),
            rope_attn_factor=_number(f, f"{arch}.rope.scaling.attn_factor", 1.0),
        )
        cfg._validate(f)
        return cfg

    def _validate(self, f: GGUFFile) -> None:
        if min(self.n_embd, self.n_layers, self.n_ff, self.n_head, self.n_head_kv, self.head_dim) <= 0:
            raise ModelFormatError(f"{f.path}: non-positive model dimension in metadata")
        if self.n_layers > len(f.tensors):  # each layer has tensors: a claim of 2^40 layers is refused, not walked
            raise ModelFormatError(f"{f.path}: block_count {self.n_layers} is more than the file's "
                                   f"{len(f.tensors)} tensors")
        if not 0 < self.context_length <= MAX_CONTEXT or not 0 < self.norm_eps < 1 or not 0 < self.rope_base < 1e12:
            raise ModelFormatError(f"{f.path}: context_length, layer_norm_rms_epsilon or rope.freq_base out of range")
        if not 0 < self.rope_original_context <= MAX_CONTEXT or not 0 < self.rope_attn_factor < 100:
            raise ModelFormatError(f"{f.path}: rope.scaling.original_context_length or attn_factor out of range")
        for key in ("attention.value_length", "rope.dimension_count"):  # partial rotary, V heads of their own
            value = f.get(f"{self.arch}.{key}", self.head_dim)
            if value != self.head_dim:
                raise UnsupportedError(f"{f.path}: {self.arch}.{key} {value} differs from the head size "
                                       f"{self.head_dim}; Realm supports only equal ones")
        if self.n_head % self.n_head_kv:
            raise ModelFormatError(
                f"{f.path}: head_count {self.n_head} is not a multiple of head_count_kv {self.n_head_kv}")
        for name, shape in self.expected_tensors().items():
            f.tensor(name, shape)

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward pass reads, by GGUF name, with its NumPy-order shape."""
        d, hd = self.n_embd, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.n_vocab, d),
            "output_norm.weight": (d,),
        }
        if not self.tied_output:
            shapes["output.weight"] = (self.n_vocab, d)
        shapes |= {name: (hd // 2,) for name in self.rope_factor_sets}
        layout = self.layout
        for i in range(self.n_layers):
            shapes |= {weight_name(i, m.name): self.matrix_shape(m) for m in layout.matrices}
            shapes |= {bias_name(i, m.name): (self.matrix_shape(m)[0],) for m in layout.matrices
                       if m.name in layout.biases}
            shapes |= {weight_name(i, n.name): (self.width(n.width),) for n in layout.norms}
        return shapes


def _integer(f: GGUFFile, key: str, default: int | None = None) -> int:
    """A metadata value that must be an integer (required when there is no default)."""
    value = f.require(key) if default is None else f.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFormatError(f"{f.path}: metadata key {key} must be an integer, got {_shown(value)}")
    return value


def _number(f: GGUFFile, key: str, default: float | None = None) -> float:
    """A metadata value that must be a finite number (required when there is no default)."""
    value = f.require(key) if default is None else f.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelFormatError(f"{f.path}: metadata key {key} must be a finite number, got {_shown(value)}")
    return float(value)


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, (str, int, float)) else f"a {type(value).__name__}"


def _rope_factor_sets(f: GGUFFile) -> tuple[str, ...]:
    """The rope factor tensors a file holds (ModelConfig.rope_factor_sets); ModelFormatError for half of
    LongRoPE's pair."""
    if "rope_freqs.weight" in f.tensors:
        return ("rope_freqs.weight",)
    long_rope = ("rope_factors_short.weight", "rope_factors_long.weight")
    present = [name for name in long_rope if name in f.tensors]
    if present and len(present) < 2:
        raise ModelFormatError(f"{f.path}: {present[0]} without its LongRoPE counterpart")
    return long_rope if present else ()
