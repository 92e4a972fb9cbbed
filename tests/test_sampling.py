"""Sampler behaviour (llama.cpp's chain: penalties, top-k, top-p, min-p, temperature) and stop strings."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from host_functions.engine.sampling import Sampler, SamplingParams, StopMatcher
from host_functions.errors import RealmError

# Only the filter under test is on: everything else passes all tokens through.
OPEN = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


def draws(params: SamplingParams, logits, n: int = 3000, history=()) -> Counter:
    sampler = Sampler(params)
    return Counter(sampler.sample(np.asarray(logits, np.float32), history) for _ in range(n))


def greedy(logits, history, **penalties) -> int:
    return Sampler(SamplingParams(temperature=0.0, **penalties)).sample(np.asarray(logits, np.float32), history)


# --- parameters ----------------------------------------------------------------------------------

def test_default_parameters_are_llama_cpp_defaults_and_valid():
    p = SamplingParams()
    p.validate()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_last_n) == (0.8, 40, 0.95, 0.05, 64)


@pytest.mark.parametrize("bad, name", [
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(presence_penalty=float("inf")), "presence_penalty"),
    (dict(frequency_penalty=None), "frequency_penalty"),
    (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(seed=-1), "seed"),
    (dict(seed=True), "seed"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(stop=("",)), "stop"),
    (dict(stop=["x"]), "stop"),
])
def test_invalid_parameter_raises_realm_error_naming_it(bad, name):
    with pytest.raises(RealmError, match=name):
        SamplingParams(**bad).validate()
    with pytest.raises(RealmError, match=name):
        Sampler(SamplingParams(**bad))


# --- greedy, top-k, top-p, min-p, temperature -----------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_at_or_below_zero_is_greedy(temperature):
    logits = np.random.default_rng(0).standard_normal(1000)
    sampler = Sampler(SamplingParams(temperature=temperature, seed=1))
    assert {sampler.sample(logits, []) for _ in range(20)} == {int(np.argmax(logits))}


def test_top_k_1_equals_greedy():
    rng = np.random.default_rng(1)
    sampler = Sampler(SamplingParams(temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, seed=3))
    for _ in range(50):
        logits = rng.standard_normal(500)
        assert sampler.sample(logits, []) == int(np.argmax(logits))


def test_top_k_draws_only_and_all_of_the_k_best():
    logits = np.random.default_rng(2).standard_normal(100)
    best = set(np.argsort(-logits)[:5].tolist())
    counts = draws(SamplingParams(**{**OPEN, "temperature": 3.0, "top_k": 5, "seed": 4}), logits)
    assert set(counts) == best


PROBS = np.log([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("top_p, kept", [(0.4, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_prefix_reaching_the_mass(top_p, kept):
    assert set(draws(SamplingParams(**{**OPEN, "top_p": top_p, "seed": 5}), PROBS)) == kept


def test_top_p_mass_is_measured_after_top_k():
    # Over all tokens 0.4 < 0.55 would keep two tokens; over the top-2 token 0 alone has 0.57.
    logits = np.log([0.4, 0.3, 0.299])
    assert set(draws(SamplingParams(**{**OPEN, "top_k": 2, "top_p": 0.55, "seed": 6}), logits)) == {0}


@pytest.mark.parametrize("min_p, kept", [(0.05, {0, 1, 2, 3}), (0.2, {0, 1, 2}), (0.5, {0, 1}), (1.0, {0})])
def test_min_p_drops_tokens_below_a_fraction_of_the_best(min_p, kept):
    assert set(draws(SamplingParams(**{**OPEN, "min_p": min_p, "seed": 7}), PROBS)) == kept


def test_top_p_and_min_p_together_keep_the_shorter_prefix():
    assert set(draws(SamplingParams(**{**OPEN, "top_p": 0.85, "min_p": 0.5, "seed": 8}), PROBS)) == {0, 1}
    assert set(draws(SamplingParams(**{**OPEN, "top_p": 0.4, "min_p": 0.05, "seed": 8}), PROBS)) == {0}


def test_draws_follow_the_softmax_of_logits_over_temperature():
    logits = np.array([1.0, 0.5, 0.0, -0.5])
    for temperature in (0.5, 1.0, 2.0):
        counts = draws(SamplingParams(**{**OPEN, "temperature": temperature, "seed": 9}), logits, n=20000)
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        observed = np.array([counts[i] for i in range(4)]) / 20000
        np.testing.assert_allclose(observed, expected, atol=0.015)


def test_temperature_comes_after_the_filters():
    # A huge temperature flattens what survives min-p, but cannot bring back what min-p removed.
    counts = draws(SamplingParams(**{**OPEN, "temperature": 100.0, "min_p": 0.05, "seed": 10}), [0.0, -0.1, -10.0])
    assert set(counts) == {0, 1} and abs(counts[0] - counts[1]) < 300


def test_minus_infinity_logits_are_never_drawn():
    logits = np.full(50, -np.inf)
    logits[[3, 17]] = [0.0, 0.2]
    assert set(draws(SamplingParams(**{**OPEN, "top_k": 10, "seed": 11}), logits, n=500)) == {3, 17}


@pytest.mark.parametrize("logits", [[-np.inf, -np.inf], [0.0, np.nan], [np.inf, 0.0], [], [[1.0, 2.0]]])
def test_logits_without_a_finite_maximum_or_not_a_vector_raise(logits):
    with pytest.raises(RealmError, match="logits"):
        Sampler(SamplingParams(seed=0)).sample(np.array(logits, dtype=np.float32), [])


def test_tiny_temperature_behaves_like_greedy():
    logits = np.random.default_rng(12).standard_normal(300)
    sampler = Sampler(SamplingParams(temperature=1e-300, seed=12))
    assert {sampler.sample(logits, []) for _ in range(20)} == {int(np.argmax(logits))}


# --- seeds ---------------------------------------------------------------------------------------

def test_same_seed_reproduces_choices_and_different_seeds_differ():
    logits = np.random.default_rng(13).standard_normal(2000)

    def run(seed):
        sampler = Sampler(SamplingParams(**{**OPEN, "temperature": 2.0, "seed": seed}))
        return [sampler.sample(logits, []) for _ in range(40)]

    assert run(42) == run(42)
    assert run(42) != run(43)


# --- penalties -----------------------------------------------------------------------------------

def test_repeat_penalty_divides_positive_logits():
    assert greedy([2.0, 1.9, 0.0], []) == 0
    assert greedy([2.0, 1.9, 0.0], [0], repeat_penalty=1.1) == 1  # 2.0 / 1.1 = 1.82


def test_repeat_penalty_multiplies_negative_logits():
    assert greedy([-1.0, -1.1], [0], repeat_penalty=1.2) == 1  # -1.0 * 1.2 = -1.2
    assert greedy([-1.0, -1.1], [0], repeat_penalty=1.05) == 0  # -1.05 still wins


def test_presence_penalty_is_paid_once_however_often_a_token_appeared():
    assert greedy([1.0, 0.9], [0], presence_penalty=0.2) == 1
    assert greedy([1.0, 0.9], [0, 0, 0], presence_penalty=0.05) == 0


def test_frequency_penalty_grows_with_the_count():
    assert greedy([1.0, 0.9], [0], frequency_penalty=0.05) == 0  # 0.95
    assert greedy([1.0, 0.9], [0, 0, 0], frequency_penalty=0.05) == 1  # 0.85


def test_penalties_only_look_at_the_last_repeat_last_n_tokens():
    history = [0, 2, 2, 2]
    assert greedy([2.0, 1.9, 0.0], history, repeat_penalty=1.5, repeat_last_n=3) == 0
    assert greedy([2.0, 1.9, 0.0], history, repeat_penalty=1.5, repeat_last_n=4) == 1
    assert greedy([2.0, 1.9, 0.0], history, repeat_penalty=1.5, repeat_last_n=-1) == 1
    assert greedy([2.0, 1.9, 0.0], history, repeat_penalty=1.5, repeat_last_n=0) == 0


def test_penalties_ignore_history_ids_outside_the_vocabulary():
    assert greedy([2.0, 1.9], [-1, 7, 1000], repeat_penalty=2.0, presence_penalty=1.0) == 0


def test_penalties_apply_before_top_k():
    sampler = Sampler(SamplingParams(**{**OPEN, "top_k": 1, "repeat_penalty": 2.0, "seed": 14}))
    assert sampler.sample(np.array([2.0, 1.9, 0.0]), [0]) == 1


def test_penalties_do_not_modify_the_callers_logits():
    logits = np.array([2.0, 1.0], dtype=np.float32)
    Sampler(SamplingParams(temperature=0.0, repeat_penalty=2.0)).sample(logits, [0, 1])
    np.testing.assert_array_equal(logits, [2.0, 1.0])


def test_full_size_vocabulary_with_filters_off_samples_a_finite_token():
    logits = np.random.default_rng(15).standard_normal(262144).astype(np.float32)
    sampler = Sampler(SamplingParams(**{**OPEN, "top_p": 0.9, "seed": 15}))
    assert 0 <= sampler.sample(logits, list(range(100))) < 262144


# --- stop strings --------------------------------------------------------------------------------

def stream(matcher: StopMatcher, pieces) -> tuple[list[str], bool]:
    out, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
    return out, stopped


def test_without_stop_strings_every_piece_passes_straight_through():
    assert stream(StopMatcher([]), ["a", "<", "b"]) == (["a", "<", "b"], False)


def test_stop_string_spanning_pieces_is_held_back_and_not_emitted():
    out, stopped = stream(StopMatcher(["</s>"]), ["Hello <", "/s", "> more"])
    assert out == ["Hello ", "", ""] and stopped


def test_held_back_prefix_is_released_when_the_stop_string_does_not_follow():
    matcher = StopMatcher(["</s>"])
    assert stream(matcher, ["a <", "b", " </"]) == (["a ", "<b", " "], False)
    assert matcher.flush() == "</"


def test_text_before_a_stop_string_inside_one_piece_is_emitted():
    matcher = StopMatcher(["STOP"])
    assert matcher.push("abcSTOPdef") == ("abc", True)
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_earliest_of_several_stop_strings_wins():
    assert StopMatcher(["world", "lo w"]).push("hello world") == ("hel", True)


def test_overlapping_prefixes_hold_back_only_what_could_still_match():
    out, stopped = stream(StopMatcher(["aab"]), ["a", "a", "a", "b"])
    assert "".join(out) == "a" and stopped


def test_empty_stop_string_is_rejected():
    with pytest.raises(RealmError, match="non-empty"):
        StopMatcher(["ok", ""])


def test_flush_takes_a_last_piece_and_still_honours_stop_strings():
    matcher = StopMatcher(["</s>"])
    assert matcher.push("end </") == ("end ", False)
    assert matcher.flush("s> tail") == ""
    assert matcher.stopped
    matcher = StopMatcher(["</s>"])
    matcher.push("end </")
    assert matcher.flush("x") == "</x"


def _plain_filter(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The filter chain over the whole vector: every id sorted, cut by top-k, min-p and top-p in turn."""
    top = float(logits.max())
    ids = np.argsort(-logits, kind="stable")
    ids = ids[:top_k] if top_k else ids
    log_z = top + math.log(np.exp(logits[np.sort(ids)] - top).sum())  # summed in id order, as the sampler does
    if min_p:
        ids = ids[logits[ids] >= top + math.log(min_p)]
    if top_p < 1.0:
        ids = ids[:int(np.searchsorted(np.cumsum(np.exp(logits[ids] - log_z)), top_p, side="left")) + 1]
    return ids


@pytest.mark.parametrize("top_k,top_p,min_p", [(40, 0.95, 0.0), (1, 1.0, 0.0), (1000, 0.5, 0.0), (40, 1.0, 0.05),
                                               (0, 0.95, 0.0), (0, 0.3, 0.0), (0, 0.95, 0.01)])
def test_a_large_vocabulary_is_filtered_to_the_ids_of_the_whole_vector_chain(top_k, top_p, min_p):
    """Over Gemma's 262144 logits the filters narrow to the candidates first; the ids kept, and their
    order, are those of the whole-vector steps (distinct logits: no ties to break)."""
    rng = np.random.default_rng(top_k)
    for scale in (0.5, 3.0, 12.0):  # flat to peaked: top-p's head from thousands of ids to one
        logits = (rng.standard_normal(262144) * scale).astype(np.float32)
        params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=1.0)
        ids, _ = Sampler(params).distribution(logits, [])
        np.testing.assert_array_equal(ids, _plain_filter(logits, top_k, top_p, min_p))
