"""Top-k ranking of a row of logits: the plain-Python path against numpy's, on every kind of row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.dataplane import PLAIN_RANKING_MAX_CLASSES, softmax, top_k_predictions


def numpy_ranking(logits: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """The reference: float64 softmax, then a stable sort on the negated probabilities."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [int(i) for i in order], probabilities[order]


def _check(logits: np.ndarray, k: int) -> list[dict[str, Any]]:
    labels = [f"class-{i}" for i in range(len(logits))]
    ranked = top_k_predictions(logits, labels, k)
    indices, probabilities = numpy_ranking(logits, k)
    assert [p["index"] for p in ranked] == indices
    assert [p["label"] for p in ranked] == [labels[i] for i in indices]
    assert all(type(p["index"]) is int and type(p["probability"]) is float for p in ranked)
    got = np.array([p["probability"] for p in ranked])
    np.testing.assert_allclose(got, probabilities, rtol=1e-12, atol=1e-300, equal_nan=True)
    return ranked


# Few distinct values, so that ties (equal logits, hence equal probabilities) are common.
_TIED = st.sampled_from([-3.5, -1.0, 0.0, 0.25, 2.0, 7.0])
_ANY = st.floats(-1e4, 1e4, width=32)


@settings(max_examples=300, deadline=None)
@given(
    logits=st.integers(1, PLAIN_RANKING_MAX_CLASSES + 8).flatmap(
        lambda n: arrays(np.float32, n, elements=st.one_of(_TIED, _ANY))
    ),
    data=st.data(),
)
def test_top_k_matches_numpy_for_any_finite_row(logits: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(logits) + 2), label="k")
    ranked = _check(logits, k)
    assert len(ranked) == min(k, len(logits))
    assert sum(softmax(logits)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "n", [1, 10, PLAIN_RANKING_MAX_CLASSES, PLAIN_RANKING_MAX_CLASSES + 1, 1000]
)
def test_top_k_on_both_sides_of_the_plain_path_limit(n: int) -> None:
    rng = np.random.default_rng(n)
    logits = (rng.standard_normal(n) * 4).astype(np.float32)
    logits[n // 2] = logits[0]  # a tie, which keeps index order
    ranked = _check(logits, n)
    assert ranked[0]["probability"] == pytest.approx(float(softmax(logits).max()), rel=1e-12)


def test_ties_keep_index_order_and_huge_logits_stay_finite() -> None:
    logits = np.array([1000.0, 1001.0, -1000.0, 1001.0, 1000.0], dtype=np.float32)
    ranked = _check(logits, 5)
    assert [p["index"] for p in ranked] == [1, 3, 0, 4, 2]
    assert ranked[0]["probability"] == pytest.approx(np.e / (2 + 2 * np.e))
    assert ranked[-1]["probability"] == 0.0


@pytest.mark.parametrize(
    "bad", [[np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [-np.inf, 1.0, 2.0], [np.nan, np.inf, 0.0]]
)
def test_a_non_finite_row_is_ranked_as_numpy_ranks_it(bad: list[float]) -> None:
    logits = np.array(bad, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        _check(logits, 3)
