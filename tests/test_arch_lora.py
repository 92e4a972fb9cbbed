"""LoRA on qwen2, qwen3, Llama 3.1 and phi3: GGUF adapters and PEFT folders, merged and unmerged.

There are no llama.cpp LoRA logits for these models, so an adapter is held to its definition: the
effective weight `W + s * alpha / r * B @ A`, computed here in float64 from the files themselves (the
base dequantized by the gguf library, the pairs as written), put in place of the base weights, gives
the logits the adapter must give. The forward pass over those weights is the one held to llama.cpp by
test_arch_forward. PEFT folders use each family's Hugging Face module names (Qwen's q_proj .. down_proj
with the biases left alone, Phi-3's fused qkv_proj and gate_up_proj, whose B covers all output rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from oracle import ARCHS, assert_matches, compare, tolerance_for
from safetensors.numpy import save_file

from host_functions.arch.config import ModelConfig
from host_functions.backends.numpy_backend import NumpyBackend
from host_functions.engine.model import Model
from host_functions.formats.gguf_file import GGUFFile, RawTensor
from host_functions.lora.adapter import load_adapter
from host_functions.tokenizer import Tokenizer

_SEPARATE = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
# GGUF matrix -> the Hugging Face module PEFT names it by, per architecture (as the checkpoints name them)
HF_MODULES = {"qwen2": _SEPARATE, "qwen3": _SEPARATE, "llama": _SEPARATE,
              "phi3": {"attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
                       "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"}}
BASES = ["tiny-qwen2-F16.gguf", "tiny-qwen3-F16.gguf", "tiny-llama3-F32.gguf", "tiny-phi3-F16.gguf",
         "tiny-phi3-Q4_K.gguf"]
RANK, ALPHA, SCALE = 8, 16.0, 0.75
Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # GGUF weight name -> (A (rank, n_in), B (n_out, rank))


def random_pairs(base: Path, seed: int) -> tuple[str, Pairs]:
    """The base file's architecture and a random pair for every HF-named matrix of every layer."""
    reader = gguf.GGUFReader(base)
    arch = str(reader.fields["general.architecture"].contents())
    rng = np.random.default_rng(seed)
    pairs: Pairs = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if len(parts) == 4 and parts[2] in HF_MODULES[arch] and parts[3] == "weight":
            n_in, n_out = (int(d) for d in tensor.shape)  # GGUF order: ne0 = the input width
            a = (rng.uniform(-1, 1, (RANK, n_in)) / np.sqrt(n_in)).astype(np.float32)
            pairs[tensor.name] = a, (rng.standard_normal((n_out, RANK)) * 0.2).astype(np.float32)
    return arch, pairs


def write_gguf_adapter(path: Path, arch: str, pairs: Pairs) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", ALPHA)
    for name, (a, b) in pairs.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_peft(folder: Path, arch: str, pairs: Pairs, n_head: int, n_head_kv: int) -> Path:
    """A PEFT folder of the same pairs under Hugging Face names; for llama, B's Q/K rows in the checkpoint's
    order (llama.cpp's converter interleaves each head's two rope halves; undone here)."""
    tensors = {}
    for name, (a, b) in pairs.items():
        _, layer, kind, _ = name.split(".")
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            heads = n_head if kind == "attn_q" else n_head_kv
            b = b.reshape(heads, b.shape[0] // heads // 2, 2, RANK).swapaxes(1, 2).reshape(b.shape)
        prefix = f"base_model.model.model.layers.{layer}.{HF_MODULES[arch][kind]}"
        tensors[f"{prefix}.lora_A.weight"] = a
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    modules = sorted({m.split(".")[1] for m in HF_MODULES[arch].values()})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": modules, "bias": "none"}))
    return folder


def reference_model(base: Path, pairs: Pairs, scale: float) -> Model:
    """The base with each adapted weight replaced by W + scale * alpha / rank * B @ A, in float64 from
    the file's bytes (gguf's own dequantization), then float32: what the adapter means."""
    effective: dict[str, np.ndarray] = {}
    for tensor in gguf.GGUFReader(base).tensors:
        if tensor.name in pairs:
            a, b = (m.astype(np.float64) for m in pairs[tensor.name])
            w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
            effective[tensor.name] = (w + scale * ALPHA / RANK * (b @ a)).astype(np.float32)

    class Effective(NumpyBackend):
        def _dequantized(self, raw: RawTensor) -> np.ndarray:
            return effective[raw.name] if raw.name in effective else super()._dequantized(raw)

    file = GGUFFile(base)
    config = ModelConfig.from_gguf(file)
    return Model(base, config, Tokenizer.from_metadata(file.metadata), Effective(config, file.tensors))


def _tokens(config: ModelConfig) -> list[int]:
    return np.random.default_rng(7).integers(0, 256, 40).tolist()  # byte-ish ids every vocab here holds


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Pairs, np.ndarray]]:
    """Per base: its GGUF adapter and the reference logits of a sequence with it at SCALE."""
    out = {}
    for i, name in enumerate(BASES):
        arch, pairs = random_pairs(ARCHS / name, seed=i)
        adapter = write_gguf_adapter(tmp_path_factory.mktemp("lora") / f"{name}.lora.gguf", arch, pairs)
        ref = reference_model(ARCHS / name, pairs, SCALE)
        out[name] = adapter, pairs, ref.logits_for(_tokens(ref.config))
    return out


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("backend", ["numpy", "cpu", "wgpu"])
@pytest.mark.parametrize("name", BASES)
def test_a_gguf_adapter_gives_the_logits_of_its_effective_weights(cases, name, backend, merged):
    adapter_path, _, expected = cases[name]
    model = Model.load(ARCHS / name, backend=backend)
    adapter = load_adapter(adapter_path, model.config)
    tokens = _tokens(model.config)
    weights = name.removesuffix(".gguf").rsplit("-", 1)[1]
    tol = tolerance_for("F32" if weights in ("F32", "F16") else weights, lora=True)
    assert_matches(model.logits_for(tokens, lora=(adapter, SCALE), merged=merged), expected, tol, name)
    # the adapter changes the logits by far more than that tolerance
    assert compare(model.logits_for(tokens), expected)["min_cosine"] < 0.995


@pytest.mark.parametrize("name", ["tiny-qwen2-F16.gguf", "tiny-qwen3-F16.gguf", "tiny-llama3-F32.gguf",
                                  "tiny-phi3-F16.gguf"])
def test_a_peft_folder_under_the_hugging_face_names_is_the_same_adapter(cases, name, tmp_path):
    adapter_path, pairs, expected = cases[name]
    model = Model.load(ARCHS / name, backend="numpy")
    cfg = model.config
    from_gguf = load_adapter(adapter_path, cfg)
    from_peft = load_adapter(write_peft(tmp_path / "peft", cfg.arch, pairs, cfg.n_head, cfg.n_head_kv), cfg)
    assert set(from_peft.pairs) == set(from_gguf.pairs) == set(pairs)
    for target, pair in from_gguf.pairs.items():
        np.testing.assert_array_equal(from_peft.pairs[target].a, pair.a)
        np.testing.assert_array_equal(from_peft.pairs[target].b, pair.b)
        assert from_peft.pairs[target].scale(SCALE) == pair.scale(SCALE)
    assert_matches(model.logits_for(_tokens(cfg), lora=(from_peft, SCALE)), expected, tolerance_for("F32", lora=True))


def test_phi3_adapters_target_the_fused_matrices_whole():
    config = ModelConfig.from_gguf(GGUFFile(ARCHS / "tiny-phi3-F16.gguf"))
    assert config.layout.lora_peft_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    expected = config.expected_tensors()
    assert expected["blk.0.attn_qkv.weight"] == (config.q_dim + 2 * config.kv_dim, config.n_embd)
    assert expected["blk.0.ffn_up.weight"] == (2 * config.n_ff, config.n_embd)
