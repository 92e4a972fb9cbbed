"""Chat templates against llama.cpp's own expectations (tests/test-chat-template.cpp: one conversation,
and the prompt each template must produce), the family fallback, and hostile templates."""

from __future__ import annotations

import pytest
from guest_helpers import TINY_LLAMA

from host_functions.errors import ChatTemplateError
from host_functions.formats.gguf_file import GGUFFile
from host_functions.tokenizer import Tokenizer
from realm.chat import BUILTIN_TEMPLATES, compile_template, load_chat_template, template_family
from realm.models import default_model_path

# llama.cpp's test conversation, and what its built-in templates of these names render from it.
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]
LLAMA_CPP_EXPECTED = {
    "chatml": "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
              "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
              "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama2": "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]"
              "   I am an assistant   </s>[INST] Another question [/INST]",
    "gemma": "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there"
             "<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant"
             "<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
              "\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "phi3": "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n"
            "<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question"
            "<|end|>\n<|assistant|>\n",
}
# Model templates from the same llama.cpp test (Jinja, as a GGUF would carry them).
OPENHERMES = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}")
GEMMA_7B_IT = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
               "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | "
               "trim + '<end_of_turn>\\n' }}{% endfor %}")


@pytest.fixture(scope="module")
def tiny() -> Tokenizer:
    return Tokenizer.from_metadata(GGUFFile(TINY_LLAMA).metadata)


@pytest.fixture(scope="module")
def gemma() -> Tokenizer:
    return Tokenizer.from_metadata(GGUFFile(default_model_path()).metadata)


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_EXPECTED))
def test_builtin_template_renders_what_llama_cpp_renders(tiny, name):
    template = load_chat_template(tiny, "llama", override=name)
    assert template.source == f"builtin:{name}"
    assert template.render(CONVERSATION) == LLAMA_CPP_EXPECTED[name]


def test_every_builtin_has_llama_cpps_expectation():
    assert set(BUILTIN_TEMPLATES) == set(LLAMA_CPP_EXPECTED)


@pytest.mark.parametrize("text, name", [(OPENHERMES, "chatml"), (LLAMA3, "llama3")])
def test_a_models_jinja_template_renders_like_the_builtin_and_the_leading_bos_is_left_to_the_tokenizer(
        tiny, text, name):
    # tiny-llama adds BOS when tokenizing, so the BOS text llama3's template writes first is dropped.
    assert compile_template(text, "model", tiny).render(CONVERSATION) == LLAMA_CPP_EXPECTED[name]


def test_the_bundled_gemma_has_no_template_and_gets_the_gemma_builtin(gemma):
    assert gemma.chat_template is None
    template = load_chat_template(gemma, "gemma3")
    assert template.source == "builtin:gemma"
    ids = gemma.encode(template.render([{"role": "user", "content": "Hi"}]), parse_special=True)
    start, end = gemma.token_id("<start_of_turn>"), gemma.token_id("<end_of_turn>")
    assert ids[0] == gemma.bos_id and ids.count(start) == 2 and ids.count(end) == 1


def test_family_fallback_follows_the_vocabulary_then_the_architecture(tiny, gemma):
    assert template_family(gemma, "gemma3") == "gemma"
    assert template_family(tiny, "llama") == "llama2"
    assert template_family(tiny, "gemma3") == "gemma"


def test_a_template_file_overrides_the_model(tiny, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}")
    assert load_chat_template(tiny, "llama", str(path)).render(CONVERSATION[:2]) == \
        "[system:You are a helpful assistant][user:Hello]"
    with pytest.raises(ChatTemplateError, match="neither a built-in"):
        load_chat_template(tiny, "llama", str(tmp_path / "missing.jinja"))


def test_raise_exception_and_bad_messages_are_clean_errors(tiny):
    refusing = compile_template(GEMMA_7B_IT, "model", tiny)
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        refusing.render(CONVERSATION)
    chatml = load_chat_template(tiny, "llama", "chatml")
    with pytest.raises(ChatTemplateError, match="role must be one of"):
        chatml.render([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="content must be a string"):
        chatml.render([{"role": "user", "content": 3}])
    with pytest.raises(ChatTemplateError, match="non-empty"):
        chatml.render([])


@pytest.mark.parametrize("text", [
    "{{ messages.__class__.__mro__ }}",  # reaching Python internals
    "{{ ''.__class__.__subclasses__() }}",
    "{% set x = messages.append(1) %}",  # changing its arguments
])
def test_a_hostile_template_cannot_reach_python_or_change_its_input(tiny, text):
    with pytest.raises(ChatTemplateError):
        compile_template(text, "model", tiny).render([{"role": "user", "content": "x"}])


def test_a_template_that_does_not_parse_is_refused_when_loaded(tiny):
    with pytest.raises(ChatTemplateError, match="does not parse"):
        compile_template("{% for %}", "model", tiny)


