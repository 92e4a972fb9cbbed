"""Speculative verification keeps plain decoding's output: exactly under greedy, in distribution
under sampling (chi-square over many seeded draws, fixed seeds so the test is deterministic)."""

from __future__ import annotations

import numpy as np
import pytest

from host_functions.engine.sampling import Sampler, SamplingParams
from host_functions.engine.speculative import verify

# chi-square critical values at p = 0.001: a correct rule fails one run in a thousand, a wrong one always
CHI2_999 = {5: 20.52, 7: 24.32}


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_greedy_accepts_the_longest_prefix_the_target_would_have_chosen():
    logits = np.zeros((4, 10), np.float32)
    for row, best in enumerate([3, 5, 7, 2]):
        logits[row, best] = 1.0
    sampler = Sampler(SamplingParams(temperature=0))
    assert verify(sampler, logits, [3, 5, 7], []) == (3, 2)  # all accepted, then the target's next
    assert verify(sampler, logits, [3, 6, 7], []) == (1, 5)  # the target's own token replaces the first miss
    assert verify(sampler, logits, [9, 5, 7], []) == (0, 3)
    assert verify(sampler, logits[:1], [], []) == (0, 3)  # no drafts: plain decoding


def test_greedy_verification_applies_penalties_over_the_accepted_drafts():
    logits = np.array([[0, 2.0, 1.9], [0, 2.0, 1.9]], np.float32)
    sampler = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=-1))
    # After drafting 1, its penalty makes 2 the target's choice, as plain decoding would see it.
    assert verify(sampler, logits, [1], []) == (1, 2)


def _target_and_draft(n_vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.5, (2, n_vocab)).astype(np.float32), rng.normal(0, 1.5, n_vocab)


@pytest.mark.parametrize("draft_kind", ["point mass", "distribution"])
def test_sampled_tokens_follow_the_targets_distribution_whatever_was_drafted(draft_kind):
    n_vocab, draws = 8, 20000
    logits, draft_logits = _target_and_draft(n_vocab, seed=7)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)
    sampler = Sampler(params)
    p = Sampler(params).distribution(logits[0], [])
    target = np.zeros(n_vocab)
    target[p[0]] = p[1]
    q_probs = np.exp(draft_logits - draft_logits.max())
    q = (np.arange(n_vocab), q_probs / q_probs.sum())
    rng = np.random.default_rng(3)
    counts = np.zeros(n_vocab)
    for _ in range(draws):
        if draft_kind == "point mass":  # prompt lookup: a deterministic guess, often wrong
            draft, dist = 2, None
        else:
            draft, dist = int(rng.choice(n_vocab, p=q[1])), q
        accepted, nxt = verify(sampler, logits, [draft], [], [dist])
        counts[draft if accepted else nxt] += 1
    assert chi_square(counts, target) < CHI2_999[7]


def test_sampling_with_top_k_keeps_the_filtered_distribution():
    n_vocab, draws = 12, 20000
    logits, _ = _target_and_draft(n_vocab, seed=5)
    params = SamplingParams(temperature=0.7, top_k=6, top_p=1.0, min_p=0.0, seed=2)
    sampler = Sampler(params)
    ids, probs = Sampler(params).distribution(logits[0], [])
    assert ids.size == 6
    counts = {int(i): 0 for i in ids}
    worst = int(np.argmin(logits[0]))  # a draft the target never samples: always rejected
    for _ in range(draws):
        accepted, nxt = verify(sampler, logits, [worst], [], [None])
        assert not accepted
        counts[nxt] += 1
    assert chi_square(np.array([counts[int(i)] for i in ids]), probs) < CHI2_999[5]


def test_logits_rows_must_cover_every_draft_and_the_next_token():
    with pytest.raises(ValueError, match="need 3 rows"):
        verify(Sampler(SamplingParams(temperature=0)), np.zeros((2, 4), np.float32), [1, 2], [])
