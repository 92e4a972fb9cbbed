"""The structure of each architecture, as one table: what a layer holds and how it is computed.

Every backend, the LoRA code and `ModelConfig` read this table instead of restating it. The forward
pass is the same four products per layer for every architecture here (`PROJECTIONS`: Q|K|V from the
normed input, the attention output, gate|up from the normed input, down), each computing named
outputs (q, k, v, o, gate, up, down) of known width. A row of the table (`Architecture`) says which
GGUF weight matrices hold those outputs (one matrix per output, or one matrix holding several, as a
fused Q|K|V checkpoint does), their Hugging Face / PEFT names, which norm vectors a layer has, which
matrices an adapter may change, and the few switches in which the architectures' arithmetic differs.
Widths are symbolic (`Width`) and resolved by `ModelConfig.width`, so this module needs no config.

Adding an architecture is adding a row to ARCHITECTURES, and code only where its arithmetic truly
differs (docs/architectures.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Width = Literal["embd", "q", "kv", "ff", "head"]  # n_embd, n_head*head_dim, n_head_kv*head_dim, n_ff, head_dim
Output = Literal["q", "k", "v", "o", "gate", "up", "down"]
RopeLayout = Literal["interleaved", "neox"]
Activation = Literal["silu", "gelu"]

# The width of each output of a layer's products.
OUTPUT_WIDTHS: dict[Output, Width] = {"q": "q", "k": "kv", "v": "kv", "o": "embd", "gate": "ff", "up": "ff",
                                      "down": "embd"}


@dataclass(frozen=True)
class Projection:
    """One product of a layer: outputs that read the same input, computed as one (their columns concatenate)."""

    key: str  # "qkv", "attn_output", "gate_up", "ffn_down"
    inp: Width
    outputs: tuple[Output, ...]  # in column order


# The products of every layer, in forward order.
PROJECTIONS = (
    Projection("qkv", "embd", ("q", "k", "v")),
    Projection("attn_output", "q", ("o",)),
    Projection("gate_up", "embd", ("gate", "up")),
    Projection("ffn_down", "ff", ("down",)),
)


@dataclass(frozen=True)
class Matrix:
    """One weight matrix of a layer, `blk.{i}.{name}.weight`: the rows of one or more outputs, in order."""

    name: str  # GGUF name inside the layer: "attn_q"
    holds: tuple[Output, ...]  # ("q",); a fused checkpoint's attn_qkv: ("q", "k", "v")
    peft: str  # the Hugging Face module name PEFT adapters use: "q_proj"


@dataclass(frozen=True)
class Norm:
    """An RMS-norm weight vector of a layer, `blk.{i}.{name}.weight`."""

    name: str
    width: Width


@dataclass(frozen=True)
class Architecture:
    """One row of the table: a decoder-only transformer family as llama.cpp builds it.

    Raises ValueError at construction when its matrices (in row order) do not hold every output of
    every product exactly once and in column order, or its LoRA targets name a matrix it lacks.
    """

    name: str  # general.architecture in the GGUF file
    matrices: tuple[Matrix, ...]
    norms: tuple[Norm, ...]
    lora_targets: tuple[str, ...]  # Matrix names an adapter may change
    rope_layout: RopeLayout  # llama rotates pairs (x[2i], x[2i+1]); NeoX rotates halves
    activation: Activation  # of the gated FFN: act(gate) * up
    embedding_scaled: bool  # token embeddings multiplied by sqrt(n_embd) (gemma)
    sliding_window: bool  # layers alternate local (windowed) and global attention
    local_rope_base: float | None  # rope base of the windowed layers; None: the model's rope base
    permuted_qk: bool  # llama.cpp's converter permutes Q and K rows (and so a PEFT adapter's B rows)
    biases: tuple[str, ...] = ()  # matrices with a bias vector blk.{i}.{name}.bias added to their rows (qwen2)

    def __post_init__(self) -> None:
        for p in PROJECTIONS:
            held = tuple(out for m in self.projection_matrices(p.key) for out in m.holds)
            if held != p.outputs:
                raise ValueError(f"{self.name}: the matrices of {p.key} hold {held}, not {p.outputs}")
        names = {m.name for m in self.matrices}
        if not set(self.biases) <= names:
            raise ValueError(f"{self.name}: biases {sorted(set(self.biases) - names)} are no matrices")
        if not set(self.lora_targets) <= names:
            raise ValueError(f"{self.name}: LoRA targets {sorted(set(self.lora_targets) - names)} are no matrices")

    def projection_matrices(self, key: str) -> tuple[Matrix, ...]:
        """The matrices whose rows make up product `key`, in its column order."""
        outputs = projection(key).outputs
        return tuple(m for m in self.matrices if set(m.holds) <= set(outputs))

    def matrix_by_peft(self, module: str) -> Matrix | None:
        """The matrix a PEFT module name (q_proj, ...) adapts, or None."""
        return next((m for m in self.matrices if m.peft == module), None)

    def has_norm(self, name: str) -> bool:
        return any(n.name == name for n in self.norms)

    @property
    def lora_peft_modules(self) -> tuple[str, ...]:
        """The PEFT module names of the LoRA targets."""
        return tuple(m.peft for m in self.matrices if m.name in self.lora_targets)


def projection(key: str) -> Projection:
    """The product called `key`."""
    return next(p for p in PROJECTIONS if p.key == key)


def projection_of(matrix: Matrix) -> Projection:
    """The product whose outputs a matrix holds."""
    return next(p for p in PROJECTIONS if matrix.holds[0] in p.outputs)


def weight_name(layer: int, name: str) -> str:
    """The GGUF tensor name of a layer's matrix or norm vector: blk.{layer}.{name}.weight."""
    return f"blk.{layer}.{name}.weight"


def bias_name(layer: int, name: str) -> str:
    """The GGUF tensor name of a layer's matrix's bias vector: blk.{layer}.{name}.bias."""
    return f"blk.{layer}.{name}.bias"


# The matrices of a llama-style block (separate Q, K, V and gate, up): llama and gemma3 share them.
_LLAMA_MATRICES = (
    Matrix("attn_q", ("q",), "q_proj"),
    Matrix("attn_k", ("k",), "k_proj"),
    Matrix("attn_v", ("v",), "v_proj"),
    Matrix("attn_output", ("o",), "o_proj"),
    Matrix("ffn_gate", ("gate",), "gate_proj"),
    Matrix("ffn_up", ("up",), "up_proj"),
    Matrix("ffn_down", ("down",), "down_proj"),
)
_ALL_MATRICES = tuple(m.name for m in _LLAMA_MATRICES)
# Phi-3 keeps Q|K|V in one matrix and gate|up in another (Hugging Face's qkv_proj and gate_up_proj).
_PHI3_MATRICES = (
    Matrix("attn_qkv", ("q", "k", "v"), "qkv_proj"),
    Matrix("attn_output", ("o",), "o_proj"),
    Matrix("ffn_up", ("gate", "up"), "gate_up_proj"),
    Matrix("ffn_down", ("down",), "down_proj"),
)
_PLAIN_NORMS = (Norm("attn_norm", "embd"), Norm("ffn_norm", "embd"))

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            name="llama", matrices=_LLAMA_MATRICES, norms=_PLAIN_NORMS,
            lora_targets=_ALL_MATRICES, rope_layout="interleaved", activation="silu", embedding_scaled=False,
            sliding_window=False, local_rope_base=None, permuted_qk=True),
        Architecture(
            name="gemma3", matrices=_LLAMA_MATRICES,
            norms=(Norm("attn_norm", "embd"), Norm("attn_q_norm", "head"), Norm("attn_k_norm", "head"),
                   Norm("post_attention_norm", "embd"), Norm("ffn_norm", "embd"), Norm("post_ffw_norm", "embd")),
            lora_targets=_ALL_MATRICES, rope_layout="neox", activation="gelu", embedding_scaled=True,
            sliding_window=True, local_rope_base=10000.0, permuted_qk=False),
        Architecture(
            name="qwen2", matrices=_LLAMA_MATRICES, norms=_PLAIN_NORMS,
            lora_targets=_ALL_MATRICES, rope_layout="neox", activation="silu", embedding_scaled=False,
            sliding_window=False, local_rope_base=None, permuted_qk=False, biases=("attn_q", "attn_k", "attn_v")),
        Architecture(
            name="qwen3", matrices=_LLAMA_MATRICES,
            norms=(Norm("attn_norm", "embd"), Norm("attn_q_norm", "head"), Norm("attn_k_norm", "head"),
                   Norm("ffn_norm", "embd")),
            lora_targets=_ALL_MATRICES, rope_layout="neox", activation="silu", embedding_scaled=False,
            sliding_window=False, local_rope_base=None, permuted_qk=False),
        # Phi-3's sliding window is in its files but llama.cpp ignores it ("Phi SWA is currently
        # disabled"), and it is the oracle: every layer attends over the whole causal context.
        Architecture(
            name="phi3", matrices=_PHI3_MATRICES, norms=_PLAIN_NORMS,
            lora_targets=tuple(m.name for m in _PHI3_MATRICES), rope_layout="neox", activation="silu",
            embedding_scaled=False, sliding_window=False, local_rope_base=None, permuted_qk=False),
    )
}
