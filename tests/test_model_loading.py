"""GGUF loading: the tiny models load, and malformed files fail with one clear, named error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from oracle import DATA, tiny_models

from host_functions.arch.config import ModelConfig
from host_functions.engine.model import Model
from host_functions.errors import ModelFormatError, UnsupportedError
from host_functions.formats.gguf_file import GGUFFile


def _copy_model(src: Path, dst: Path, *, arch: str | None = None, drop: str | None = None,
                reshape: str | None = None, retype: tuple[str, GGMLQuantizationType] | None = None) -> Path:
    """Rewrite a tiny model with one thing changed, through gguf's own writer."""
    reader = GGUFReader(src)
    old_arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch or old_arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub_type = field.types[-1] if len(field.types) > 1 else None
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
    with pytest.raises(ModelFormatError, match=r"tensor blk\.0\.attn_k\.weight has shape \(127, 256\), expected \(128, 256\)"):
        ModelConfig.from_gguf(GGUFFile(path))


def test_unsupported_weight_type_names_type_and_tensor(tmp_path):
    # IQ4_NL has 32-weight blocks of 18 bytes, like Q4_0, so the bytes are well-formed.
    path = _copy_model(DATA / "tiny-llama-Q4_0.gguf", tmp_path / "m.gguf",
                       retype=("blk.0.attn_q.weight", GGMLQuantizationType.IQ4_NL))
    with pytest.raises(UnsupportedError, match=r"unsupported type IQ4_NL in tensor blk\.0\.attn_q\.weight"):
        Model.load(path, backend="numpy")


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
