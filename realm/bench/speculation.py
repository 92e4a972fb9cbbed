"""`realm bench --speculative`: what a draft source buys on each kind of text, against plain decoding.

Every prompt runs through the reference guest twice per round, plain and speculative, alternating, for
several rounds; each (prompt, mode) keeps its fastest decode (on a busy machine the least disturbed
run), so the speed-up is a ratio of figures measured in the same run. Decoding is greedy, so the two
texts must be equal: a difference is an error, not a figure.

The kinds: repetitive code, a list, a text that quotes its prompt, and prose without repetition, the
worst case for prompt lookup (drafts, when any, are mostly rejected). A small model's greedy prose soon
loops, which prompt lookup would then predict well, so that kind asks for repeat_penalty 1.3 (the
verifier applies it as plain decoding does) and stays text that does not repeat itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from host_functions.engine.model import Model
from host_functions.errors import RealmError
from realm.request.sources import for_bench
from realm.request.spec import FirstText, RunRequest
from realm.sandbox.report import RunResult

# kind -> (prompts, extra request fields)
SPECULATION_TEXTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "code": ((
        "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
        "import json\n\ndef load_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n"
        "def save_config(path, config):\n",
        "function getUser(id) {\n  return fetch(`/api/users/${id}`).then(r => r.json());\n}\n\n"
        "function getPost(id) {\n",
    ), {}),
    "list": ((
        "Days of the week:\n- Monday\n- Tuesday\n",
        "name,age,city\nAlice,30,London\nBob,25,Paris\n",
        "Count to fifty: 1, 2, 3, 4, 5, 6, 7, 8,",
    ), {}),
    "quote": ((
        'The sign said "No parking on weekdays". Repeat what the sign said: "',
        'Here is a sentence: "The quick brown fox jumps over the lazy dog near the river bank." Repeat the '
        'sentence exactly, three times:\n1. "',
        'Fix the spelling in this sentence: "The weathr was beautful and the childern playd in the park all day."'
        '\nCorrected: "',
    ), {}),
    "no_repetition": ((
        "Once upon a time, in a small village by the sea,",
        "The history of the Roman Empire",
        "Explain why the sky is blue.",
    ), {"repeat_penalty": 1.3}),
}


@dataclass
class SpeculationResult:
    """One kind of text: its prompts' decode speed plain and speculative (fastest round of each)."""

    kind: str
    source: str  # the request's "speculative": ngram, draft:PATH or self:N
    prompts: int
    tokens: int  # decoded tokens over the kind's prompts, per mode (the first token is the prompt's)
    drafted: int
    accepted: int
    acceptance_rate: float  # accepted / drafted
    tokens_per_target_step: float  # decoded tokens per decode step of the target (plain: 1)
    decode_tok_s: float  # speculative
    plain_decode_tok_s: float
    speedup: float  # decode_tok_s / plain_decode_tok_s
    prompt_speedups: list[float]  # each prompt's own, in SPECULATION_TEXTS order

    def as_json(self) -> dict[str, object]:
        def rounded(v: object) -> object:
            return round(v, 3) if isinstance(v, float) else [rounded(x) for x in v] if isinstance(v, list) else v
        return {k: rounded(v) for k, v in asdict(self).items()}


@dataclass
class _Timed:
    result: RunResult
    decode_s: float  # from the first emitted text (the prompt's step and first token are done) to the end


def run_speculation_bench(model: Model, source: str, draft_files: Sequence[str] = (),
                          n_decode: int = 96, rounds: int = 3,
                          texts: Mapping[str, tuple[tuple[str, ...], dict[str, Any]]] = SPECULATION_TEXTS,
                          ) -> list[SpeculationResult]:
    """Per kind of text, acceptance and decode speed of speculative decoding with `source` against plain
    decoding, alternating the two for `rounds` rounds and keeping each one's fastest. `draft_files`:
    the draft model a draft:FILE source opens.

    Raises RealmError if a speculative text differs from the plain one (greedy decoding must be
    exact), or as a run does (a draft that cannot be opened, a trap).
    """
    for_bench({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).run(model)  # warm up
    results = []
    for kind, (prompts, extra) in texts.items():
        plain_runs: list[list[_Timed]] = [[] for _ in prompts]
        fast_runs: list[list[_Timed]] = [[] for _ in prompts]
        for _ in range(rounds):
            for i, prompt in enumerate(prompts):
                plain = for_bench({"prompt": prompt, "max_tokens": n_decode, "temperature": 0, **extra},
                                  draft_files=draft_files)
                fast = dataclasses.replace(plain, fields={**plain.fields, "speculative": source})
                plain_runs[i].append(_timed(model, plain))
                fast_runs[i].append(_timed(model, fast))
        results.append(_summary(kind, source, prompts, plain_runs, fast_runs))
    return results


def _timed(model: Model, request: RunRequest) -> _Timed:
    clock = FirstText()
    result = request.run(model, on_text=clock)
    ended = time.perf_counter()
    return _Timed(result, 0.0 if clock.first is None else ended - clock.first)


def _summary(kind: str, source: str, prompts: tuple[str, ...], plain_runs: list[list[_Timed]],
             fast_runs: list[list[_Timed]]) -> SpeculationResult:
    tokens = drafted = accepted = steps = 0
    plain_s = fast_s = 0.0
    speedups = []
    for prompt, plain, fast in zip(prompts, plain_runs, fast_runs, strict=True):
        if any(run.result.text != plain[0].result.text for run in plain + fast):
            raise RealmError(f"speculative decoding with {source} changed the greedy text of {prompt[:40]!r}")
        decoded = max((plain[0].result.completion_tokens or 0) - 1, 0)
        tokens += decoded
        plain_best, fast_best = min(run.decode_s for run in plain), min(run.decode_s for run in fast)
        plain_s, fast_s = plain_s + plain_best, fast_s + fast_best
        speedups.append(plain_best / fast_best if fast_best else 0.0)
        spec = fast[0].result.steps  # every round drafts the same (greedy, deterministic)
        drafted, accepted = drafted + spec.drafted, accepted + spec.accepted
        steps += max(spec.target_steps - 1, 0)  # the prompt's step makes the first token
    if not tokens or not plain_s or not fast_s:
        raise RealmError(f"the {kind} prompts decoded no tokens to time")
    plain_tok_s, fast_tok_s = tokens / plain_s, tokens / fast_s
    return SpeculationResult(
        kind=kind, source=source, prompts=len(prompts), tokens=tokens, drafted=drafted, accepted=accepted,
        acceptance_rate=accepted / drafted if drafted else 0.0,
        tokens_per_target_step=tokens / steps if steps else 0.0,
        decode_tok_s=fast_tok_s, plain_decode_tok_s=plain_tok_s, speedup=fast_tok_s / plain_tok_s,
        prompt_speedups=speedups)
