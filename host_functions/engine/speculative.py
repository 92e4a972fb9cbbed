"""Speculative verification: accept a run of drafted tokens against the target model's logits.

After one target step over [last token, d_1 .. d_k] the target has a distribution p_i for the token
after each prefix. Greedy: the longest prefix of drafts equal to the target's own choices is
accepted, and the target's choice after it is the next token, so the output is exactly plain
greedy decoding. Sampling (the standard rule of Leviathan et al. and Chen et al.): d_i is accepted
with probability min(1, p_i(d_i) / q_i(d_i)), where q_i is the distribution the draft was drawn
from (a point mass for a deterministic draft such as prompt lookup); on the first rejection the
next token is drawn from the normalised residual max(0, p_i - q_i); after k acceptances it is drawn
from p_{k+1}. Each emitted token then has exactly the target's distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from host_functions.engine.sampling import Sampler

Distribution = tuple[np.ndarray, np.ndarray]  # (token ids, probabilities)


def verify(sampler: Sampler, logits: np.ndarray, drafts: Sequence[int], history: Sequence[int],
           draft_distributions: Sequence[Distribution | None] | None = None) -> tuple[int, int]:
    """How many drafts the target accepts and the token that follows them.

    `logits` is (len(drafts) + 1, n_vocab): row i is the target's logits after history + drafts[:i].
    `draft_distributions[i]` is q_i, or None for a deterministic draft. Penalties see the drafts
    accepted so far as history, as plain decoding would. Raises RealmError as Sampler.sample does.
    """
    if logits.ndim != 2 or logits.shape[0] != len(drafts) + 1:
        raise ValueError(f"need {len(drafts) + 1} rows of logits for {len(drafts)} drafts, got {logits.shape}")
    seen = list(history)
    greedy = sampler.params.temperature <= 0.0
    for i, draft in enumerate(drafts):
        if greedy:
            choice = sampler.sample(logits[i], seen)
            if choice != draft:
                return i, choice
        else:
            p = sampler.distribution(logits[i], seen)
            q = draft_distributions[i] if draft_distributions else None
            p_x, q_x = _prob(p, draft), 1.0 if q is None else _prob(q, draft)
            if q_x <= 0.0 or sampler.rng.random() >= min(1.0, p_x / q_x):
                return i, _draw_residual(sampler, p, q, draft)
        seen.append(draft)
    return len(drafts), sampler.sample(logits[-1], seen)


def _prob(dist: Distribution, token: int) -> float:
    ids, probs = dist
    hit = np.flatnonzero(ids == token)
    return float(probs[hit[0]]) if hit.size else 0.0


def _draw_residual(sampler: Sampler, p: Distribution, q: Distribution | None, draft: int) -> int:
    """A draw from max(0, p - q), normalised; q None is the point mass at `draft`."""
    ids, probs = p
    if q is None:
        residual = np.where(ids == draft, 0.0, probs)
    else:
        q_ids, q_probs = q
        order = np.argsort(q_ids)
        pos = np.clip(np.searchsorted(q_ids[order], ids), 0, q_ids.size - 1)
        matched = q_ids[order][pos] == ids
        residual = np.maximum(0.0, probs - np.where(matched, q_probs[order][pos], 0.0))
    if residual.sum() <= 0.0:  # p <= q everywhere p lives: only possible when p == q, then p is exact
        residual = probs
    return sampler.draw(ids, residual)
