"""`realm bench --json-schema FILE`: what constrained decoding costs, as decode speed with and without
a JSON schema in the same run.

At each concurrency level, N requests at once through the reference guest on the scheduler, greedy,
without a constraint and with the schema, alternating `repeats` times; each figure is its fastest run
(on a busy machine the least disturbed) and the ratio compares them. Speed is generated tokens over
the level's wall time: the prompt is short and the same both ways, so it is the decode speed. Both
ways the end-of-generation tokens are banned (logit_bias), so every request decodes n_decode tokens;
a schema that the model completes sooner measures less (`realm bench` prints the tokens it made).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from host_functions.engine.model import Model
from realm.bench.concurrent import run_at_once
from realm.bench.speed import BENCH_TEXT

PROMPT = BENCH_TEXT[:60]


@dataclass
class ConstrainedResult:
    """N requests at once, unconstrained and under the schema."""

    concurrency: int
    aggregate_tok_s: float  # without a constraint
    constrained_tok_s: float
    ratio: float  # constrained_tok_s / aggregate_tok_s
    constrained_tokens: int  # tokens the constrained requests of the fastest run generated, all together

    def as_json(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def run_constrained_bench(model: Model, schema: str, levels: list[int], n_decode: int,
                          repeats: int = 3) -> list[ConstrainedResult]:
    """Aggregate decode tok/s with and without the JSON `schema` at each level.

    Raises RequestFieldError for a schema the grammar engine refuses, GuestError when a request fails.
    """
    from realm.request.sources import for_bench

    no_end = {str(t): -100 for t in sorted(model.tokenizer.end_of_generation_ids)}
    plain = {"prompt": PROMPT, "max_tokens": n_decode, "temperature": 0, "logit_bias": no_end}
    constrained = {**plain, "constraint": {"kind": "json_schema", "text": schema}}
    for fields in (plain, constrained):  # warm up: the vocabulary for the grammar engine, the guest
        for_bench({**fields, "max_tokens": 4}).run(model)

    def level(n: int, fields: dict[str, Any]) -> tuple[float, int]:
        request = for_bench(fields)
        tokens, seconds = run_at_once(n, lambda _: request.run(model).completion_tokens or 0)
        return tokens / seconds, tokens

    results = []
    for n in levels:
        free, bound = [], []
        for _ in range(repeats):
            free.append(level(n, plain))
            bound.append(level(n, constrained))
        best_free, best_bound = max(free), max(bound)
        results.append(ConstrainedResult(n, best_free[0], best_bound[0], best_bound[0] / best_free[0], best_bound[1]))
    return results
