"""Text <-> token ids from GGUF metadata, exact to llama.cpp (`src/llama-vocab.cpp`).

Two vocabularies are supported, chosen by `tokenizer.ggml.model`: ``llama``, SentencePiece-style
(`spm`), and ``gpt2``, byte-level BPE (`bpe`, with the word splitting of `pre_tokenizers`). Before
either runs, special tokens are cut out of the raw text (`partition`); which tokens are special
follows llama.cpp's fixes by token text (`special_tokens`). Decoding (`decoding`) follows
``llama_detokenize``. `tokenizer` holds the `Tokenizer` that puts these together; `metadata` reads
its arrays, `vocab_index` finds token texts, `interrupt` lets a caller cut a long encode off.
"""

from host_functions.tokenizer.decoding import StreamDecoder
from host_functions.tokenizer.interrupt import INTERRUPT_EVERY, Interrupt
from host_functions.tokenizer.token_type import TokenType
from host_functions.tokenizer.tokenizer import Tokenizer

__all__ = ["INTERRUPT_EVERY", "Interrupt", "StreamDecoder", "TokenType", "Tokenizer"]
