"""The Tokenizer: a model's vocabulary from GGUF metadata, encoding with its SentencePiece or BPE
model, decoding and the ids that end generation, exact to llama.cpp (`src/llama-vocab.cpp`).

`tokenizer.ggml.add_eos_token` is not applied: encode never appends EOS.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from host_functions.errors import ModelFormatError, RealmError, UnsupportedError
from host_functions.tokenizer.bpe import BpeModel
from host_functions.tokenizer.decoding import StreamDecoder, clean_up_spaces, render
from host_functions.tokenizer.interrupt import Interrupt, never
from host_functions.tokenizer.metadata import index_tokens, merges, packed_strings, per_token
from host_functions.tokenizer.partition import SpecialTokens
from host_functions.tokenizer.pre_tokenizers import PreTokenizer, pre_tokenizer
from host_functions.tokenizer.special_tokens import (
    EOM_TEXTS,
    EOT_TEXTS,
    drop_eog_exceptions,
    first_present,
    fix_token_types,
)
from host_functions.tokenizer.spm import SpmModel
from host_functions.tokenizer.token_type import TokenType
from host_functions.tokenizer.vocab_index import VocabIndex

_FRAGMENTS_PER_INTERRUPT = 256  # text cut by many special tokens: many short merges


class Tokenizer:
    """A model's tokenizer: `encode` text to ids, `decode` ids to text, stream-decode tokens.

    Build it with `Tokenizer.from_metadata(gguf.metadata)`.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    add_bos: bool
    add_space_prefix: bool
    kind: str
    chat_template: str | None  # the model's Jinja chat template (tokenizer.chat_template), if it has one

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer a GGUF file describes (its `tokenizer.ggml.*` keys).

        Raises ModelFormatError when the vocabulary is missing or inconsistent, and
        UnsupportedError for tokenizer models or pre-tokenizers Realm does not implement.
        """
        kind = meta.get("tokenizer.ggml.model")
        if kind is None:
            raise ModelFormatError("model has no tokenizer (tokenizer.ggml.model is missing)")
        if kind not in ("llama", "gpt2"):
            raise UnsupportedError(f"tokenizer model {kind!r} is not supported (only 'llama' and 'gpt2')")
        return cls(meta, kind)

    def __init__(self, meta: Mapping[str, Any], kind: str) -> None:
        tokens = packed_strings(meta, "tokenizer.ggml.tokens")
        if not tokens:
            raise ModelFormatError("model has no tokenizer vocabulary (tokenizer.ggml.tokens)")
        self.vocab_size = n = len(tokens)
        self.kind = kind  # "llama" (SentencePiece) or "gpt2" (byte-level BPE), as tokenizer.ggml.model says
        self._vocab = index_tokens(tokens)
        # array('f'): compact, and indexing yields Python floats for the merge heap
        self._scores = array("f", per_token(meta, "tokenizer.ggml.scores", n, 0.0, np.float32).tobytes())
        self._types = per_token(meta, "tokenizer.ggml.token_type", n, int(TokenType.NORMAL), np.int32)

        pre: PreTokenizer | None = None
        if kind == "llama":
            defaults = {"bos": 1, "eos": 2, "unk": 0}
            add_bos_default, space_prefix_default = True, True
        else:
            pre = pre_tokenizer(meta.get("tokenizer.ggml.pre") or "")
            defaults = {"bos": 11, "eos": 11}
            add_bos_default, space_prefix_default = pre.add_bos, False
        self.add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", space_prefix_default))

        def special(name: str) -> int | None:
            # An id the file gives wins if it is in range; llama.cpp's defaults only if in range.
            given = meta.get(f"tokenizer.ggml.{name}_token_id")
            if isinstance(given, int) and 0 <= given < n:
                return given
            default = defaults.get(name)
            return default if default is not None and default < n else None

        self.bos_id, self.eos_id, self.unk_id = special("bos"), special("eos"), special("unk")
        self._model: SpmModel | BpeModel = (
            SpmModel(self._vocab, self._scores, self.add_space_prefix, self.unk_id) if pre is None
            else BpeModel(self._vocab, pre, merges(meta)))
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
        if self.add_bos and self.bos_id is None:
            raise ModelFormatError("tokenizer.ggml.add_bos_token is true, but the vocabulary has no BOS token")

        template = meta.get("tokenizer.chat_template")
        self.chat_template = template if isinstance(template, str) and template.strip() else None

        self.eot_id = _given_or_found(special("eot"), self._vocab, EOT_TEXTS, self.eos_id)
        eom_id = _given_or_found(special("eom"), self._vocab, EOM_TEXTS, self.eos_id)
        self._eog = fix_token_types(self._vocab, self._types, special)
        self._eog.update(t for t in (self.eos_id, self.eot_id, eom_id) if t is not None)
        drop_eog_exceptions(self._vocab, self._types, self._eog)
        name = meta.get("general.name")
        self._special_tokens = SpecialTokens.of_vocabulary(self._vocab, self._types,
                                                           name if isinstance(name, str) else "")
        self._piece_cache: dict[int, bytes] = {}  # rendered pieces, only of the ids seen

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False,
               interrupt: Interrupt = never, continuation: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize` computes them.

        `add_bos` None follows the model (`tokenizer.ggml.add_bos_token`). With
        `parse_special`, the text of CONTROL tokens (e.g. "<start_of_turn>") becomes those
        tokens; without it, it is tokenized as plain text. `interrupt` is called every
        INTERRUPT_EVERY steps of a long encode; whatever it raises ends the encode. `continuation`: the
        text continues earlier text, so SentencePiece adds no space before it (the tokens' bytes are
        exactly the text's, as a grammar engine re-tokenizing generated text needs). Raises
        UnsupportedError when a BOS is asked for and the vocabulary has none, and RealmError for
        text that is not valid Unicode.
        """
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise RealmError("text to tokenize is not valid Unicode (it holds a lone surrogate)") from None
        out: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise UnsupportedError("this vocabulary has no BOS token")
            out.append(self.bos_id)
        after_special = not continuation  # SentencePiece prefixes a space at the start and after specials
        for k, fragment in enumerate(self._special_tokens.partition(text, parse_special, interrupt)):
            if k % _FRAGMENTS_PER_INTERRUPT == 0:
                interrupt()
            if isinstance(fragment, int):
                out.append(fragment)
                after_special = True
            else:
                self._model.encode(self._model.prepare(fragment, after_special), out, interrupt)
                after_special = False
        return out

    # -- decoding ------------------------------------------------------------------------------

    def _check_id(self, tid: int) -> None:
        if not 0 <= tid < self.vocab_size:
            raise RealmError(f"token id {tid} is out of range (vocabulary has {self.vocab_size} tokens)")

    def token_id(self, text: str) -> int | None:
        """The id of the vocabulary entry spelled exactly `text`, or None."""
        return self._vocab.get(text)

    def piece(self, id: int) -> str:
        """The vocabulary entry exactly as stored (e.g. "▁Paris", "<0x0A>", "<bos>"). Raises
        RealmError for an id outside the vocabulary."""
        self._check_id(id)
        return self._vocab.piece(id)

    def token_bytes(self, id: int) -> bytes:
        """The bytes token `id` contributes to output text (llama.cpp's token_to_piece, special=false).
        Raises RealmError for an id outside the vocabulary."""
        self._check_id(id)
        cached = self._piece_cache.get(id)
        if cached is None:
            cached = self._piece_cache[id] = render(int(self._types[id]), self._vocab.piece(id),
                                                    self._model.normal_bytes)
        return cached

    def every_token_bytes(self) -> list[bytes]:
        """token_bytes of every id in order, without filling the cache of the ids generation sees."""
        return [render(int(self._types[i]), self._vocab.piece(i), self._model.normal_bytes)
                for i in range(self.vocab_size)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` as llama.cpp's `llama_detokenize` (no special-token text) gives it.

        Like llama.cpp, a vocabulary that prefixes a space when encoding drops one leading
        space from the first token, and BPE vocabularies with clean-up enabled drop the space
        before ".,!?" and some contractions. Invalid UTF-8 becomes U+FFFD. Raises RealmError for
        an id outside the vocabulary.
        """
        data = bytearray()
        for k, tid in enumerate(ids):
            piece = self.token_bytes(tid)
            if k == 0 and self.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]
            data += piece
        if self._model.clean_spaces:
            data = clean_up_spaces(data)
        return bytes(data).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder that turns tokens into text one at a time (see StreamDecoder)."""
        return StreamDecoder(self.token_bytes)

    # -- generation ----------------------------------------------------------------------------

    def is_end_of_generation(self, id: int) -> bool:
        """Whether llama.cpp stops generating at this token (EOS, EOT such as <end_of_turn>, ...)."""
        return id in self._eog

    @property
    def token_types(self) -> np.ndarray:
        """Every token's type (TokenType values, int32), as the file gives them after llama.cpp's fixes."""
        return self._types

    @property
    def end_of_generation_ids(self) -> frozenset[int]:
        """Every id that ends generation."""
        return frozenset(self._eog)


def _given_or_found(given: int | None, vocab: VocabIndex, texts: Sequence[str], eos: int | None) -> int | None:
    """The id the file names, else one spelled as one of `texts` (llama.cpp's detection by text): EOS if
    it is one, else the lowest. llama.cpp takes the first in its hash map's order; preferring EOS gives
    its choice on Qwen, Llama 3, Phi-3 and Gemma 3 vocabularies alike (the end-of-generation set, which
    holds every candidate, does not depend on it)."""
    if given is not None:
        return given
    if eos is not None and vocab.piece(eos) in texts:
        return eos
    return first_present(vocab, texts)
