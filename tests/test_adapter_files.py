"""Hostile adapter files: measured before they are decoded, opened only where the operator bound them.

Every case is one AdapterError naming the adapter (never a host path): a rank or shape that does not
fit is refused from the header, before the matrices are decoded; a PEFT folder's files are opened only
by their two names, never through a symbolic link; adapter_config.json and the safetensors header are
bounded and every field is checked, including the scale alpha gives (rsLoRA's alpha / sqrt(r)).
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from oracle import DATA
from test_lora_loading import config_of, write_peft

from host_functions.errors import AdapterError, TenantError
from host_functions.lora.adapter import MAX_ALPHA_FACTOR, check_adapter_source, load_adapter
from host_functions.lora.adapter_files import MAX_CONFIG_BYTES
from host_functions.lora.pool import AdapterPool
from realm.tenants import TenantRegistry

BASE = DATA / "tiny-llama-F32.gguf"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.fixture(scope="module")
def config():
    return config_of(BASE)


@pytest.fixture
def peft(tmp_path, config) -> Path:
    """A good PEFT folder of the tiny llama adapter."""
    return write_peft(load_adapter(DATA / "tiny-llama-lora-r8.gguf", config), config, tmp_path / "peft")


def refused(path: Path, config, message: str) -> AdapterError:
    with pytest.raises(AdapterError, match=message) as caught:
        load_adapter(path, config, name="style")
    text = str(caught.value)
    assert text.startswith("LoRA adapter style: ") and str(path.parent) not in text, text
    return caught.value


def safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def test_a_rank_the_model_cannot_take_is_refused_before_the_matrices_are_decoded(tmp_path, config):
    """A 16384-rank A matrix (8 MiB as F16, 16 MiB as float32) is refused without being read."""
    from safetensors.numpy import save_file

    folder = tmp_path / "huge"
    folder.mkdir()
    save_file({Q_A: np.zeros((16384, 256), np.float16), Q_B: np.zeros((256, 16384), np.float16)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    tracemalloc.start()
    try:
        refused(folder, config, "blk.0.attn_q.weight has rank 16384, supported ranks are 1..64")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated to refuse it"


def test_an_adapter_larger_than_the_pool_is_refused_before_it_is_decoded(peft, config):
    pool = AdapterPool(config, budget_bytes=1000)
    with pytest.raises(AdapterError, match="more than the adapter memory budget of 1000 bytes"):
        pool.acquire(peft)
    assert pool.used_bytes == 0


@pytest.mark.parametrize("which", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_file_of_a_peft_folder_that_is_a_symbolic_link_is_not_followed(tmp_path, peft, config, which):
    """The link leads to a real adapter elsewhere (another tenant's): Realm must not run on it."""
    elsewhere = tmp_path / "private"
    peft.rename(elsewhere)
    peft.mkdir()
    other = "adapter_model.safetensors" if which == "adapter_config.json" else "adapter_config.json"
    (peft / other).write_bytes((elsewhere / other).read_bytes())
    (peft / which).symlink_to(elsewhere / which)
    refused(peft, config, f"{which} is a symbolic link, which Realm does not follow")
    with pytest.raises(AdapterError, match="symbolic link"):
        check_adapter_source(peft)


def test_a_bound_folder_or_gguf_file_replaced_by_a_link_is_not_followed(tmp_path, peft, config):
    link = tmp_path / "link"
    link.symlink_to(peft)
    refused(link, config, "is a symbolic link, which Realm does not follow")
    gguf_link = tmp_path / "adapter.gguf"
    gguf_link.symlink_to(DATA / "tiny-llama-lora-r8.gguf")
    refused(gguf_link, config, "is a symbolic link, which Realm does not follow")


def test_a_fifo_or_a_folder_in_place_of_a_file_is_refused_without_waiting(peft, config):
    (peft / "adapter_config.json").unlink()
    os.mkfifo(peft / "adapter_config.json")  # opening it for reading would wait for a writer
    refused(peft, config, r"adapter_config.json cannot be read \(not a regular file\)")
    (peft / "adapter_config.json").unlink()
    (peft / "adapter_config.json").mkdir()
    refused(peft, config, r"adapter_config.json cannot be read \(not a regular file\)")


def test_only_the_two_files_a_binding_names_are_read(peft, config):
    """A pickled adapter_model.bin beside them is never opened (pickles run code)."""
    (peft / "adapter_model.bin").write_bytes(b"\x80\x04not read")
    (peft / "adapter_model.safetensors").unlink()
    refused(peft, config, r"a PEFT folder needs adapter_model.safetensors \(pickled adapter_model.bin is not read\)")


def test_binding_a_folder_with_a_link_inside_is_refused(tmp_path, peft, monkeypatch):
    monkeypatch.setenv("REALM_HOME", str(tmp_path / "home"))
    registry = TenantRegistry()
    registry.create("acme")
    registry.set_lora("acme", peft, alias="style")  # a good folder binds
    (peft / "adapter_config.json").rename(tmp_path / "elsewhere.json")
    (peft / "adapter_config.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(TenantError, match="adapter_config.json is a symbolic link"):
        registry.set_lora("acme", peft, alias="style")


CONFIGS = [
    (b"{not json", r"adapter_config.json is not JSON \(JSONDecodeError\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"adapter_config.json is not JSON \(JSON nested deeper than 64 levels\)"),
    (b"{\"r\": " + b"[" * 5000 + b"]" * 5000 + b"}", r"adapter_config.json is not JSON \(JSON nested deeper than 64"),
    (b"{\"r\": 8, \"target_modules\": " + b"[" * 200 + b"]" * 200 + b"}", r"is not JSON \(JSON nested deeper than 64"),
    (b"\xff\xfe{}", r"adapter_config.json is not JSON \(UnicodeDecodeError\)"),
    (b"[8, 16]", "adapter_config.json is not a JSON object"),
    (b" " * (MAX_CONFIG_BYTES + 1), f"adapter_config.json is larger than the limit of {MAX_CONFIG_BYTES} bytes"),
    ({"peft_type": ["LORA"]}, "not a LoRA config"),
    ({"peft_type": "IA3"}, "not a LoRA config"),
    ({"r": None}, r"r must be a rank in 1..64, got None"),
    ({"r": "8"}, r"r must be a rank in 1..64, got '8'"),
    ({"r": True}, r"r must be a rank in 1..64, got True"),
    ({"r": 0}, r"r must be a rank in 1..64, got 0"),
    ({"r": 2 ** 80}, r"r must be a rank in 1..64"),
    ({"lora_alpha": "16"}, r"alpha must be a finite number >= 0, got '16'"),
    ({"lora_alpha": {"x": 1}}, "alpha must be a finite number >= 0, got a JSON dict"),
    ({"lora_alpha": 1e6}, f"alpha 1e\\+06 over blk.0.\\w+.weight's rank 8 scales it by 125000, more than "
                          f"{MAX_ALPHA_FACTOR:g}"),
    # rsLoRA: alpha * sqrt(r) overflowed to inf and was used later
    ({"lora_alpha": 1e308, "use_rslora": True}, "alpha inf over blk.0.\\w+.weight's rank 8 scales it by inf"),
    ({"use_rslora": "yes"}, "use_rslora must be true or false"),
    ({"use_dora": 1}, "use_dora must be true or false"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern is not supported"),
    ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern is not supported"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save is not supported"),
]


@pytest.mark.parametrize("content, message", CONFIGS, ids=[m[:40] for _, m in CONFIGS])
def test_a_malformed_adapter_config_is_one_adapter_error(peft, config, content, message):
    if isinstance(content, dict):
        content = json.dumps({**json.loads((peft / "adapter_config.json").read_text()), **content}).encode()
    (peft / "adapter_config.json").write_bytes(content)
    refused(peft, config, message)


A_ENTRY = {"dtype": "F32", "shape": [8, 256], "data_offsets": [0, 8192]}
HEADERS = [
    (safetensors({}, length=1 << 60), r"declares a header of 1152921504606846976 bytes in a file of \d+"),
    (safetensors({Q_A: A_ENTRY}, length=10_000), "declares a header of 10000 bytes in a file of"),
    (b"\x01\x02", "declares a header of 0 bytes in a file of 2"),
    (safetensors(b"{nope"), r"has a header that is not JSON \(JSONDecodeError\)"),
    (safetensors(b"[" * 50_000 + b"]" * 50_000), r"has a header that is not JSON \(JSON nested deeper than 64"),
    (safetensors([1, 2]), "has a header that is not a JSON object"),
    (safetensors({Q_A: {**A_ENTRY, "dtype": "BF16"}}), "has dtype 'BF16': adapters in F16, F32, F64 are read"),
    (safetensors({Q_A: {**A_ENTRY, "dtype": "I64"}}), "has dtype 'I64'"),
    (safetensors({Q_A: "x"}), "has dtype None"),
    (safetensors({Q_A: {**A_ENTRY, "shape": [8, -256]}}), "has no valid shape and data_offsets within the file"),
    (safetensors({Q_A: {**A_ENTRY, "shape": [1, 1, 1, 1, 1]}}), "has no valid shape and data_offsets"),
    (safetensors({Q_A: {**A_ENTRY, "data_offsets": [0, 1 << 62]}}), "has no valid shape and data_offsets within"),
    (safetensors({Q_A: {**A_ENTRY, "shape": [1 << 40, 1 << 40]}}, bytes(8192)), r"F32 \[1099511627776, 1099511627776\] "
                                                                               r"is not the 8192 bytes"),
    (safetensors({Q_A: A_ENTRY, Q_B: {"dtype": "F32", "shape": [256, 8], "data_offsets": [4096, 12288]}},
                 bytes(12288)), r"tensor .*q_proj.lora_B.weight starts at 4096, not where .*lora_A.weight ends "
                                r"\(8192\): a gap or an overlap"),
    (safetensors({Q_A: {**A_ENTRY, "data_offsets": [4096, 12288]}}, bytes(12288)), "starts at 4096, not where the "
                                                                                   "header ends"),
    # a sparse file of 2^40 bytes after one small tensor would be read whole
    (safetensors({Q_A: A_ENTRY}, bytes(8192 + 100)), "has 100 bytes after its last tensor"),
    (safetensors({"x" * 5000: A_ENTRY}, bytes(8192)), "tensor x{100}[.]{3} is not a LoRA pair"),
]


@pytest.mark.parametrize("content, message", HEADERS, ids=[m[:40] for _, m in HEADERS])
def test_a_hostile_safetensors_header_is_one_adapter_error(peft, config, content, message):
    (peft / "adapter_model.safetensors").write_bytes(content)
    refused(peft, config, "adapter_model.safetensors.*" + message if "LoRA pair" not in message else message)


def test_an_adapter_error_can_name_the_adapter_as_the_tenant_knows_it(tmp_path, config):
    with pytest.raises(AdapterError) as caught:
        load_adapter(DATA / "tiny-gemma3-lora-r8.gguf", config)
    renamed = str(caught.value.naming("'style'"))
    assert renamed == "LoRA adapter 'style': made for architecture 'gemma3', the model is 'llama'"


def test_a_link_to_an_adapter_loaded_through_another_binding_does_not_find_it_in_the_pool(tmp_path, config):
    """Tenant B's adapter is loaded; tenant A's bound file becomes a link to it: A gets an error, not B's adapter."""
    pool = AdapterPool(config)
    private = tmp_path / "b" / "private.gguf"
    private.parent.mkdir()
    private.write_bytes((DATA / "tiny-llama-lora-r8.gguf").read_bytes())
    pool.acquire(private)
    own = tmp_path / "a" / "style.gguf"
    own.parent.mkdir()
    own.symlink_to(private)
    with pytest.raises(AdapterError, match="is a symbolic link, which Realm does not follow"):
        pool.acquire(own)


def test_two_tensors_for_one_half_of_a_pair_are_refused(peft, config):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(peft / "adapter_model.safetensors"))
    tensors[Q_A.replace("lora_A.weight", "lora_A.default.weight")] = tensors[Q_A]
    save_file(tensors, str(peft / "adapter_model.safetensors"))
    refused(peft, config, "two tensors hold blk.0.attn_q.weight's lora_a")


def _gguf_adapter(path: Path, kvs: list[bytes]) -> Path:
    """A GGUF adapter header (general.type adapter, adapter.type lora, llama) with `kvs` added."""
    from test_gguf_header import STRING, gguf, kv, text

    base = [kv("general.type", STRING, text("adapter")), kv("adapter.type", STRING, text("lora")),
            kv("general.architecture", STRING, text("llama"))]
    path.write_bytes(gguf(base + kvs))
    return path


def test_a_gguf_adapter_with_a_models_vocabulary_is_refused(tmp_path, config):
    from test_gguf_header import ARRAY, U8, array, kv

    path = _gguf_adapter(tmp_path / "a.gguf", [kv("tokenizer.ggml.scores", ARRAY, array(U8, 2000, bytes(2000)))])
    refused(path, config, "the length of tokenizer.ggml.scores is 2000, over Realm's limit of 1024")


def test_a_gguf_adapter_declaring_a_huge_array_is_refused_when_bound(tmp_path):
    from test_gguf_header import ARRAY, U8, array, kv

    path = _gguf_adapter(tmp_path / "a.gguf", [kv("k", ARRAY, array(U8, 1 << 40, b""))])
    with pytest.raises(AdapterError, match=f"LoRA adapter {path}: not a valid GGUF file: the length of k is "
                                           f"1099511627776, over Realm's limit of 1024"):
        check_adapter_source(path)


def test_a_gguf_adapter_of_a_wrong_rank_or_cut_short_is_refused_from_its_header(tmp_path, config):
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(DATA / "tiny-llama-lora-r8.gguf")
    writer = GGUFWriter(tmp_path / "wide.gguf", "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 16.0)
    for t in reader.tensors:
        shape = np.array(t.data).shape
        wide = (128, shape[1]) if t.name.endswith("lora_a") else (shape[0], 128)
        writer.add_tensor(t.name, np.zeros(wide, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    content = (tmp_path / "wide.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    data_start = len(content) - sum(128 * 4 * (np.array(t.data).shape[1 if t.name.endswith("lora_a") else 0])
                                    for t in reader.tensors)
    cut.write_bytes(content[:data_start])
    refused(tmp_path / "wide.gguf", config, "has rank 128, supported ranks are 1..64")
    refused(cut, config, r"truncated \(tensor .* ends past its end\)")
