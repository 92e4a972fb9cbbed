"""The SSE side of a streamed request: its runs' pieces gathered onto one queue, joined into few
bounded events, and each token's logprobs sent in the chunk that carries its text (as OpenAI and
llama.cpp do), not all in the last one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

from host_functions.abi import TokenLogprob
from host_functions.tokenizer import Tokenizer
from realm.sandbox.report import RunResult
from realm.server import protocol
from realm.server.protocol import GenerationSpec
from realm.server.runner import GuestRun, Piece

# What a run sends its request's stream: (choice index, a piece, or the run's outcome at its end).
RunEvent = tuple[int, Piece | RunResult | Exception]
MAX_EVENT_CHARS = 16384  # text in one SSE event; more waiting at once goes in several


async def pump(index: int, run: GuestRun, queue: asyncio.Queue[RunEvent]) -> None:
    """Move one run's pieces and then its outcome onto the request's shared queue."""
    async for piece in run.stream():
        queue.put_nowait((index, piece))
    try:
        outcome: RunResult | Exception = await run.result()
    except Exception as exc:  # noqa: BLE001  the outcome is reported to the client by the stream
        outcome = exc
    queue.put_nowait((index, outcome))


async def all_ready(queue: asyncio.Queue[RunEvent]) -> list[RunEvent]:
    """The next event and every one already queued behind it."""
    ready = [await queue.get()]
    while not queue.empty():
        ready.append(queue.get_nowait())
    return ready


def coalesced(events: list[RunEvent]) -> Iterator[RunEvent]:
    """`events` with each run of one choice's pieces joined (text and logprobs), and cut into pieces of
    at most MAX_EVENT_CHARS (the logprobs go with the first): one SSE event per batch of text however
    the guest emitted it, none unbounded."""
    for (index, is_piece), group in itertools.groupby(events, key=lambda e: (e[0], isinstance(e[1], Piece))):
        if not is_piece:
            yield from group
            continue
        pieces = [item for _, item in group if isinstance(item, Piece)]
        joined = "".join(p.text for p in pieces)
        logprobs = tuple(lp for p in pieces for lp in p.logprobs)
        for start in range(0, max(len(joined), 1), MAX_EVENT_CHARS):
            yield index, Piece(joined[start:start + MAX_EVENT_CHARS], logprobs if start == 0 else ())


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class ChunkLogprobs:
    """The logprobs object of each streamed chunk, for a request that asked for logprobs: each choice's
    tokens as they come, and at its end those of its tokens not streamed yet (a guest may report a
    token it never emits, such as the one that matched a stop string)."""

    def __init__(self, spec: GenerationSpec, tokenizer: Tokenizer) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.sent: dict[int, int] = {}  # choice -> its entries streamed so far
        self.offsets: dict[int, int] = {}  # choice -> text_offset of its next token (completions)

    def of(self, index: int, entries: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        """The logprobs of `entries`, the next of choice `index`; None when none are wanted or there are none."""
        if self.spec.top_logprobs is None or not entries:
            return None
        self.sent[index] = self.sent.get(index, 0) + len(entries)
        formatted = protocol.format_logprobs(self.spec, entries, self.tokenizer, self.offsets.get(index, 0))
        if self.spec.kind == "completion":
            self.offsets[index] = formatted["text_offset"][-1] + len(formatted["tokens"][-1])
        return formatted

    def rest(self, index: int, result: RunResult) -> dict[str, Any] | None:
        """The logprobs of choice `index`'s tokens that no chunk has carried yet."""
        return self.of(index, result.logprobs[self.sent.get(index, 0):])
