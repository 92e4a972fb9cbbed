"""The packed vocabulary: PackedStrings, the GGUF index cache that stores it, and VocabIndex's lookups."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader
from oracle import DATA

from host_functions.formats import gguf_header
from host_functions.formats.gguf_file import GGUFFile, PackedStrings
from host_functions.tokenizer.vocab_index import DuplicatePiece, VocabIndex, _probe_table
from realm.models import default_model_path


@pytest.fixture(scope="module")
def gemma_tokens() -> PackedStrings:
    tokens = GGUFFile(default_model_path()).metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, PackedStrings)
    return tokens


def test_packed_strings_hold_any_text_and_index_like_a_list() -> None:
    texts = ["", "a", "▁Paris", "日本語", "<0x0A>", "", "x" * 300]
    packed = PackedStrings.pack(texts)
    assert len(packed) == len(texts) and list(packed) == texts
    assert [packed[i] for i in range(-len(texts), len(texts))] == texts + texts
    assert packed.bytes_at(3) == "日本語".encode()
    for bad in (len(texts), -len(texts) - 1):
        with pytest.raises(IndexError):
            packed[bad]


@pytest.mark.parametrize("offsets", [[1, 3], [0, 2], [0, 3, 2, 3], []])
def test_packed_strings_refuse_offsets_that_do_not_cover_the_blob(offsets: list[int]) -> None:
    with pytest.raises(ValueError, match="offsets"):
        PackedStrings(b"abc", np.array(offsets, np.int64))


@pytest.mark.parametrize("name", ["tiny-llama-F32.gguf", "tiny-gemma3-Q4_K.gguf"])
def test_the_index_cache_gives_exactly_what_ggufs_reader_reads(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REALM_CACHE", str(tmp_path))  # a cold cache: parse, write, then read back
    monkeypatch.setattr(gguf_header, "PACKED_MIN", 16)  # so these 320-token vocabularies are packed too
    fields = GGUFReader(DATA / name).fields
    parsed, cached = GGUFFile(DATA / name).metadata, GGUFFile(DATA / name).metadata
    assert list(tmp_path.glob("gguf-index/*.npz"))
    for meta in (parsed, cached):
        assert isinstance(meta["tokenizer.ggml.tokens"], PackedStrings)
        assert list(meta["tokenizer.ggml.tokens"]) == fields["tokenizer.ggml.tokens"].contents()
        for key, dtype in (("tokenizer.ggml.scores", np.float32), ("tokenizer.ggml.token_type", np.int32)):
            assert meta[key].dtype == dtype and meta[key].tolist() == fields[key].contents()
        short = [k for k in fields if isinstance(meta.get(k), (list, str, int, float))]
        assert short and all(meta[k] == fields[k].contents() for k in short)


def test_every_piece_of_a_262144_token_vocabulary_finds_its_id(gemma_tokens: PackedStrings) -> None:
    index = VocabIndex(gemma_tokens)
    assert len(index) == len(gemma_tokens) == 262144
    pieces = list(gemma_tokens)
    assert [index.get(p) for p in pieces] == list(range(len(pieces)))
    assert all(index.piece(i) == pieces[i] for i in range(0, len(pieces), 997))


def test_texts_that_are_not_pieces_are_not_found(gemma_tokens: PackedStrings) -> None:
    index = VocabIndex(gemma_tokens)
    pieces = list(gemma_tokens)
    known = {p: i for i, p in enumerate(pieces)}  # the plain-dict answer
    rng = np.random.default_rng(0)
    candidates = ["", "\ud800", "▁" * 400] + [pieces[a] + pieces[b] for a, b in rng.integers(0, len(pieces), (5000, 2))]
    candidates += [p[:-1] for p in pieces[::50]] + [p + "\x00" for p in pieces[::50]]
    for text in candidates:
        assert index.get(text) == known.get(text)
        assert (text in index) == (text in known)


def test_duplicate_pieces_name_both_ids() -> None:
    with pytest.raises(DuplicatePiece, match=r"'b' has ids 1 and 3"):
        VocabIndex(PackedStrings.pack(["a", "b", "c", "b"]))


def test_probing_finds_every_id_when_homes_collide_heavily() -> None:
    rng = np.random.default_rng(1)
    slots = 64
    for homes in (np.zeros(32, np.int64), rng.integers(0, 4, 32), np.full(32, slots - 1), rng.integers(0, slots, 32)):
        table = _probe_table(homes, slots)
        assert sorted(table[table >= 0].tolist()) == list(range(32))
        for tid, home in enumerate(homes.tolist()):  # a lookup's path: home .. its slot, never an empty one
            slot = home
            while table[slot] != tid:
                assert table[slot] >= 0
                slot = (slot + 1) % slots


def test_small_vocabularies_stay_small_and_exact() -> None:
    index = VocabIndex(PackedStrings.pack(["only"]))
    assert index.get("only") == 0 and index.get("onl") is None and index.get("") is None
    assert len(PackedStrings.pack([])) == 0


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 torn", b"not a zip at all"])
def test_a_damaged_index_cache_is_parsed_again(damage: bytes, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REALM_CACHE", str(tmp_path))
    expected = GGUFFile(DATA / "tiny-llama-F32.gguf").metadata
    (cache,) = tmp_path.glob("gguf-index/*.npz")
    cache.write_bytes(damage)
    assert GGUFFile(DATA / "tiny-llama-F32.gguf").metadata == expected
    assert cache.stat().st_size > len(damage)  # rewritten


def test_without_uniqueness_the_lowest_id_of_a_repeated_piece_is_found() -> None:
    pieces = ["x", "y", "x", "z", "y", "x"] * 50  # many repeats sharing homes and probe paths
    index = VocabIndex(PackedStrings.pack(pieces), unique=False)
    assert (index.get("x"), index.get("y"), index.get("z"), index.get("w")) == (0, 1, 3, None)
