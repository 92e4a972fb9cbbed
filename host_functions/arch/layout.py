"""The structure of each architecture, as one table: what a layer holds and how it is computed.

Every backend, the LoRA code and `ModelConfig` read this table instead of restating it: the weight
matrices of a layer (GGUF names, widths, their Hugging Face / PEFT names), which of them fuse into
one projection because they share an input (Q|K|V, gate|up), the norm vectors, the LoRA targets,
and the few switches in which the architectures' forward passes differ. Widths are symbolic
(`Width`) and resolved by `ModelConfig.width`, so this module needs no config to describe a model.

Adding an architecture is adding a row to ARCHITECTURES (and code only where its arithmetic truly
differs, e.g. a bias add).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Width = Literal["embd", "q", "kv", "ff", "head"]  # n_embd, n_head*head_dim, n_head_kv*head_dim, n_ff, head_dim
RopeLayout = Literal["interleaved", "neox"]
Activation = Literal["silu", "gelu"]


@dataclass(frozen=True)
class Matrix:
    """One weight matrix of a layer: `blk.{i}.{name}.weight`, (out, in) in NumPy order."""

    name: str  # GGUF name inside the layer: "attn_q"
    out: Width
    inp: Width
    peft: str  # the Hugging Face module name PEFT adapters use: "q_proj"


@dataclass(frozen=True)
class Projection:
    """Matrices that read the same input and run as one product; their outputs concatenate in order."""

    key: str  # "qkv", "attn_output", "gate_up", "ffn_down"
    parts: tuple[str, ...]  # Matrix names, in output order


@dataclass(frozen=True)
class Norm:
    """An RMS-norm weight vector of a layer: `blk.{i}.{name}.weight`."""

    name: str
    width: Width


@dataclass(frozen=True)
class Architecture:
    """One row of the table: a decoder-only transformer family as llama.cpp builds it."""

    name: str  # general.architecture in the GGUF file
    matrices: tuple[Matrix, ...]
    projections: tuple[Projection, ...]  # in forward order
    norms: tuple[Norm, ...]
    lora_targets: tuple[str, ...]  # Matrix names an adapter may change
    rope_layout: RopeLayout  # llama rotates pairs (x[2i], x[2i+1]); NeoX rotates halves
    activation: Activation  # of the gated FFN: act(gate) * up
    embedding_scaled: bool  # token embeddings multiplied by sqrt(n_embd) (gemma)
    qk_norm: bool  # RMS norms on each Q and K head before rope
    sandwich_norms: bool  # norms on the attention and FFN outputs before the residual add
    sliding_window: bool  # layers alternate local (windowed) and global attention
    local_rope_base: float | None  # rope base of the windowed layers; None: the model's rope base
    permuted_qk: bool  # llama.cpp's converter permutes Q and K rows (and so a PEFT adapter's B rows)

    def matrix(self, name: str) -> Matrix:
        """The Matrix called `name`; KeyError if this architecture has none."""
        for m in self.matrices:
            if m.name == name:
                return m
        raise KeyError(f"{self.name} has no weight {name!r}")

    def projection_of(self, matrix: str) -> Projection:
        """The fused projection a matrix is part of."""
        return next(p for p in self.projections if matrix in p.parts)

    def matrix_by_peft(self, module: str) -> Matrix | None:
        """The matrix a PEFT module name (q_proj, ...) adapts, or None."""
        return next((m for m in self.matrices if m.peft == module), None)


# The matrices of a llama-style block (attention, gated FFN); every architecture here has them.
_LLAMA_MATRICES = (
    Matrix("attn_q", "q", "embd", "q_proj"),
    Matrix("attn_k", "kv", "embd", "k_proj"),
    Matrix("attn_v", "kv", "embd", "v_proj"),
    Matrix("attn_output", "embd", "q", "o_proj"),
    Matrix("ffn_gate", "ff", "embd", "gate_proj"),
    Matrix("ffn_up", "ff", "embd", "up_proj"),
    Matrix("ffn_down", "embd", "ff", "down_proj"),
)
_LLAMA_PROJECTIONS = (
    Projection("qkv", ("attn_q", "attn_k", "attn_v")),
    Projection("attn_output", ("attn_output",)),
    Projection("gate_up", ("ffn_gate", "ffn_up")),
    Projection("ffn_down", ("ffn_down",)),
)
_ALL_MATRICES = tuple(m.name for m in _LLAMA_MATRICES)

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            name="llama", matrices=_LLAMA_MATRICES, projections=_LLAMA_PROJECTIONS,
            norms=(Norm("attn_norm", "embd"), Norm("ffn_norm", "embd")),
            lora_targets=_ALL_MATRICES, rope_layout="interleaved", activation="silu", embedding_scaled=False,
            qk_norm=False, sandwich_norms=False, sliding_window=False, local_rope_base=None, permuted_qk=True),
        Architecture(
            name="gemma3", matrices=_LLAMA_MATRICES, projections=_LLAMA_PROJECTIONS,
            norms=(Norm("attn_norm", "embd"), Norm("attn_q_norm", "head"), Norm("attn_k_norm", "head"),
                   Norm("post_attention_norm", "embd"), Norm("ffn_norm", "embd"), Norm("post_ffw_norm", "embd")),
            lora_targets=_ALL_MATRICES, rope_layout="neox", activation="gelu", embedding_scaled=True,
            qk_norm=True, sandwich_norms=True, sliding_window=True, local_rope_base=10000.0, permuted_qk=False),
    )
}
