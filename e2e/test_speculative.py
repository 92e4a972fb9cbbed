"""Speculative decoding as a user runs it, on the default model: every draft source generates exactly
the plain greedy text, and sampling keeps plain sampling's distribution (chi-square, tiny model)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from cli_helpers import one_error_line
from oracle import DATA

from realm.models import default_model_path, draft_opener, load_model
from realm.sandbox.intake import reference_guest
from realm.sandbox.run import TenantSandbox

PROMPTS = [
    "Count to twenty: 1, 2, 3, 4, 5, 6, 7, 8,",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "Question: What is the capital of France?\nAnswer:",
    'The sign said "No parking on weekdays". Repeat what the sign said: "',
    "Once upon a time, in a small village by the sea,",
]


def cases() -> list[tuple[str, str]]:
    """(prompt, source): prompt lookup on every prompt, the model drafts on two (they cost more steps)."""
    models = ["self:9", f"draft:{default_model_path()}"]
    return [(p, "ngram") for p in PROMPTS] + [(p, m) for p in PROMPTS[:2] for m in models]


@pytest.fixture(scope="module")
def model():
    return load_model(None, "cpu")  # the default CPU path; its rows are batch-invariant by construction


@pytest.fixture(scope="module")
def guest():
    return reference_guest()


@pytest.fixture(scope="module")
def plain_texts(model, guest) -> dict[str, object]:
    return {p: TenantSandbox(model).run(guest, {"prompt": p, "temperature": 0, "max_tokens": 20}) for p in PROMPTS}


@pytest.mark.parametrize("prompt, source", cases())
def test_every_draft_source_generates_the_plain_greedy_text_on_the_default_model(model, guest, plain_texts,
                                                                                    prompt, source):
    opener = draft_opener(model, "cpu", [default_model_path()])
    request = {"prompt": prompt, "temperature": 0, "max_tokens": 20, "speculative": source}
    fast, plain = TenantSandbox(model).run(guest, request, open_draft=opener), plain_texts[prompt]
    assert fast.text == plain.text
    assert (fast.finish_reason, fast.completion_tokens) == (plain.finish_reason, plain.completion_tokens)


def test_realm_run_speculative_prints_the_plain_text_and_its_acceptance(realm):
    prompt = PROMPTS[0]
    plain = realm("run", prompt, "--temperature", "0", "--max-tokens", "24", "--json", "--backend", "cpu")
    fast = realm("run", prompt, "--temperature", "0", "--max-tokens", "24", "--json", "--backend", "cpu",
                 "--speculative", "ngram")
    assert plain.returncode == 0 and fast.returncode == 0, plain.stderr + fast.stderr
    plain_out, fast_out = json.loads(plain.stdout), json.loads(fast.stdout)
    assert fast_out["text"] == plain_out["text"]
    spec = fast_out["speculation"]
    assert spec["drafted"] > 0 and 0 < spec["acceptance_rate"] <= 1 and spec["tokens_per_target_step"] > 1
    traced = realm("run", prompt, "--temperature", "0", "--max-tokens", "12", "--backend", "cpu",
                   "--speculative", "ngram", "--trace")
    assert traced.returncode == 0 and "acceptance_rate" in traced.stderr and "tokens_per_target_step" in traced.stderr


def test_a_draft_file_or_source_the_user_did_not_name_is_one_error_line(realm):
    done = realm("run", "hi", "--max-tokens", "4", "--backend", "numpy", "--speculative", "sometimes")
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "ngram" in done.stderr
    missing = realm("run", "hi", "--max-tokens", "4", "--backend", "numpy", "--speculative", "draft:/no/such.gguf")
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_realm_bench_speculative_reports_each_kind_of_text_against_plain_decoding(realm):
    done = realm("bench", "--model", str(DATA / "tiny-llama-F32.gguf"), "--backend", "numpy", "--speculative", "ngram",
                 "--decode-tokens", "6", "--rounds", "1", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["kind"] for r in results] == ["code", "list", "quote", "no_repetition"]
    for r in results:
        assert r["source"] == "ngram" and 0 <= r["acceptance_rate"] <= 1 and r["tokens_per_target_step"] >= 1
        assert r["decode_tok_s"] > 0 and r["plain_decode_tok_s"] > 0 and r["speedup"] > 0


@pytest.mark.parametrize("args, fragment", [
    (["--speculative", "sometimes"], "expected ngram, draft:FILE or self:N"),
    (["--speculative", "draft:/no/such.gguf"], "no such draft model file"),
    (["--speculative", "self:²"], "expected ngram, draft:FILE or self:N"),  # a digit to str.isdigit, not int()
    (["--speculative", "ngram", "--rounds", "0"], "must be at least 1"),
    (["--speculative", "ngram", "--concurrency", "1,2"], "separate benchmarks"),
])
def test_realm_bench_speculative_refuses_bad_options_in_one_line(realm, args, fragment):
    one_error_line(realm("bench", "--model", str(DATA / "tiny-llama-F32.gguf"), *args), 2, fragment)


# --- distribution: a tiny model, many seeded draws --------------------------------------------

TINY, TINY_DRAFT = DATA / "tiny-llama-F32.gguf", DATA / "tiny-llama-Q8_0.gguf"
# chi-square critical values at p = 0.001 by degrees of freedom (fixed seeds: the test is deterministic)
CHI2_999 = [0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91, 34.53, 36.12,
            37.70, 39.25, 40.79, 42.31, 43.82, 45.31]


def homogeneity(a: Counter, b: Counter) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom of 'a and b are draws of one distribution'
    (categories with few draws pooled)."""
    rows, other = [], [0, 0]
    for k in set(a) | set(b):
        if a[k] + b[k] >= 10:
            rows.append([a[k], b[k]])
        else:
            other[0] += a[k]
            other[1] += b[k]
    if sum(other):
        rows.append(other)
    table = np.array(rows, float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), len(rows) - 1


@pytest.mark.parametrize("source", ["ngram", f"draft:{TINY_DRAFT}", "self:1"])
def test_sampled_tokens_have_the_frequencies_of_plain_sampling(guest, source):
    from host_functions.engine.model import Model

    tiny = Model.load(TINY, backend="numpy")
    opener = draft_opener(tiny, "numpy", [TINY_DRAFT])
    request = {"prompt": "a b a b a b a b a b a b", "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
               "max_tokens": 6}
    plain, fast = Counter(), Counter()
    for seed in range(100):
        for counter, extra in ((plain, {}), (fast, {"speculative": source})):
            text = TenantSandbox(tiny).run(guest, {**request, "seed": seed, **extra}, open_draft=opener).text
            ids = tiny.tokenizer.encode(text, add_bos=False)
            counter.update(f"{i}:{t}" for i, t in enumerate(ids[1:4]))  # positions that drafts can fill
    stat, dof = homogeneity(plain, fast)
    assert dof >= 3 and stat < CHI2_999[min(dof, len(CHI2_999) - 1)], (stat, dof)
