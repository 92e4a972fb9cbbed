"""GGUF loading: the tiny models load, and malformed files fail with one clear, named error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from oracle import ARCHS, DATA, tiny_models

from host_functions.arch.config import ModelConfig
from host_functions.arch.layout import ARCHITECTURES, Matrix
from host_functions.engine.model import Model
from host_functions.errors import ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import GGUFFile


def _copy_model(src: Path, dst: Path, *, arch: str | None = None, drop: str | None = None,
                reshape: str | None = None, retype: tuple[str, GGMLQuantizationType] | None = None,
                meta: dict[str, tuple[object, ...]] | None = None) -> Path:
    """Rewrite a tiny model with one thing changed, through gguf's own writer."""
    reader = GGUFReader(src)
    old_arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch or old_arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub_type = field.types[-1] if len(field.types) > 1 else None
        if meta and key in meta:
            writer.add_key_value(key, *meta[key])
            continue
        writer.add_key_value(key.replace(f"{old_arch}.", f"{arch or old_arch}.", 1), field.contents(),
                             field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        if t.name == drop:
            continue
        data = np.array(t.data)
        if t.name == reshape:
            data = data[:-1]
        if retype and t.name == retype[0]:
            writer.add_tensor(t.name, np.zeros(data.nbytes, np.uint8), raw_shape=data.shape, raw_dtype=retype[1])
            continue
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("name,weights", tiny_models(), ids=[m[0] for m in tiny_models()])
def test_every_tiny_model_loads(name, weights):
    config = ModelConfig.from_gguf(GGUFFile(DATA / name))
    assert config.n_vocab == 320 and config.arch in ("llama", "gemma3")


def test_the_structure_table_gives_each_weights_shape_and_each_outputs_columns():
    config = ModelConfig.from_gguf(GGUFFile(DATA / "tiny-gemma3-F32.gguf"))
    q, kv, ff, d = config.q_dim, config.kv_dim, config.n_ff, config.n_embd
    shapes = config.expected_tensors()
    assert shapes["blk.1.attn_k.weight"] == (kv, d) and shapes["blk.1.attn_output.weight"] == (d, q)
    assert shapes["blk.1.ffn_down.weight"] == (d, ff) and shapes["blk.1.attn_q_norm.weight"] == (config.head_dim,)
    assert config.output_columns("qkv") == {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}
    assert config.qk_norm and config.sandwich_norms  # gemma3's row has Q/K and post norms


def test_a_checkpoint_with_fused_weights_is_rows_of_the_table():
    """One matrix holding Q|K|V and one holding gate|up (as phi3 stores them): shapes and the products'
    matrices follow from the rows alone."""
    llama = ARCHITECTURES["llama"]
    fused = dataclasses.replace(llama, name="fused", matrices=(
        Matrix("attn_qkv", ("q", "k", "v"), "qkv_proj"), Matrix("attn_output", ("o",), "o_proj"),
        Matrix("ffn_up", ("gate", "up"), "gate_up_proj"), Matrix("ffn_down", ("down",), "down_proj")),
        lora_targets=("attn_qkv", "ffn_up"))
    config = ModelConfig.from_gguf(GGUFFile(DATA / "tiny-llama-F32.gguf"))
    qkv, gate_up = fused.projection_matrices("qkv"), fused.projection_matrices("gate_up")
    assert [m.name for m in qkv] == ["attn_qkv"] and [m.name for m in gate_up] == ["ffn_up"]
    assert config.matrix_shape(qkv[0]) == (config.q_dim + 2 * config.kv_dim, config.n_embd)
    assert config.matrix_shape(gate_up[0]) == (2 * config.n_ff, config.n_embd)
    assert fused.matrix_by_peft("gate_up_proj") is gate_up[0]
    assert fused.lora_peft_modules == ("qkv_proj", "gate_up_proj")


def test_a_table_row_must_hold_every_output_once_and_adapt_only_its_own_weights():
    llama = ARCHITECTURES["llama"]
    with pytest.raises(ValueError, match=r"gate_up hold \('gate',\), not \('gate', 'up'\)"):
        dataclasses.replace(llama, matrices=tuple(m for m in llama.matrices if m.name != "ffn_up"))
    with pytest.raises(ValueError, match="qkv hold"):
        dataclasses.replace(llama, matrices=(Matrix("attn_k", ("k",), "k_proj"), *llama.matrices))
    with pytest.raises(ValueError, match="LoRA targets"):
        dataclasses.replace(llama, lora_targets=("attn_qkv",))


def test_rewritten_copy_is_still_a_valid_model(tmp_path):
    """Guard for the helpers below: an unchanged rewrite loads and computes the same logits."""
    path = _copy_model(DATA / "tiny-llama-Q4_K.gguf", tmp_path / "same.gguf")
    a = Model.load(path).logits_for([1, 5, 9])
    b = Model.load(DATA / "tiny-llama-Q4_K.gguf").logits_for([1, 5, 9])
    np.testing.assert_array_equal(a, b)


def test_unknown_architecture(tmp_path):
    path = _copy_model(DATA / "tiny-llama-F32.gguf", tmp_path / "m.gguf", arch="mamba")
    with pytest.raises(UnsupportedError, match=r"m\.gguf: unsupported architecture 'mamba'"):
        ModelConfig.from_gguf(GGUFFile(path))


def test_missing_tensor(tmp_path):
    path = _copy_model(DATA / "tiny-llama-F32.gguf", tmp_path / "m.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(ModelFormatError, match=r"m\.gguf: missing tensor blk\.1\.ffn_up\.weight"):
        ModelConfig.from_gguf(GGUFFile(path))


def test_wrong_shape(tmp_path):
    path = _copy_model(DATA / "tiny-llama-F32.gguf", tmp_path / "m.gguf", reshape="blk.0.attn_k.weight")
    expected = r"tensor blk\.0\.attn_k\.weight has shape \(127, 256\), expected \(128, 256\)"
    with pytest.raises(ModelFormatError, match=expected):
        ModelConfig.from_gguf(GGUFFile(path))


def test_unsupported_weight_type_names_type_and_tensor(tmp_path):
    # IQ4_NL has 32-weight blocks of 18 bytes, like Q4_0, so the bytes are well-formed.
    path = _copy_model(DATA / "tiny-llama-Q4_0.gguf", tmp_path / "m.gguf",
                       retype=("blk.0.attn_q.weight", GGMLQuantizationType.IQ4_NL))
    with pytest.raises(UnsupportedError, match=r"unsupported type IQ4_NL in tensor blk\.0\.attn_q\.weight"):
        Model.load(path, backend="numpy")


@pytest.mark.parametrize("key, value, vtype, message", [
    ("llama.block_count", 1 << 40, GGUFValueType.UINT64, "block_count 1099511627776 is more than the file's"),
    ("llama.embedding_length", "256", GGUFValueType.STRING, "embedding_length must be an integer, got '256'"),
    ("llama.attention.head_count", True, GGUFValueType.BOOL, "head_count must be an integer, got True"),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), GGUFValueType.FLOAT32, "must be a finite number"),
    ("llama.context_length", 1 << 40, GGUFValueType.UINT64, "context_length, .* out of range"),
])
def test_hyperparameters_of_the_wrong_type_or_beyond_the_file_are_refused(tmp_path, key, value, vtype, message):
    path = _copy_model(DATA / "tiny-llama-F32.gguf", tmp_path / "m.gguf", meta={key: (value, vtype)})
    with pytest.raises(ModelFormatError, match=message):
        ModelConfig.from_gguf(GGUFFile(path))


def test_a_vocabulary_that_does_not_match_the_embedding_is_refused(tmp_path):
    path = _copy_model(DATA / "tiny-llama-F32.gguf", tmp_path / "m.gguf",
                       meta={"tokenizer.ggml.tokens": (["a", "b"], GGUFValueType.ARRAY, GGUFValueType.STRING)})
    with pytest.raises(ModelFormatError, match="the tokenizer has 2 tokens, token_embd.weight 320 rows"):
        Model.load(path)


def test_not_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ModelFormatError, match=r"x\.gguf: not a valid GGUF file"):
        GGUFFile(path)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_truncated_file(tmp_path, fraction):
    data = (DATA / "tiny-gemma3-Q4_K.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFormatError, match=r"cut\.gguf: .*(truncated|not a valid GGUF)"):
        ModelConfig.from_gguf(GGUFFile(path))


def test_metadata_cache_is_invalidated_when_the_file_changes(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes((DATA / "tiny-llama-F32.gguf").read_bytes())
    assert GGUFFile(path).get("general.architecture") == "llama"
    _copy_model(DATA / "tiny-gemma3-F32.gguf", path)
    assert GGUFFile(path).get("general.architecture") == "gemma3"


@pytest.mark.parametrize("name, dropped, message", [
    ("tiny-phi3-Q4_K.gguf", "rope_factors_long.weight", r"rope_factors_short\.weight without its LongRoPE counterpart"),
    ("tiny-qwen2-Q4_K.gguf", "blk.1.attn_v.bias", r"missing tensor blk\.1\.attn_v\.bias"),
    ("tiny-qwen3-Q4_K.gguf", "blk.0.attn_k_norm.weight", r"missing tensor blk\.0\.attn_k_norm\.weight"),
])
def test_a_tensor_an_architecture_needs_is_one_error_naming_it(tmp_path, name, dropped, message):
    path = _copy_model(ARCHS / name, tmp_path / "m.gguf", drop=dropped)
    with pytest.raises(ModelFormatError, match=message):
        ModelConfig.from_gguf(GGUFFile(path))
