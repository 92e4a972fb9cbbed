"""Which tokens are special: llama.cpp's fixes to the token types a file gives, and the tokens
that end generation.

llama.cpp recognises well-known token texts (its end-of-generation list, fill-in-the-middle
markers) and forces their type to CONTROL; we do the same, so e.g. Gemma's user-defined "</s>" is a
control token that ends generation, as in llama.cpp today. Where several candidates exist and
llama.cpp takes the first in hash-map order (EOT, FIM), we take the lowest id (EOT: EOS first, see
`tokenizer._given_or_found`). Also here: llama.cpp's exceptions to the end-of-generation set, and the
phi-3 name rule (`rstrip_ids`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from host_functions.tokenizer.token_type import TokenType
from host_functions.tokenizer.vocab_index import VocabIndex

# llama.cpp recognises these by their text and forces them to CONTROL; every id listed here
# also ends generation (`special_eog_ids`, built from the token text in llama_vocab::load).
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
))
# End-of-turn candidates when the file names no `eot_token_id` (checked in this order).
EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
)
# End-of-message candidates when the file names no `eom_token_id`.
EOM_TEXTS = ("<|eom_id|>",)
# Fill-in-the-middle tokens llama.cpp detects by text (and forces to CONTROL) when the file
# does not name them; pad/repo/file-separator also end generation.
_FIM_TEXTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "fim_pre": (("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>",
                 "<PRE>", "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"), False),
    "fim_suf": (("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>",
                 "<SUF>", "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"), False),
    "fim_mid": (("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>",
                 "<MID>", "\u2581<MID>", "<|code_middle|>", "<|middle|>"), False),
    "fim_pad": (("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"), True),
    "fim_rep": (("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"), True),
    "fim_sep": (("<|file_sep|>",), True),
}
# gpt-oss chat markers llama.cpp always renders as text.
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def first_present(vocab: VocabIndex, texts: Sequence[str]) -> int | None:
    """The id of one of `texts` the vocabulary has: the lowest (llama.cpp takes whichever its hash
    map yields first), None if it has none."""
    ids = [tid for t in texts if (tid := vocab.get(t)) is not None]
    return min(ids) if ids else None


def fix_token_types(vocab: VocabIndex, types: np.ndarray, given_id: Callable[[str], int | None]) -> set[int]:
    """Apply llama.cpp's text-based fixes to `types` (in place); return the ids that end generation
    besides EOS, EOT and EOM. `given_id(name)` is the id the file gives for `tokenizer.ggml.{name}_token_id`."""
    control = int(TokenType.CONTROL)
    eog: set[int] = set()
    for name, (texts, ends_generation) in _FIM_TEXTS.items():
        tid = given_id(name)
        if tid is None:
            tid = first_present(vocab, texts)
            if tid is not None:
                types[tid] = control
        if tid is not None and ends_generation:
            eog.add(tid)
    for text in _EOG_TEXTS:  # a superset of the EOT and EOM texts, so those become CONTROL too
        tid = vocab.get(text)
        if tid is not None:
            eog.add(tid)
            types[tid] = control
    for text in _ALWAYS_USER_DEFINED:
        tid = vocab.get(text)
        if tid is not None:
            types[tid] = int(TokenType.USER_DEFINED)
    return eog


def drop_eog_exceptions(vocab: VocabIndex, types: np.ndarray, eog: set[int]) -> None:
    """llama.cpp's two exceptions to the end-of-generation set, applied once EOS, EOT and EOM are in it
    (in place): where "<|return|>" or "<|flush|>" and "<|call|>" or "<|calls|>" end generation (gpt-oss,
    solar-open), "<|end|>" ends a message only and becomes USER_DEFINED; where "<|tool_response>" or
    "<|plamo:eos|>" does (gemma4, plamo), "</s>" is a NORMAL token."""
    texts = {vocab.piece(tid) for tid in eog}
    calls = bool(texts & {"<|call|>", "<|calls|>"}) and bool(texts & {"<|return|>", "<|flush|>"})
    for drop, when, kind in (("<|end|>", calls, TokenType.USER_DEFINED),
                             ("</s>", bool(texts & {"<|tool_response>", "<|plamo:eos|>"}), TokenType.NORMAL)):
        tid = vocab.get(drop)
        if when and tid in eog:
            eog.discard(tid)
            types[tid] = int(kind)


def rstrip_ids(model_name: str, vocab: VocabIndex, special: Iterable[int]) -> frozenset[int]:
    """The tokens llama.cpp gives the RSTRIP attribute (whitespace after them is dropped when they are
    cut out of text): for a model whose `general.name` says phi-3, every `special` token (those cut
    out of text: CONTROL, USER_DEFINED, UNKNOWN) and "</s>", except "<unk>", "<s>" and
    "<|endoftext|>". None for any other model."""
    name = model_name.lower()
    if "phi3" not in name and "phi-3" not in name:
        return frozenset()
    ids = set(special)
    if (eos_text := vocab.get("</s>")) is not None:
        ids.add(eos_text)
    ids.difference_update(tid for t in ("<unk>", "<s>", "<|endoftext|>") if (tid := vocab.get(t)) is not None)
    return frozenset(ids)
