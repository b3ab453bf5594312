"""baseline.json: equal-frequency bins with the KS error bound they promise, an exact JSON round trip,
reproducible samples, and a reference with holes refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tenantml.monitoring import OTHER, Baseline, NumericBaseline, build_baseline
from tenantml.monitoring.baseline import categorical_baseline, numeric_baseline


def _reference(seed: int = 0, n: int = 5000) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    numeric = {
        "age": rng.normal(40, 12, n),
        "visits": rng.poisson(3, n).astype(float),                 # discrete: heavy ties
        "amount": rng.lognormal(3, 1.5, n),                        # heavy tail
        "zeroed": np.where(rng.random(n) < 0.4, 0.0, rng.random(n)),  # a 40% atom at 0
    }
    categorical = {"country": rng.choice(["fr", "de", "es", "it"], n, p=[0.4, 0.3, 0.2, 0.1]).tolist()}
    return numeric, categorical


def test_json_round_trip_is_exact():
    numeric, categorical = _reference()
    rng = np.random.default_rng(1)
    b = build_baseline(numeric, categorical, predictions=rng.choice(["yes", "no"], 5000),
                       labels=rng.choice(["yes", "no"], 5000))
    text = b.model_dump_json()
    back = Baseline.model_validate_json(text)
    assert back == b
    assert back.model_dump_json() == text
    # The outer edges survive as floats, not as null.
    assert back.numeric["age"].edges[0] == -math.inf and back.numeric["age"].edges[-1] == math.inf
    assert '"-Infinity"' in text and "NaN" not in text
    # Every float is bit-identical, not merely close.
    for name, f in b.numeric.items():
        assert back.numeric[name].sample == f.sample
        assert back.numeric[name].proportions == f.proportions


def test_numeric_predictions_round_trip_with_regression_performance():
    numeric, _ = _reference()
    rng = np.random.default_rng(2)
    y = rng.normal(size=5000)
    pred = y + rng.normal(0, 0.5, 5000)
    b = build_baseline(numeric, predictions=pred, labels=y)
    assert b.prediction is not None and b.prediction.kind == "numeric"
    assert b.performance is not None and b.performance.accuracy is None
    assert b.performance.mae == pytest.approx(np.mean(np.abs(pred - y)))
    assert b.performance.rmse == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert Baseline.model_validate_json(b.model_dump_json()) == b


def test_building_twice_with_the_same_seed_is_identical_and_the_seed_matters():
    numeric, categorical = _reference()
    a = build_baseline(numeric, categorical, seed=7).model_dump_json()
    b = build_baseline(numeric, categorical, seed=7).model_dump_json()
    c = build_baseline(numeric, categorical, seed=8)
    assert a == b
    assert c.numeric["age"].sample != Baseline.model_validate_json(a).numeric["age"].sample


def test_a_feature_sample_does_not_depend_on_the_other_features():
    numeric, _ = _reference()
    alone = build_baseline({"age": numeric["age"]}, seed=3)
    together = build_baseline(dict(reversed(list(numeric.items()))), seed=3)
    assert alone.numeric["age"] == together.numeric["age"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_in_the_reference_is_refused_by_name(bad):
    numeric, _ = _reference()
    numeric["amount"] = numeric["amount"].copy()
    numeric["amount"][17] = bad
    with pytest.raises(ValueError, match="'amount'.*NaN/Inf"):
        build_baseline(numeric)


@pytest.mark.parametrize("bad", [None, math.nan])
def test_missing_category_in_the_reference_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="'country'"):
        build_baseline({}, {"country": ["fr", bad, "de"]})


def test_empty_reference_and_mismatched_labels_are_refused():
    with pytest.raises(ValueError, match="'x'.*empty"):
        build_baseline({"x": np.array([])})
    with pytest.raises(ValueError, match="differ in length"):
        build_baseline({}, predictions=["a", "b"], labels=["a"])
    with pytest.raises(ValueError, match="both"):
        build_baseline({"x": np.ones(3)}, {"x": ["a", "b", "c"]})


def test_continuous_bins_are_equal_frequency():
    x = np.random.default_rng(4).normal(size=10_000)
    f = numeric_baseline("x", x, bins=100)
    assert len(f.edges) == 101                       # 99 interior edges, -inf and +inf
    assert f.edges[0] == -math.inf and f.edges[-1] == math.inf
    props = np.asarray(f.proportions)
    # Continuous data, n divisible by B: every inner bin holds exactly 1/B of the reference; the edge
    # q(k/B) is the (nk/B)-th smallest value and opens its bin, so the first bin holds one value less
    # and the last one more.
    np.testing.assert_allclose(props[1:-1], 0.01, atol=1e-12)
    assert props[0] == pytest.approx(0.01 - 1e-4) and props[-1] == pytest.approx(0.01 + 1e-4)
    # Edge k is the quantile k/B by the inverted-CDF definition: F(e) >= k/B > F(e-), checked in integers
    # (np.quantile(method="inverted_cdf") computes n*k/B in floating point and is one value off where
    # that lands just above an integer, e.g. 0.07 * 10000).
    edges = np.asarray(f.edges[1:-1])
    k = np.arange(1, 100)
    upto = np.searchsorted(np.sort(x), edges, side="right")
    below = np.searchsorted(np.sort(x), edges, side="left")
    assert np.all(upto * 100 >= x.size * k) and np.all(below * 100 < x.size * k)
    assert f.count == x.size and f.min == x.min() and f.max == x.max()
    assert f.mean == pytest.approx(x.mean()) and f.std == pytest.approx(x.std())


def test_discrete_bins_are_deduplicated_and_keep_each_value_in_its_own_cell():
    x = np.random.default_rng(5).poisson(3, 10_000).astype(float)
    f = numeric_baseline("x", x, bins=100)
    interior = np.asarray(f.edges[1:-1])
    assert np.all(np.diff(interior) > 0)
    assert set(interior.tolist()) <= set(np.unique(x).tolist())
    # Every reference value sits exactly on an edge here, so nothing lies inside an open interval.
    np.testing.assert_allclose(f.edge_proportions, [np.mean(x == v) for v in interior], atol=1e-12)
    assert f.ks_error_bound < 0.01


@pytest.mark.parametrize("bins", [5, 10, 37, 100])
@pytest.mark.parametrize("seed", range(4))
def test_the_open_intervals_hold_at_most_one_bin_of_reference_mass(bins, seed):
    """The KS bound of the module docstring rests on this: whatever ties, atoms or tails the reference
    has, no open interval between edges holds more than 1/B of it, even when a single bin does."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 5000))
    x = np.concatenate([
        rng.standard_t(1.5, n),
        np.zeros(int(rng.integers(0, n))),                 # an atom of arbitrary weight
        np.round(rng.normal(size=n), 1),                  # ties
    ])
    f = numeric_baseline("x", x, bins=bins)
    assert f.ks_error_bound <= 1 / bins + 1e-12
    cells = f.cell_proportions()
    assert cells.sum() == pytest.approx(1.0)
    # The cells are the exact reference proportions.
    edges = np.asarray(f.edges[1:-1])
    cell = np.searchsorted(edges, x, side="left") + np.searchsorted(edges, x, side="right")
    np.testing.assert_allclose(cells, np.bincount(cell, minlength=cells.size) / x.size, atol=1e-12)


def test_an_atom_makes_a_bin_heavier_than_one_over_b():
    """Why edge_proportions are kept: the bin holding a 40% atom is far heavier than 1/B, so a bound on
    bin mass alone would be useless."""
    numeric, _ = _reference()
    f = numeric_baseline("zeroed", numeric["zeroed"], bins=100)
    assert max(f.proportions) > 0.35
    assert f.ks_error_bound <= 0.01


def test_sample_is_bounded_drawn_from_the_reference_and_sorted():
    x = np.random.default_rng(6).normal(size=10_000)
    f = numeric_baseline("x", x, ks_sample=500)
    assert len(f.sample) == 500
    assert np.all(np.diff(f.sample) >= 0)
    assert np.isin(f.sample, x).all()
    assert len(numeric_baseline("x", x[:100], ks_sample=500).sample) == 100


def test_categories_beyond_the_top_50_fold_into_other():
    # Category c<i> appears 100 + i times: the 50 most frequent are c10..c59.
    values = [f"c{i}" for i in range(60) for _ in range(100 + i)]
    f = categorical_baseline("x", values)
    assert len(f.proportions) == 51 and OTHER in f.proportions
    assert set(f.proportions) - {OTHER} == {f"c{i}" for i in range(10, 60)}
    n = len(values)
    assert f.count == n
    assert f.proportions[OTHER] == pytest.approx(sum(100 + i for i in range(10)) / n)
    assert sum(f.proportions.values()) == pytest.approx(1.0)
    np.testing.assert_array_equal(f.counts().sum(), n)


def test_categorical_predictions_give_accuracy():
    b = build_baseline({}, predictions=["a", "b", "a", "a"], labels=["a", "b", "b", "a"])
    assert b.prediction is not None and b.prediction.kind == "categorical"
    assert b.performance is not None and b.performance.accuracy == 0.75
    assert b.prediction.proportions == {"a": 0.75, "b": 0.25, OTHER: 0.0}


def test_invalid_baselines_are_refused_by_the_model():
    f = numeric_baseline("x", np.arange(100.0), bins=4)
    data = f.model_dump()
    with pytest.raises(ValueError, match="inf"):
        NumericBaseline.model_validate({**data, "edges": data["edges"][1:]})
    with pytest.raises(ValueError, match="increasing"):
        NumericBaseline.model_validate({**data, "edges": [-math.inf, 5.0, 2.0, 70.0, math.inf]})
    with pytest.raises(ValueError, match="one value per bin"):
        NumericBaseline.model_validate({**data, "proportions": data["proportions"][1:]})
