"""Text <-> token ids from GGUF metadata, exact to llama.cpp (`src/llama-vocab.cpp`).

Two vocabularies are supported, chosen by `tokenizer.ggml.model`:

- ``llama``: SentencePiece-style (Llama 2, Gemma 3). Spaces become U+2581, then adjacent
  symbols are merged greedily by the score of the token they form (llama.cpp's
  ``llm_tokenizer_spm``); symbols that form no token fall back to ``<0xNN>`` byte tokens.
- ``gpt2``: byte-level BPE (Llama 3, Qwen 2). A pre-tokenizer regex chosen by
  ``tokenizer.ggml.pre`` splits the text into words, each word's UTF-8 bytes are mapped to
  GPT-2's printable characters, and pairs are merged by their rank in ``tokenizer.ggml.merges``.

Before either runs, special tokens are cut out of the raw text the way llama.cpp does
(``tokenizer_st_partition``): USER_DEFINED tokens always, CONTROL and UNKNOWN tokens only
when ``parse_special`` is set; longer tokens are cut first.

Decoding follows ``llama_detokenize(..., remove_special=false, unparse_special=false)``:
CONTROL and UNKNOWN tokens contribute nothing, USER_DEFINED tokens their text verbatim.

Decisions where llama.cpp is silent, nondeterministic or out of scope:
- llama.cpp also forces the token types of well-known texts (its EOG list, FIM markers) to
  CONTROL; we do the same, so e.g. Gemma's user-defined "</s>" is a control token that ends
  generation, as in llama.cpp today. Where several candidates exist and llama.cpp takes the
  first in hash-map order (EOT, FIM), we take the lowest id.
- Special tokens of equal byte length are cut out in id order (llama.cpp's sort is unstable).
- The per-model LSTRIP/RSTRIP attributes (phi-3, jina, modern-bert) are not applied.
- A byte with no ``<0xNN>`` token becomes ``<unk>`` (llama.cpp aborts).
- `tokenizer.ggml.add_eos_token` is not applied: encode never appends EOS.
"""

from __future__ import annotations

import codecs
import heapq
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import regex

from host_functions.errors import ModelFormatError, RealmError, UnsupportedError
from host_functions.formats.gguf_file import PackedStrings
from host_functions.tokenizer.vocab_index import DuplicatePiece, VocabIndex

__all__ = ["Tokenizer", "StreamDecoder", "TokenType"]

SPACE_MARK = "\u2581"  # SentencePiece's visible space, "▁"
# Long encodes call `interrupt` every this many merge steps, so a caller can cut them off at a deadline.
INTERRUPT_EVERY = 1 << 14

_FRAGMENTS_PER_INTERRUPT = 256  # text cut by many special tokens: many short merges

Interrupt = Callable[[], None]


def _never() -> None:
    pass


class TokenType(IntEnum):
    """GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Tokens cut out of raw text before the model's own algorithm runs; CONTROL and UNKNOWN only
# when the caller asks to parse specials (llama.cpp's `cache_special_tokens`).
_PARTITIONED_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
# Tokens that render as nothing in text output (llama.cpp: `token_to_piece(special=false)`).
_SILENT_TYPES = frozenset((TokenType.CONTROL, TokenType.UNKNOWN))

# llama.cpp recognises these by their text and forces them to CONTROL; every id listed here
# also ends generation (`special_eog_ids`, built from the token text in llama_vocab::load).
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
))
# End-of-turn candidates when the file names no `eot_token_id` (checked in this order).
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
)
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


# ---------------------------------------------------------------------------------------------
# SentencePiece-style (tokenizer.ggml.model == "llama")
# ---------------------------------------------------------------------------------------------

class _SpmModel:
    """llama.cpp's `llm_tokenizer_spm`: greedy bigram merges by token score."""

    clean_spaces = False

    def __init__(self, tok: Tokenizer) -> None:
        self._tok = tok
        self._byte_ids = [self._byte_token(tok, b) for b in range(256)]

    @staticmethod
    def _byte_token(tok: Tokenizer, b: int) -> int | None:
        # llama_vocab::byte_to_token: the <0xNN> token, else the byte itself as a token.
        found = tok._vocab.get(f"<0x{b:02X}>")
        if found is None and b < 0x80:
            found = tok._vocab.get(chr(b))
        return found

    def prepare(self, fragment: str, after_special: bool) -> str:
        if self._tok.add_space_prefix and after_special:
            fragment = " " + fragment
        return fragment.replace(" ", SPACE_MARK)

    def encode(self, text: str, out: list[int], interrupt: Interrupt = _never) -> None:
        to_id, scores = self._tok._vocab, self._tok._scores
        n = len(text)
        # One symbol per code point: symbol i starts at text[i]; its length (0 once merged away) and
        # neighbours change as pairs merge.
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = text[left:right + size[right]]
            tid = to_id.get(merged)
            if tid is not None:
                # highest score first; ties go to the leftmost pair (llm_bigram_spm::comparator)
                heapq.heappush(queue, (-scores[tid], left, right, len(merged)))

        # The first pairs in one pass and one heapify (same heap order as pushing them one by one).
        pairs = map(to_id.get, [text[i:i + 2] for i in range(n - 1)])
        queue = [(-scores[tid], i, i + 1, 2) for i, tid in enumerate(pairs) if tid is not None]
        heapq.heapify(queue)
        steps = 0
        while queue:
            steps += 1
            if steps % INTERRUPT_EVERY == 0:
                interrupt()
            _, left, right, merged_size = heapq.heappop(queue)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != merged_size:
                continue  # one side changed since this pair was queued
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        i = 0 if n else -1
        while i != -1:
            piece = text[i:i + size[i]]
            tid = to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                self._byte_fallback(piece, out)
            i = nxt[i]

    def _byte_fallback(self, piece: str, out: list[int]) -> None:
        for b in piece.encode("utf-8"):
            tid = self._byte_ids[b]
            if tid is None:
                tid = self._tok.unk_id
            if tid is None:
                raise UnsupportedError(f"vocabulary has no token for byte 0x{b:02X} and no unknown token")
            out.append(tid)

    def normal_bytes(self, text: str) -> bytes:
        return text.replace(SPACE_MARK, " ").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Byte-level BPE (tokenizer.ggml.model == "gpt2")
# ---------------------------------------------------------------------------------------------

def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_UNICODE = _gpt2_byte_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class _PreTokenizer:
    """One row of llama.cpp's pre-tokenizer table (`llm_tokenizer_bpe` and `llama_vocab::load`)."""

    splits: tuple[str, ...]  # applied in turn, each one splitting the pieces of the previous
    ignore_merges: bool = False  # a whole word that is a token is taken as is
    add_bos: bool = False
    clean_spaces: bool = True  # detokenize drops the space in " ?", " 's" and the like


_DEFAULT_PRE = _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"))
_LLAMA3_PRE = _PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = _PreTokenizer((_QWEN2_SPLIT,), clean_spaces=False)
_GPT2_PRE = _PreTokenizer((_GPT2_SPLIT,))

PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    "": _DEFAULT_PRE,  # llama.cpp warns and uses the default when the key is missing
    "default": _DEFAULT_PRE,
    "llama3": _LLAMA3_PRE, "llama-v3": _LLAMA3_PRE, "llama-bpe": _LLAMA3_PRE,
    "qwen2": _QWEN2_PRE, "deepseek-r1-qwen": _QWEN2_PRE,
    "gpt-2": _GPT2_PRE, "gpt2": _GPT2_PRE,
}


class _BpeModel:
    """llama.cpp's `llm_tokenizer_bpe` with GPT-2 byte encoding."""

    def __init__(self, tok: Tokenizer, pre: _PreTokenizer, merges: PackedStrings) -> None:
        self._tok = tok
        self._pre = pre
        self._splits = [regex.compile(p) for p in pre.splits]
        self.clean_spaces = pre.clean_spaces
        # Merge line "left right" -> its rank, the first line winning (a 280000-merge vocabulary as a dict
        # of string pairs would take ~50 MB).
        self._ranks = VocabIndex(merges, unique=False)

    def _rank(self, left: str, right: str) -> int | None:
        # llama.cpp cuts a merge line at its first space after the first character: an empty left side,
        # or one with a space of its own, belongs to no line.
        return None if not left or " " in left[1:] else self._ranks.get(f"{left} {right}")

    def prepare(self, fragment: str, after_special: bool) -> str:
        return fragment

    def _words(self, text: str) -> list[str]:
        pieces = [text]
        for pattern in self._splits:
            # Like unicode_regex_split: matches and the text between them both become pieces.
            split: list[str] = []
            for piece in pieces:
                end = 0
                for m in pattern.finditer(piece):
                    if m.start() > end:
                        split.append(piece[end:m.start()])
                    if m.end() > m.start():
                        split.append(m.group())
                    end = m.end()
                if end < len(piece):
                    split.append(piece[end:])
            pieces = split
        return ["".join(_BYTE_TO_UNICODE[b] for b in p.encode("utf-8")) for p in pieces]

    def encode(self, text: str, out: list[int], interrupt: Interrupt = _never) -> None:
        to_id = self._tok._vocab
        done = 0
        for word in self._words(text):
            done += len(word)
            if done >= INTERRUPT_EVERY:
                done = 0
                interrupt()
            whole = to_id.get(word) if self._pre.ignore_merges else None
            if whole is not None:
                out.append(whole)
                continue
            for piece in self._merge(word, interrupt):
                tid = to_id.get(piece)
                if tid is not None:
                    out.append(tid)
                    continue
                # llama.cpp looks each byte up as a one-byte string: only ASCII can hit.
                out.extend(t for b in piece.encode("utf-8") if b < 0x80 and (t := to_id.get(chr(b))) is not None)

    def _merge(self, word: str, interrupt: Interrupt) -> list[str]:
        symbols = list(word)
        n = len(symbols)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]
        queue: list[tuple[int, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            rank = self._rank(symbols[left], symbols[right])
            if rank is not None:
                heapq.heappush(queue, (rank, left, right, symbols[left] + symbols[right]))

        for i in range(1, n):
            if i % INTERRUPT_EVERY == 0:
                interrupt()
            push(i - 1, i)
        steps = 0
        while queue:
            steps += 1
            if steps % INTERRUPT_EVERY == 0:
                interrupt()
            _, left, right, merged = heapq.heappop(queue)
            if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
                continue  # outdated pair
            symbols[left] = merged
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])
        return [s for s in symbols if s]

    def normal_bytes(self, text: str) -> bytes:
        out = bytearray()
        for ch in text:
            b = _UNICODE_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:  # llama_decode_text's marker for a character outside the byte map
                out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------

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
        tokens = _packed_strings(meta, "tokenizer.ggml.tokens")
        if not tokens:
            raise ModelFormatError("model has no tokenizer vocabulary (tokenizer.ggml.tokens)")
        self.vocab_size = n = len(tokens)
        self.kind = kind  # "llama" (SentencePiece) or "gpt2" (byte-level BPE), as tokenizer.ggml.model says
        self._vocab = _index_tokens(tokens)
        # array('f'): compact, and indexing yields Python floats for the merge heap
        self._scores = array("f", _per_token(meta, "tokenizer.ggml.scores", n, 0.0, np.float32).tobytes())
        self._types = _per_token(meta, "tokenizer.ggml.token_type", n, int(TokenType.NORMAL), np.int32)

        if kind == "llama":
            self._model: _SpmModel | _BpeModel = _SpmModel(self)
            defaults = {"bos": 1, "eos": 2, "unk": 0}
            add_bos_default, self.add_space_prefix = True, True
        else:
            pre_name = meta.get("tokenizer.ggml.pre") or ""
            pre = PRE_TOKENIZERS.get(pre_name)
            if pre is None:
                raise UnsupportedError(f"BPE pre-tokenizer {pre_name!r} is not supported")
            self._model = _BpeModel(self, pre, _merges(meta))
            defaults = {"bos": 11, "eos": 11}
            add_bos_default, self.add_space_prefix = pre.add_bos, False
        self.add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", self.add_space_prefix))

        def special(name: str) -> int | None:
            # An id the file gives wins if it is in range; llama.cpp's defaults only if in range.
            given = meta.get(f"tokenizer.ggml.{name}_token_id")
            if isinstance(given, int) and 0 <= given < n:
                return given
            default = defaults.get(name)
            return default if default is not None and default < n else None

        self.bos_id, self.eos_id, self.unk_id = special("bos"), special("eos"), special("unk")
        self.eot_id = special("eot")
        eom_id = special("eom")
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
        if self.add_bos and self.bos_id is None:
            raise ModelFormatError("tokenizer.ggml.add_bos_token is true, but the vocabulary has no BOS token")

        template = meta.get("tokenizer.chat_template")
        self.chat_template: str | None = template if isinstance(template, str) and template.strip() else None

        self._eog = self._mark_special_tokens(special, eom_id)
        self._partition_tokens = self._partition_table()
        self._piece_cache: dict[int, bytes] = {}  # rendered pieces, only of the ids seen

    # -- construction helpers ------------------------------------------------------------------

    def _mark_special_tokens(self, special: Callable[[str], int | None], eom_id: int | None) -> set[int]:
        """Apply llama.cpp's text-based fixes to token types; return the end-of-generation ids."""
        control = int(TokenType.CONTROL)
        eog: set[int] = set()
        if self.eot_id is None:
            self.eot_id = self._first_present(_EOT_TEXTS)
        if eom_id is None:
            eom_id = self._first_present(("<|eom_id|>",))
        for name, (texts, ends_generation) in _FIM_TEXTS.items():
            tid = special(name)
            if tid is None:
                tid = self._first_present(texts)
                if tid is not None:
                    self._types[tid] = control
            if tid is not None and ends_generation:
                eog.add(tid)
        for text in _EOG_TEXTS:  # a superset of the EOT and EOM texts, so those become CONTROL too
            tid = self._vocab.get(text)
            if tid is not None:
                eog.add(tid)
                self._types[tid] = control
        for text in _ALWAYS_USER_DEFINED:
            tid = self._vocab.get(text)
            if tid is not None:
                self._types[tid] = int(TokenType.USER_DEFINED)
        eog.update(t for t in (self.eos_id, self.eot_id, eom_id) if t is not None)
        return eog

    def _first_present(self, texts: Sequence[str]) -> int | None:
        # llama.cpp takes whichever candidate its hash map yields first; we take the lowest id.
        ids = [tid for t in texts if (tid := self._vocab.get(t)) is not None]
        return min(ids) if ids else None

    def _partition_table(self) -> _SpecialTokens:
        """Every token cut out of raw text, with whether it needs parse_special, longest first."""
        wanted = np.flatnonzero(np.isin(self._types, [int(t) for t in _PARTITIONED_TYPES])).tolist()
        table = [(self._vocab.piece(i), i, int(self._types[i]) != TokenType.USER_DEFINED) for i in wanted]
        table.sort(key=lambda row: -len(row[0].encode("utf-8")))  # stable: equal lengths by id
        return _SpecialTokens(table)

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False,
               interrupt: Interrupt = _never) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize` computes them.

        `add_bos` None follows the model (`tokenizer.ggml.add_bos_token`). With
        `parse_special`, the text of CONTROL tokens (e.g. "<start_of_turn>") becomes those
        tokens; without it, it is tokenized as plain text. `interrupt` is called every
        INTERRUPT_EVERY steps of a long encode; whatever it raises ends the encode. Raises
        UnsupportedError when a BOS is asked for and the vocabulary has none.
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
        after_special = True  # SentencePiece prefixes a space at the start and after specials
        for k, fragment in enumerate(self._partition_tokens.partition(text, parse_special, interrupt)):
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
        """The vocabulary entry exactly as stored (e.g. "▁Paris", "<0x0A>", "<bos>")."""
        self._check_id(id)
        return self._vocab.piece(id)

    def token_bytes(self, id: int) -> bytes:
        """The bytes token `id` contributes to output text (llama.cpp's token_to_piece, special=false)."""
        self._check_id(id)
        cached = self._piece_cache.get(id)
        if cached is None:
            cached = self._piece_cache[id] = self._render(id)
        return cached

    def _render(self, tid: int) -> bytes:
        kind, text = int(self._types[tid]), self._vocab.piece(tid)
        if kind in _SILENT_TYPES:
            return b""
        if kind == TokenType.USER_DEFINED:
            return text.encode("utf-8")
        if kind == TokenType.NORMAL:
            return self._model.normal_bytes(text)
        if kind == TokenType.BYTE:
            return bytes((int(text[3:5], 16),))
        return b""  # UNUSED / UNDEFINED tokens render as nothing, like llama.cpp

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` as llama.cpp's `llama_detokenize` (no special-token text) gives it.

        Like llama.cpp, a vocabulary that prefixes a space when encoding drops one leading
        space from the first token, and BPE vocabularies with clean-up enabled drop the space
        before ".,!?" and some contractions. Invalid UTF-8 becomes U+FFFD.
        """
        data = bytearray()
        for k, tid in enumerate(ids):
            piece = self.token_bytes(tid)
            if k == 0 and self.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]
            data += piece
        if self._model.clean_spaces:
            data = _clean_up_spaces(data)
        return bytes(data).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder that turns tokens into text one at a time (see StreamDecoder)."""
        return StreamDecoder(self)

    # -- generation ----------------------------------------------------------------------------

    def is_end_of_generation(self, id: int) -> bool:
        """Whether llama.cpp stops generating at this token (EOS, EOT such as <end_of_turn>, ...)."""
        return id in self._eog

    @property
    def end_of_generation_ids(self) -> frozenset[int]:
        """Every id that ends generation."""
        return frozenset(self._eog)


class StreamDecoder:
    """Incremental detokenizer: `push` each generated token, get the text complete so far.

    A UTF-8 character split across tokens (byte-fallback tokens) is held back until its last
    byte arrives. Every piece keeps its leading space (" Paris" yields " Paris"), as llama.cpp
    streams with `token_to_piece`; the concatenated output equals `decode` of the same ids
    except where `decode` drops the first token's leading space or cleans up BPE spaces.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        """Add one token; return the text that is complete now (possibly "")."""
        return self._utf8.decode(self._tokenizer.token_bytes(id))

    def flush(self) -> str:
        """End of stream: return what is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class _SpecialTokens:
    """The tokens cut out of raw text before the model's algorithm runs (llama.cpp's
    tokenizer_st_partition, without the strip attributes), found in a few passes over the text.

    llama.cpp cuts each special token in turn, longest first (ties by id), from every fragment
    left so far, left to right without overlaps. Doing that literally costs a scan of the text
    per special token (Gemma has 6414). Here one regex pass over the text (a trie of the
    tokens, in a lookahead, so every start position is tried) yields the longest special
    token at each position; every special token that occurs is a prefix of one of those.
    Only the tokens that occur are then cut, in llama.cpp's order, each by a left-to-right
    search that skips what longer tokens took: the same cuts, in time linear in the text
    times the longest token.
    """

    def __init__(self, table: list[tuple[str, int, bool]]) -> None:
        self._table = table  # (text, id, needs parse_special), in cutting order
        self._rank = {text: k for k, (text, _, _) in enumerate(table)}
        self._longest = max((len(text) for text, _, _ in table), default=0)
        # the special tokens that are prefixes of each one (itself included), as table ranks
        self._prefixes = {text: [self._rank[text[:n]] for n in range(1, len(text) + 1) if text[:n] in self._rank]
                          for text in self._rank}
        self._finder: re.Pattern[str] | None = None  # built on first use: ~60 ms for Gemma
        # A run of one character longer than any token holds no more distinct tokens than
        # a run of exactly that length: shortening runs keeps the finder's work linear.
        self._runs = re.compile(r"(.)\1{%d,}" % self._longest, re.DOTALL) if self._longest else None

    def partition(self, text: str, parse_special: bool, interrupt: Interrupt = _never) -> list[str | int]:
        """`text` as raw-text fragments and the ids of the special tokens cut out of it."""
        occurrences = self._occurrences(text, parse_special)
        if not occurrences:
            return [text] if text else []
        taken = bytearray(len(text))  # 1 where a cut token covers the character
        cuts: list[tuple[int, int, int]] = []  # (start, end, id)
        for rank in sorted(occurrences):
            interrupt()
            token, tid, _ = self._table[rank]
            size = len(token)
            for start in self._starts(text, token, taken, occurrences[rank]):
                taken[start:start + size] = b"\x01" * size
                cuts.append((start, start + size, tid))
        cuts.sort()
        fragments: list[str | int] = []
        end = 0
        for start, stop, tid in cuts:
            if start > end:
                fragments.append(text[end:start])
            fragments.append(tid)
            end = stop
        if end < len(text):
            fragments.append(text[end:])
        return fragments

    @staticmethod
    def _starts(text: str, token: str, taken: bytearray, known: list[int] | None) -> Iterator[int]:
        """Where `token` is cut: left to right, not overlapping itself or what is taken already.

        `known` lists every position where it occurs; None means search the text for them.
        """
        size, pos = len(token), 0
        if known is not None:
            for start in known:
                if start >= pos and taken.find(1, start, start + size) < 0:
                    yield start
                    pos = start + size
            return
        while (start := text.find(token, pos)) >= 0:
            clash = taken.find(1, start, start + size)
            if clash < 0:
                yield start
                pos = start + size
            else:  # every start before the next free character overlaps the same cut
                pos = taken.find(0, clash)
                if pos < 0:
                    return

    def _occurrences(self, text: str, parse_special: bool) -> dict[int, list[int] | None]:
        """Table rank of each special token in `text` (that applies) -> the positions where it
        occurs, or None where they are not known (the text has long runs of one character)."""
        if not self._table or not text:
            return {}
        if self._finder is None:
            self._finder = re.compile(f"(?=({_trie_pattern(self._rank)}))", re.DOTALL)
        assert self._runs is not None
        probe, shortened = self._runs.subn(lambda m: m.group(1) * self._longest, text)
        found: dict[int, list[int] | None] = {}
        if shortened:  # positions in the probe are not positions in the text
            for longest in set(self._finder.findall(probe)):
                found.update(dict.fromkeys(self._prefixes[longest]))
        else:
            for match in self._finder.finditer(text):
                for rank in self._prefixes[match.group(1)]:
                    found.setdefault(rank, []).append(match.start())  # type: ignore[union-attr]
        return {r: at for r, at in found.items() if parse_special or not self._table[r][2]}


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching the longest of `words` that starts where it is tried (a trie: one branch per
    next character, so a position that starts no word fails after one character)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body  # longer words first, then the word ending here

    return build(trie)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _index_tokens(tokens: PackedStrings) -> VocabIndex:
    if np.any(np.diff(tokens.offsets) == 0):  # llama.cpp renames empty tokens
        tokens = PackedStrings.pack([t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)])
    try:
        return VocabIndex(tokens)
    except DuplicatePiece as dup:
        raise ModelFormatError(f"duplicate token in vocabulary: {dup}") from None


def _merges(meta: Mapping[str, Any]) -> PackedStrings:
    merges = _packed_strings(meta, "tokenizer.ggml.merges")
    if merges is None:
        raise ModelFormatError("BPE tokenizer has no merges (tokenizer.ggml.merges)")
    return merges


def _packed_strings(meta: Mapping[str, Any], key: str) -> PackedStrings | None:
    """A metadata array of strings, packed (None when the key is missing)."""
    values = meta.get(key)
    if values is None or isinstance(values, PackedStrings):
        return values
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ModelFormatError(f"{key} must be a list of strings")
    try:
        return PackedStrings.pack(values)
    except UnicodeEncodeError:
        raise ModelFormatError(f"{key} holds a string that is not valid Unicode") from None


def _per_token(meta: Mapping[str, Any], key: str, n: int, default: Any, dtype: type[np.generic]) -> np.ndarray:
    """A per-token metadata array (scores, types) as a fresh NumPy array of length n."""
    values = meta.get(key)
    if values is None:
        return np.full(n, default, dtype)
    if not isinstance(values, (list, np.ndarray)) or (isinstance(values, np.ndarray) and values.dtype.kind not in "biuf"):
        raise ModelFormatError(f"{key} must be an array of numbers")
    if len(values) < n:
        raise ModelFormatError(f"{key} has {len(values)} entries, expected {n}")
    try:
        return np.array(values[:n], dtype)
    except (TypeError, ValueError, OverflowError):
        raise ModelFormatError(f"{key} must be an array of numbers") from None


def _clean_up_spaces(text: bytearray) -> bytearray:
    """llama.cpp's `clean_spaces` passes in detokenize, byte for byte."""
    # pass 1: " ?", " !", " .", " ," lose their space
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    # pass 2: a lone apostrophe between spaces loses both spaces (" ' " -> "'")
    text, out = out, bytearray(out[:1])
    i = 1
    while i < len(text):
        x = text[i]
        if x == 0x27 and i + 1 < len(text) and text[i - 1] == 0x20 and text[i + 1] == 0x20:
            out.pop()
            out.append(x)
            text[i + 1] = 0  # llama.cpp zeroes the skipped space in place; the next check sees it
            i += 2
            continue
        out.append(x)
        i += 1
    # pass 3: " 's", " 'm", " 're", " 've" lose their space
    text, out = out, bytearray(out[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] == 0x27 and i + 1 < len(text):
            x1 = text[i + 1]
            x2 = text[i + 2] if i + 2 < len(text) else None
            if x1 in b"sm" or (x2 is not None and (x1, x2) in ((0x72, 0x65), (0x76, 0x65))):
                out.pop()
        out.append(text[i])
    return out
