"""The Qwen 2.5, Qwen 3, Llama 3 and Phi-3 tokenizers against llama.cpp's ids (tests/data/tiny-archs, copied
from the shared reference: `<model>.tokenize.json` holds llama_tokenize(text, add_special=true,
parse_special=false / true) for each text, and MANIFEST.json what llama.cpp printed when it loaded each
vocabulary).

The tokenizers are built from each GGUF's metadata alone, as the vocab-only phi3 file has no tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host_functions.formats.gguf_file import GGUFFile
from host_functions.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data" / "tiny-archs"
MANIFEST = json.loads((DATA / "MANIFEST.json").read_text())
# tokenize.json -> the GGUF it was computed on, and the MANIFEST's name for its vocabulary
VOCABS = {
    "tiny-qwen2": ("tiny-qwen2-F32.gguf", "qwen2"),
    "tiny-qwen3": ("tiny-qwen3-F32.gguf", "qwen3"),
    "tiny-llama3": ("tiny-llama3-F32.gguf", "llama3"),
    "tiny-phi3": ("tiny-phi3-F32.gguf", "phi3"),
    "tiny-phi3-renamed": ("tiny-phi3-renamed-vocab-only.gguf", "phi3"),
}
# llama.cpp's llama_vocab_is_eog over every id of each vocabulary: EOS, EOT, EOM and every token whose
# text is one of its end-of-generation markers.
END_OF_GENERATION = {
    "tiny-qwen2": {549, 551},  # <|endoftext|>, <|im_end|>
    "tiny-qwen3": {549, 551},
    "tiny-llama3": {550, 557, 558},  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    "tiny-phi3": {2, 584, 591},  # </s>, <|endoftext|>, <|end|>
    "tiny-phi3-renamed": {2, 584, 591},
}
_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer(model: str) -> Tokenizer:
    if model not in _TOKENIZERS:
        _TOKENIZERS[model] = Tokenizer.from_metadata(GGUFFile(DATA / VOCABS[model][0]).metadata)
    return _TOKENIZERS[model]


def cases() -> list[tuple[str, dict]]:
    return [(model, case) for model in VOCABS
            for case in json.loads((DATA / f"{model}.tokenize.json").read_text())["texts"]]


CASES = cases()
CASE_IDS = [f"{model}:{case['text'][:24]!r}" for model, case in CASES]


@pytest.mark.parametrize("model, case", CASES, ids=CASE_IDS)
def test_encode_without_special_parsing_matches_llama_cpp(model: str, case: dict) -> None:
    assert tokenizer(model).encode(case["text"]) == case["special_false"]


@pytest.mark.parametrize("model, case", CASES, ids=CASE_IDS)
def test_encode_with_special_parsing_matches_llama_cpp(model: str, case: dict) -> None:
    assert tokenizer(model).encode(case["text"], parse_special=True) == case["special_true"]


@pytest.mark.parametrize("model, case", CASES, ids=CASE_IDS)
def test_decode_gives_the_text_back_as_llama_cpp_does(model: str, case: dict) -> None:
    # llama_detokenize of these ids is the text itself, for every text of the set (BOS and other
    # control tokens render as nothing).
    assert tokenizer(model).decode(case["special_false"]) == case["text"]


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-qwen3"])
def test_streaming_byte_level_tokens_one_at_a_time_gives_the_text(model: str) -> None:
    tok = tokenizer(model)
    for _, case in filter(lambda c: c[0] == model, CASES):
        decoder = tok.stream_decoder()
        streamed = "".join(decoder.push(i) for i in case["special_false"]) + decoder.flush()
        assert streamed == case["text"]  # Qwen cleans no spaces and adds no BOS: the pieces are the text


@pytest.mark.parametrize("model", sorted(VOCABS))
def test_special_ids_are_the_ones_llama_cpp_reports(model: str) -> None:
    tok, layout = tokenizer(model), MANIFEST["tokenizers"][VOCABS[model][1]]
    printed = MANIFEST["loaded_as"][VOCABS[model][1]]
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (
        layout["n_vocab"], layout["bos"], layout["eos"], layout["add_bos"])
    assert printed["EOT token"].startswith(f"{tok.eot_id} ")
    for text, tid in layout["added"].items():
        assert tok.token_id(text) == tid


@pytest.mark.parametrize("model", sorted(VOCABS))
def test_end_of_generation_set_is_llama_cpps(model: str) -> None:
    tok = tokenizer(model)
    assert tok.end_of_generation_ids == END_OF_GENERATION[model]
    assert all(tok.is_end_of_generation(t) for t in END_OF_GENERATION[model])
    assert not tok.is_end_of_generation(tok.token_id("Hello") or 0)


def test_turn_markers_of_each_family_end_generation() -> None:
    for model, marker in [("tiny-qwen2", "<|im_end|>"), ("tiny-llama3", "<|eot_id|>"), ("tiny-phi3", "<|end|>")]:
        tok = tokenizer(model)
        assert tok.is_end_of_generation(tok.token_id(marker) or -1), (model, marker)


def test_llama_bpe_takes_a_word_in_the_vocabulary_whole_and_qwen2_merges_it() -> None:
    # README: "ĠFrance" (548) and "ĠParis" (547) are whole words no merge produces.
    text = "The capital of France is Paris."
    assert {547, 548} <= set(tokenizer("tiny-llama3").encode(text))
    assert not {547, 548} & set(tokenizer("tiny-qwen2").encode(text))


def test_user_defined_tokens_are_matched_without_special_parsing_and_control_ones_are_not() -> None:
    tok = tokenizer("tiny-qwen3")
    assert tok.encode("<think>x</think>")[0::2] == [557, 558]
    assert 550 not in tok.encode("<|im_start|>") and tok.encode("<|im_start|>", parse_special=True) == [550]


def test_the_phi3_name_rule_drops_whitespace_after_a_special_token_only_for_phi3_names() -> None:
    text = "<|user|>  \n\tHi"
    named, renamed = tokenizer("tiny-phi3"), tokenizer("tiny-phi3-renamed")
    assert named.encode(text, parse_special=True) == [594, *named.encode("Hi")]
    assert renamed.encode(text, parse_special=True)[1:] == renamed.encode("  \n\tHi")
    # <|endoftext|> keeps the whitespace after it even under the rule
    assert named.encode("<|endoftext|> Hi", parse_special=True) == [584, *named.encode(" Hi")]
