"""Chat for the Qwen 2.5, Qwen 3, Llama 3 and Phi-3 families: the official templates (tests/data/chat-templates,
as their GGUFs carry them) render the prompts their model cards document, a model without a template
gets its family's built-in from its vocabulary, one Jinja cannot parse gets the built-in its text
names (llama.cpp's llm_chat_detect_template), and each family's end-of-turn token ends generation."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_functions.errors import ChatTemplateError
from host_functions.formats.gguf_file import GGUFFile
from host_functions.tokenizer import Tokenizer
from realm.chat import detect_family, load_chat_template

DATA = Path(__file__).parent / "data"
TEMPLATES = DATA / "chat-templates"
# arch -> (tiny GGUF of that family, official template, built-in family, end-of-turn marker)
FAMILIES = {
    "qwen2": ("tiny-qwen2-F32.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja", "chatml", "<|im_end|>"),
    "qwen3": ("tiny-qwen3-F32.gguf", "Qwen-Qwen3-0.6B.jinja", "chatml", "<|im_end|>"),
    "llama": ("tiny-llama3-F32.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3", "<|eot_id|>"),
    "phi3": ("tiny-phi3-F32.gguf", "microsoft-Phi-3.5-mini-instruct.jinja", "phi3", "<|end|>"),
}
CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
]
CHATML = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
          "Hello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
LLAMA3 = ("<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|><|start_header_id|>user"
          "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant"
          "<|end_header_id|>\n\n")
PHI3 = ("<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\n"
        "What is 2+2?<|end|>\n<|assistant|>\n")
# What each model's official template renders from CHAT, and from one user turn "Hi" (model cards).
OFFICIAL = {
    "qwen2": (CHATML, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                      "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    "qwen3": (CHATML, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    # Llama 3.1 dates its system turn; its leading <|begin_of_text|> is left to the tokenizer (add_bos).
    "llama": (LLAMA3.replace("\n\nYou are helpful.", "\n\nCutting Knowledge Date: December 2023\n"
                             "Today Date: 26 Jul 2024\n\nYou are helpful."),
              "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: "
              "26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "phi3": (PHI3, "<|user|>\nHi<|end|>\n<|assistant|>\n"),
}
BUILTIN = {"chatml": CHATML, "llama3": LLAMA3, "phi3": PHI3}


def family_tokenizer(arch: str, template: str | None = None) -> Tokenizer:
    """The tiny model's tokenizer, its GGUF metadata carrying `template` as tokenizer.chat_template."""
    meta = dict(GGUFFile(DATA / "tiny-archs" / FAMILIES[arch][0]).metadata)
    if template is not None:
        meta["tokenizer.chat_template"] = template
    return Tokenizer.from_metadata(meta)


def official(arch: str) -> str:
    return (TEMPLATES / FAMILIES[arch][1]).read_text(encoding="utf-8")


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_the_official_template_renders_what_the_model_card_shows(arch: str) -> None:
    template = load_chat_template(family_tokenizer(arch, official(arch)), arch)
    assert template.source == "model"
    assert template.render(CHAT) == OFFICIAL[arch][0]
    assert template.render(CHAT[1:2]) == OFFICIAL[arch][1]


def test_qwen3s_template_drops_the_reasoning_of_earlier_turns() -> None:
    template = load_chat_template(family_tokenizer("qwen3", official("qwen3")), "qwen3")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
            {"role": "user", "content": "Bye"}]
    assert template.render(chat) == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                                     "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_a_model_without_a_template_gets_its_familys_builtin_from_its_vocabulary(arch: str) -> None:
    tok = family_tokenizer(arch)
    assert tok.chat_template is None
    family = FAMILIES[arch][2]
    template = load_chat_template(tok, arch)
    assert template.source == f"builtin:{family}"
    assert template.render(CHAT) == BUILTIN[family]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_the_official_template_names_its_family_as_llama_cpp_detects_it(arch: str) -> None:
    assert detect_family(official(arch)) == FAMILIES[arch][2]


def test_detection_leaves_chatml_lookalikes_and_unknown_templates_alone() -> None:
    assert detect_family("{{ '<|im_start|>' + m.role + '<|im_sep|>' }}") is None  # llama.cpp's phi4
    assert detect_family("{% for m in messages %}{{ m.content }}{% endfor %}") is None


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_a_template_jinja_cannot_parse_falls_back_to_the_builtin_its_text_names(arch: str) -> None:
    broken = official(arch) + "{% endfor %}"  # one block closed too many
    template = load_chat_template(family_tokenizer(arch, broken), arch)
    family = FAMILIES[arch][2]
    assert template.source.startswith(f"builtin:{family} ")
    assert template.render(CHAT) == BUILTIN[family]


def test_a_broken_template_that_names_no_family_is_refused() -> None:
    with pytest.raises(ChatTemplateError, match="does not parse"):
        load_chat_template(family_tokenizer("qwen2", "{% for m in messages %}"), "qwen2")


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_the_rendered_turn_markers_are_single_tokens_and_the_end_of_turn_ends_generation(arch: str) -> None:
    tok = family_tokenizer(arch)
    marker = FAMILIES[arch][3]
    end = tok.token_id(marker)
    assert end is not None and tok.is_end_of_generation(end)
    ids = tok.encode(load_chat_template(tok, arch).render(CHAT), parse_special=True)
    assert ids.count(end) == 4  # one per message
    assert tok.encode(marker) != [end]  # without special parsing the marker is text
