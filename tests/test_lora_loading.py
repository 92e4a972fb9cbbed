"""LoRA adapters load from llama.cpp's GGUF format and from PEFT folders, and are checked on load.

What a loaded adapter means is held to llama.cpp: the base weights plus its pairs, merged here in
float32 (`W + s * alpha / r * B @ A`), give llama.cpp's logits with that adapter. The PEFT folders
are written from the GGUF adapters' own matrices (with the Q/K row order of Hugging Face checkpoints),
so the same matrices must give the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from oracle import DATA, assert_matches, lora_cases, reference_sequences, tolerance_for

from host_functions.arch.config import ModelConfig
from host_functions.backends.numpy_backend import NumpyBackend
from host_functions.engine.model import Model
from host_functions.errors import AdapterError, Overloaded
from host_functions.formats.gguf_file import GGUFFile, RawTensor
from host_functions.lora.adapter import LoraAdapter, load_adapter
from host_functions.lora.pool import AdapterPool
from host_functions.tokenizer import Tokenizer

HF_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def config_of(path: Path) -> ModelConfig:
    return ModelConfig.from_gguf(GGUFFile(path))


def merged_model(base: Path, adapter: LoraAdapter, scale: float) -> Model:
    """The base model with every adapted weight replaced by W + scale * alpha / r * B @ A (float32)."""

    class Merged(NumpyBackend):
        def _dequantized(self, raw: RawTensor) -> np.ndarray:
            weight = super()._dequantized(raw)
            pair = adapter.pairs.get(raw.name)
            return weight if pair is None else weight + np.float32(pair.scale(scale)) * (pair.b @ pair.a)

    gguf = GGUFFile(base)
    config = ModelConfig.from_gguf(gguf)
    return Model(base, config, Tokenizer.from_metadata(gguf.metadata), Merged(config, gguf.tensors))


def write_peft(adapter: LoraAdapter, config: ModelConfig, folder: Path, **extra: object) -> Path:
    """A PEFT folder holding the adapter's matrices under Hugging Face names (llama: HF's Q/K row order)."""
    from safetensors.numpy import save_file

    tensors = {}
    for base, pair in adapter.pairs.items():
        _, layer, kind, _ = base.split(".")
        b = pair.b
        if config.arch == "llama" and kind in ("attn_q", "attn_k"):
            heads = config.n_head if kind == "attn_q" else config.n_head_kv
            b = b.reshape(heads, b.shape[0] // heads // 2, 2, b.shape[1]).swapaxes(1, 2).reshape(b.shape)
        prefix = f"base_model.model.model.layers.{layer}.{HF_MODULES[kind]}"
        tensors[f"{prefix}.lora_A.weight"] = pair.a
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    rank = adapter.max_rank
    alpha = next(iter(adapter.pairs.values())).alpha
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": alpha,
         "target_modules": sorted({m.split(".")[1] for m in HF_MODULES.values()}), **extra}))
    return folder


@pytest.mark.parametrize("logits_file, base, lora, scale", lora_cases())
def test_gguf_adapter_merged_into_the_base_gives_llamacpps_logits(logits_file, base, lora, scale):
    adapter = load_adapter(DATA / lora, config_of(DATA / base))
    model = merged_model(DATA / base, adapter, scale)
    weights = base.removesuffix(".gguf").rsplit("-", 1)[1]
    for tokens, ref in reference_sequences(logits_file):
        assert_matches(model.logits_for(tokens.tolist()), ref, tolerance_for(weights, lora=True), logits_file)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_peft_folder_with_the_same_matrices_loads_to_the_same_pairs_and_logits(arch, tmp_path):
    base = DATA / f"tiny-{arch}-F32.gguf"
    config = config_of(base)
    gguf_adapter = load_adapter(DATA / f"tiny-{arch}-lora-r8.gguf", config)
    peft = load_adapter(write_peft(gguf_adapter, config, tmp_path / "peft"), config)
    assert set(peft.pairs) == set(gguf_adapter.pairs)
    for name, pair in gguf_adapter.pairs.items():
        np.testing.assert_array_equal(peft.pairs[name].a, pair.a)
        np.testing.assert_array_equal(peft.pairs[name].b, pair.b)
        assert peft.pairs[name].scale(0.5) == pair.scale(0.5)
    tokens, ref = reference_sequences(f"tiny-{arch}-F32+lora-r8@1.0.logits.npz")[0]
    assert_matches(merged_model(base, peft, 1.0).logits_for(tokens.tolist()), ref, tolerance_for("F32", lora=True))


def test_the_gguf_adapter_has_a_pair_per_targeted_weight_with_its_rank_and_alpha():
    config = config_of(DATA / "tiny-llama-F32.gguf")
    adapter = load_adapter(DATA / "tiny-llama-lora-r8.gguf", config)
    assert len(adapter.pairs) == 7 * config.n_layers
    pair = adapter.pairs["blk.1.attn_k.weight"]
    assert pair.a.shape == (8, config.n_embd) and pair.b.shape == (config.kv_dim, 8)
    assert pair.scale(0.5) == pytest.approx(0.5 * 16 / 8)
    assert adapter.nbytes == sum(p.a.nbytes + p.b.nbytes for p in adapter.pairs.values())


def test_rslora_scales_by_alpha_over_the_square_root_of_the_rank(tmp_path):
    config = config_of(DATA / "tiny-llama-F32.gguf")
    adapter = load_adapter(DATA / "tiny-llama-lora-r8.gguf", config)
    rs = load_adapter(write_peft(adapter, config, tmp_path / "rs", use_rslora=True), config)
    assert rs.pairs["blk.0.attn_q.weight"].scale(1.0) == pytest.approx(16 / np.sqrt(8))


def _peft_variant(tmp_path: Path, edit) -> Path:
    """A PEFT folder of the tiny llama adapter with its tensors or config changed by `edit`."""
    from safetensors.numpy import load_file, save_file

    config = config_of(DATA / "tiny-llama-F32.gguf")
    folder = write_peft(load_adapter(DATA / "tiny-llama-lora-r8.gguf", config), config, tmp_path / "bad")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    edit(tensors, cfg)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.mark.parametrize("edit, message", [
    (lambda t, c: t.__setitem__(Q_A, np.zeros((65, 256), np.float32)), "rank 65"),
    (lambda t, c: t.__setitem__(Q_B, np.zeros((200, 8), np.float32)),
     "blk.0.attn_q.weight lora_a (8, 256) / lora_b (200, 8)"),
    (lambda t, c: t.pop(Q_B), "blk.0.attn_q.weight has lora_b missing"),
    (lambda t, c: t.__setitem__(Q_A, np.full((8, 256), np.nan, np.float32)), "NaN"),
    (lambda t, c: t.update({Q_A.replace("layers.0", "layers.9"): np.zeros((8, 256), np.float32),
                            Q_B.replace("layers.0", "layers.9"): np.zeros((256, 8), np.float32)}),
     "targets blk.9.attn_q.weight: the model has no such weight"),
    (lambda t, c: t.__setitem__("base_model.model.lm_head.lora_A.weight", np.zeros((8, 256), np.float32)),
     "lm_head.lora_A.weight is not a LoRA pair"),
    (lambda t, c: c.__setitem__("lora_alpha", -1), "alpha must be a finite number >= 0"),
    (lambda t, c: c.__setitem__("use_dora", True), "use_dora adapters are not supported"),
    (lambda t, c: c.__setitem__("peft_type", "IA3"), "not a LoRA config"),
])
def test_a_bad_peft_adapter_is_one_error_naming_the_adapter_and_the_tensor(tmp_path, edit, message):
    folder = _peft_variant(tmp_path, edit)
    with pytest.raises(AdapterError, match="LoRA adapter bad: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_adapter(folder, config_of(DATA / "tiny-llama-F32.gguf"))


@pytest.mark.parametrize("adapter, base, message", [
    ("tiny-gemma3-lora-r8.gguf", "tiny-llama-F32.gguf", "made for architecture 'gemma3', the model is 'llama'"),
    ("tiny-llama-F32.gguf", "tiny-llama-F32.gguf", "not a LoRA adapter"),
    ("no-such-adapter.gguf", "tiny-llama-F32.gguf", "no such file or folder"),
    ("MANIFEST.json", "tiny-llama-F32.gguf", "LoRA adapter MANIFEST.json: "),
])
def test_a_gguf_adapter_for_another_model_or_not_an_adapter_is_refused(adapter, base, message):
    with pytest.raises(AdapterError, match=message):
        load_adapter(DATA / adapter, config_of(DATA / base))


def test_a_peft_folder_without_its_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="needs adapter_config.json"):
        load_adapter(tmp_path / "empty", config_of(DATA / "tiny-llama-F32.gguf"))


def test_the_pool_shares_loaded_adapters_and_drops_the_least_recently_used_idle_one(tmp_path):
    config = config_of(DATA / "tiny-llama-F32.gguf")
    one = load_adapter(DATA / "tiny-llama-lora-r8.gguf", config)
    paths = [write_peft(one, config, tmp_path / f"a{i}", lora_alpha=8 + i) for i in range(3)]
    pool = AdapterPool(config, budget_bytes=2 * one.nbytes + 100)
    a0 = pool.acquire(paths[0])
    assert pool.acquire(paths[0]) is a0  # shared, not loaded twice
    a1 = pool.acquire(paths[1])
    pool.release(a1)
    pool.acquire(paths[2])  # a0 is in use, a1 is idle: a1 goes
    assert {a.digest for a in pool.loaded()} == {a0.digest, pool.acquire(paths[2]).digest}
    with pytest.raises(Overloaded, match=f"memory budget of {2 * one.nbytes + 100} bytes now"):
        pool.acquire(paths[1])  # both loaded ones are in use: it may wait for one


def test_an_adapter_replaced_on_disk_is_a_new_adapter_and_the_held_one_stays(tmp_path):
    config = config_of(DATA / "tiny-llama-F32.gguf")
    one = load_adapter(DATA / "tiny-llama-lora-r8.gguf", config)
    folder = write_peft(one, config, tmp_path / "x")
    pool = AdapterPool(config)
    held = pool.acquire(folder)
    write_peft(one, config, folder, lora_alpha=3)
    import os
    os.utime(folder / "adapter_model.safetensors", ns=(1, 1))  # a new version on disk
    fresh = pool.acquire(folder)
    assert fresh is not held and fresh.pairs["blk.0.attn_q.weight"].alpha == 3
    assert held.pairs["blk.0.attn_q.weight"].alpha == 16
