"""lora.c, the cpu backend's unmerged LoRA term: the NumPy reference's values, a row's bits independent
of the rows around it and of how many there are, and shapes that do not fit refused."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from host_functions import native
from host_functions.errors import BackendError

N_IN, WIDTHS, RANKS = 200, (96, 40, 40), (16, 8, 5)  # a fused Q|K|V-like projection, mixed ranks


@pytest.fixture(scope="module")
def kernels() -> native.Kernels:
    return native.load()


def _adapter(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], ctypes.Array[native.LoraPart]]:
    a = rng.standard_normal((sum(RANKS), N_IN)).astype(np.float32)
    bs = [rng.standard_normal((w, r)).astype(np.float32) for w, r in zip(WIDTHS, RANKS, strict=True)]
    outs, ranks = np.cumsum((0, *WIDTHS)), np.cumsum((0, *RANKS))
    parts = native.lora_parts([(b, int(outs[i]), int(ranks[i]), 2.0 / RANKS[i]) for i, b in enumerate(bs)])
    return a, bs, parts


def test_lora_term_matches_the_numpy_reference(kernels):
    rng = np.random.default_rng(0)
    a, bs, parts = _adapter(rng)
    x = rng.standard_normal((11, N_IN)).astype(np.float32)
    y = rng.standard_normal((11, sum(WIDTHS))).astype(np.float32)
    expected = y.astype(np.float64).copy()
    t = x.astype(np.float64) @ a.T.astype(np.float64)
    outs, ranks = np.cumsum((0, *WIDTHS)), np.cumsum((0, *RANKS))
    for i, b in enumerate(bs):
        expected[3:9, outs[i]:outs[i + 1]] += 0.5 * 2.0 / RANKS[i] * (t[3:9, ranks[i]:ranks[i + 1]] @ b.T)
    kernels.lora(y, x, slice(3, 9), a, parts, 0.5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)  # rows outside 3..8 untouched too


def test_a_rows_bits_do_not_depend_on_its_neighbours_or_their_number(kernels):
    rng = np.random.default_rng(1)
    a, _, parts = _adapter(rng)
    x = rng.standard_normal((13, N_IN)).astype(np.float32)
    together = np.zeros((13, sum(WIDTHS)), np.float32)
    kernels.lora(together, x, slice(0, 13), a, parts, 1.0)
    for i in range(13):
        alone = np.zeros((1, sum(WIDTHS)), np.float32)
        kernels.lora(alone, x[i:i + 1].copy(), slice(0, 1), a, parts, 1.0)
        np.testing.assert_array_equal(alone[0], together[i])


def test_shapes_that_do_not_fit_are_refused(kernels):
    rng = np.random.default_rng(2)
    a, _, parts = _adapter(rng)
    x = np.zeros((2, N_IN), np.float32)
    with pytest.raises(BackendError, match="do not fit"):
        kernels.lora(np.zeros((2, sum(WIDTHS) - 1), np.float32), x, slice(0, 2), a, parts, 1.0)
    with pytest.raises(BackendError, match="do not fit"):
        kernels.lora(np.zeros((2, sum(WIDTHS)), np.float32), x[:, :-1].copy(), slice(0, 2), a, parts, 1.0)
    with pytest.raises(BackendError, match="do not fit"):
        kernels.lora(np.zeros((2, sum(WIDTHS)), np.float32), x, slice(0, 2), a[:-1].copy(), parts, 1.0)
