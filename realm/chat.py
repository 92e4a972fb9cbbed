"""Chat templates: turn a list of messages into the prompt text a chat model was trained on.

The model's own template (GGUF `tokenizer.chat_template`, Jinja) is rendered the way llama.cpp
renders it: a sandboxed Jinja environment with `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception` and `strftime_now`, HF's trim_blocks/lstrip_blocks, and a leading
BOS text removed because the tokenizer adds BOS itself. A template Jinja cannot parse gets the
built-in of the family its text names, as llama.cpp's `llm_chat_detect_template` finds it. A
model without a template (the bundled Gemma 3 270M) gets a built-in one for its family, written in
Jinja from llama.cpp's C++ built-ins; the family is recognised by the markers llama.cpp's template
detection looks for, found here in the vocabulary. `--chat-template NAME|FILE` overrides both.

The rendered text contains special-token text ("<start_of_turn>"), so the guest must tokenize it
with PARSE_SPECIAL (the reference guest does when the request has `"special": true`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from host_functions.errors import ChatTemplateError
from host_functions.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "developer", "tool")  # developer: OpenAI's newer name for system
_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # kept for templates that render tool turns


# The built-ins, as Jinja, each what llama.cpp's C++ template of that name produces (llama-chat.cpp).
BUILTIN_TEMPLATES: dict[str, str] = {
    # Gemma has no system role: llama.cpp folds the system text into the first user turn.
    "gemma": (
        "{%- set ns = namespace(system='') -%}"
        "{%- for m in messages -%}"
        "{%- if m.role == 'system' -%}{%- set ns.system = ns.system + (m.content | trim) -%}"
        "{%- else -%}"
        "{%- set role = 'model' if m.role == 'assistant' else m.role -%}"
        "{{ '<start_of_turn>' + role + '\\n' }}"
        "{%- if ns.system and role != 'model' -%}{{ ns.system + '\\n\\n' }}{%- set ns.system = '' -%}{%- endif -%}"
        "{{ (m.content | trim) + '<end_of_turn>\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
    ),
    "chatml": (
        "{%- for m in messages -%}"
        "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    "phi3": (
        "{%- for m in messages -%}"
        "{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
    ),
    "llama3": (
        "{%- for m in messages -%}"
        "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
    ),
    # llama.cpp's plain "llama2": a system message is the first text of the turn, without <<SYS>>.
    "llama2": (
        "{%- set ns = namespace(inside=true) -%}"
        "{{ '[INST] ' }}"
        "{%- for m in messages -%}"
        "{%- if not ns.inside -%}{%- set ns.inside = true -%}{{ '[INST] ' }}{%- endif -%}"
        "{%- if m.role == 'system' -%}{{ m.content + '\\n' }}"
        "{%- elif m.role == 'user' -%}{{ m.content + ' [/INST]' }}"
        "{%- else -%}{{ m.content + '</s>' }}{%- set ns.inside = false -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
}

# (family, markers): a family is detected where all its markers are found, in the order of
# llama.cpp's `llm_chat_detect_template` (a template's text holds them; a vocabulary has them as tokens).
_FAMILY_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("chatml", ("<|im_start|>",)),
    ("phi3", ("<|assistant|>", "<|end|>")),
    ("gemma", ("<start_of_turn>",)),
    ("llama3", ("<|start_header_id|>", "<|end_header_id|>")),
)
# Templates that hold chatml's marker but are other formats llama.cpp knows (phi4, smolvlm).
_NOT_CHATML = ("<|im_sep|>", "<end_of_utterance>")


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and where it came from ("model", "builtin:gemma", a file path)."""

    source: str
    text: str
    bos_token: str
    eos_token: str
    strip_bos: bool  # the tokenizer adds BOS, so a BOS the template writes first is dropped
    _template: jinja2.Template

    @property
    def renders_tools(self) -> bool:
        """Whether the template renders tool definitions and tool turns itself (it reads `tools`)."""
        return "tools" in self.text

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text for `messages` ({"role", "content"} mappings, content a string; an assistant
        turn with `tool_calls` may have none), with `tools` (OpenAI's tool objects) for a template that
        renders them.

        Raises ChatTemplateError when a message is malformed or the template raises.
        """
        checked = [_check_message(i, m) for i, m in enumerate(messages)]
        if not checked:
            raise ChatTemplateError("messages must be a non-empty list")
        try:
            text = self._template.render(messages=checked, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token,
                                         tools=list(tools) if tools else None)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template ({self.source}) failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001  a model's template is data: any failure is its, not ours
            raise ChatTemplateError(f"chat template ({self.source}) failed: {type(exc).__name__}: {exc}") from None
        if self.strip_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        return text


def load_chat_template(tokenizer: Tokenizer, arch: str, override: str | None = None) -> ChatTemplate:
    """The template to use: `override` (a built-in name or a file of Jinja), else the model's own,
    else the built-in for the model's family. Raises ChatTemplateError if it cannot be read or parsed."""
    if override:
        if override in BUILTIN_TEMPLATES:
            return compile_template(BUILTIN_TEMPLATES[override], f"builtin:{override}", tokenizer)
        path = Path(override).expanduser()
        try:
            return compile_template(path.read_text(encoding="utf-8"), str(path), tokenizer)
        except (OSError, UnicodeDecodeError) as exc:
            names = ", ".join(BUILTIN_TEMPLATES)
            raise ChatTemplateError(f"--chat-template {override!r} is neither a built-in ({names}) "
                                    f"nor a readable file: {exc}") from None
    if tokenizer.chat_template:
        return _model_template(tokenizer.chat_template, tokenizer)
    family = template_family(tokenizer, arch)
    return compile_template(BUILTIN_TEMPLATES[family], f"builtin:{family}", tokenizer)


def _model_template(text: str, tokenizer: Tokenizer) -> ChatTemplate:
    """The model's own template; where Jinja cannot parse it, the built-in its text names (llama.cpp
    without --jinja detects and uses its built-in always). ChatTemplateError when it names none."""
    try:
        return compile_template(text, "model", tokenizer)
    except ChatTemplateError:
        family = detect_family(text)
        if family is None:
            raise
    return compile_template(BUILTIN_TEMPLATES[family], f"builtin:{family} (the model's template names it)",
                            tokenizer)


def detect_family(template: str) -> str | None:
    """The built-in a template's text is written for, by llama.cpp's markers; None if none."""
    for family, markers in _FAMILY_MARKERS:
        if all(m in template for m in markers):
            if family == "chatml" and any(m in template for m in _NOT_CHATML):
                return None
            return family
    return None


def template_family(tokenizer: Tokenizer, arch: str) -> str:
    """The built-in template for a model without one: its turn markers if the vocabulary has them,
    llama2 for a SentencePiece llama, else chatml (llama.cpp's own last resort)."""
    for family, markers in _FAMILY_MARKERS:
        if all(tokenizer.token_id(m) is not None for m in markers):
            return family
    if arch.startswith("gemma"):
        return "gemma"
    return "llama2" if arch == "llama" and tokenizer.kind == "llama" else "chatml"


def compile_template(text: str, source: str, tokenizer: Tokenizer) -> ChatTemplate:
    """Compile Jinja template text in the sandbox; ChatTemplateError if it does not parse."""
    try:
        template = _environment().from_string(text)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template ({source}) does not parse: {exc}") from None
    bos = tokenizer.piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.piece(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    return ChatTemplate(source, text, bos, eos, tokenizer.add_bos, template)


def _environment() -> ImmutableSandboxedEnvironment:
    # What HF transformers and llama.cpp give templates: trimmed blocks, loop controls, a tojson
    # that keeps non-ASCII text, raise_exception and strftime_now. Sandboxed and immutable: a
    # template from a model file can read its arguments, never reach Python objects or change them.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                                        extensions=["jinja2.ext.loopcontrols"], undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(str(fmt))
    return env


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template refused the messages: {message}")


def _check_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"messages[{index}] must be an object")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ChatTemplateError(f"messages[{index}].role must be one of {', '.join(ROLES)}, got {role!r}")
    if content is None and role == "assistant" and message.get("tool_calls"):
        content = ""
    if not isinstance(content, str):
        raise ChatTemplateError(f"messages[{index}].content must be a string")
    checked = {"role": "system" if role == "developer" else role, "content": content}
    checked.update({k: message[k] for k in _TOOL_KEYS if message.get(k) is not None})
    return checked
