"""llama.cpp as the oracle: reference data in tests/data and the tolerances of its README.

tests/data/REFERENCE.md (a copy of the shared reference README) states what an independent correct
implementation reaches per position: cosine similarity to llama.cpp's logits, max abs error relative to
the largest logit, and argmax agreement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    max_rel_error: float
    min_argmax_agreement: float


EXACT = Tolerance(0.99999, 1e-3, 1.0)  # F32, F16
BF16 = Tolerance(0.9999, 1e-2, 1.0)
QUANTIZED = Tolerance(0.999, 5e-2, 0.8)  # llama.cpp quantizes activations inside quantized dot products
LORA_F32 = Tolerance(0.9998, 2e-2, 1.0)
LORA_QUANTIZED = Tolerance(0.99, 1e-1, 0.8)


def tolerance_for(weights: str, lora: bool = False) -> Tolerance:
    """The README's tolerance for a model whose 2-D weights are in format `weights`."""
    if lora:
        return LORA_F32 if weights == "F32" else LORA_QUANTIZED
    return {"F32": EXACT, "F16": EXACT, "BF16": BF16}.get(weights, QUANTIZED)


def tiny_models() -> list[tuple[str, str]]:
    """(gguf file name, weight format) of every tiny reference model."""
    manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
    return [(name, m["weights"]) for name, m in manifest.items() if "weights" in m]


def weights_of(gguf_name: str) -> str:
    """The weight format of a tiny reference model, as its MANIFEST entry says."""
    return dict(tiny_models())[gguf_name]


def lora_cases() -> list[tuple[str, str, str, float]]:
    """(logits file, base gguf, adapter gguf, scale) for every LoRA reference."""
    manifest = json.loads((DATA / "MANIFEST.json").read_text())["models"]
    return [(name, m["base"], m["lora"], m["scale"]) for name, m in manifest.items() if "lora" in m]


def reference_sequences(logits_file: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(token ids, llama.cpp logits (n_tokens, n_vocab))] for each sequence in a .logits.npz."""
    ref = np.load(DATA / logits_file)
    return [(ref[f"tokens{i}"], ref[f"seq{i}"]) for i in range(2) if f"tokens{i}" in ref]


ARCHS = DATA / "tiny-archs"  # qwen2, qwen3, Llama 3 and phi3 models (a subset of the reference's formats)


@dataclass(frozen=True)
class ArchSequence:
    """One sequence of a tiny-archs logits file: its key (seq0, seq0_ctx8192, ...), token ids, llama.cpp's
    logits and the context llama.cpp set the sequence up for."""

    key: str
    tokens: np.ndarray
    logits: np.ndarray
    n_ctx: int


def arch_models() -> list[tuple[str, str]]:
    """(gguf file name, weight format) of every tiny-archs model with weights copied into tests/data/tiny-archs
    (vocab-only files are the tokenizer tests')."""
    manifest = json.loads((ARCHS / "MANIFEST.json").read_text())["models"]
    return [(name, m["weights"]) for name, m in manifest.items()
            if (ARCHS / name).is_file() and not m.get("vocab_only")]


def arch_sequences(gguf_name: str) -> list[ArchSequence]:
    """Every sequence llama.cpp computed for a tiny-archs model, with its n_ctx (MANIFEST)."""
    entry = json.loads((ARCHS / "MANIFEST.json").read_text())["models"][gguf_name]
    ref = np.load(ARCHS / entry["logits"])
    return [ArchSequence(key, ref[f"tokens{key[3]}"], ref[key], n_ctx) for key, n_ctx in entry["n_ctx"].items()]


def arch_tolerance(gguf_name: str, weights: str) -> Tolerance:
    """The README's tolerance for a tiny-archs model: the table's, but max rel error 2e-3 for phi3 F16
    (its attn_factor magnifies llama.cpp's f16 rounding of activations and of the KV cache)."""
    if gguf_name.startswith("tiny-phi3-") and weights == "F16":
        return Tolerance(EXACT.min_cosine, 2e-3, EXACT.min_argmax_agreement)
    return tolerance_for(weights)


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Worst-position cosine, worst relative max-abs error, and argmax agreement over positions."""
    ours, theirs = np.atleast_2d(ours).astype(np.float64), np.atleast_2d(theirs).astype(np.float64)
    cos = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    rel = np.abs(ours - theirs).max(1) / np.abs(theirs).max(1)
    agree = np.mean(ours.argmax(1) == theirs.argmax(1))
    return {"min_cosine": float(cos.min()), "max_rel_error": float(rel.max()), "argmax_agreement": float(agree)}


def assert_matches(ours: np.ndarray, theirs: np.ndarray, tol: Tolerance, what: str = "") -> dict[str, float]:
    """Fail unless `ours` meets `tol` against llama.cpp's logits at every position."""
    got = compare(ours, theirs)
    assert got["min_cosine"] >= tol.min_cosine, f"{what}: cosine {got}"
    assert got["max_rel_error"] <= tol.max_rel_error, f"{what}: error {got}"
    assert got["argmax_agreement"] >= tol.min_argmax_agreement, f"{what}: argmax {got}"
    return got
