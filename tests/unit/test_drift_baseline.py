"""baseline.json: equal-frequency bins with the KS error bound they promise, an exact JSON round trip,
reproducible samples, and a reference with holes refused by name; the text section (schema version 2):
principal directions checked against numpy's SVD, the derived features, old baselines still valid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tenantml.monitoring import OTHER, Baseline, NumericBaseline, build_baseline, build_text_baseline
from tenantml.monitoring.baseline import (
    TextProjection,
    categorical_baseline,
    numeric_baseline,
    text_features,
    text_projection,
)


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


# --- text baselines ---------------------------------------------------------------------------------------


def _embeddings(n: int = 500, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, d)) * np.linspace(2.0, 0.3, d) + 0.4
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_text_projection_is_the_svd_of_the_centred_reference():
    e = _embeddings()
    p = text_projection(e, 4)
    mean = e.mean(axis=0)
    _, s, vt = np.linalg.svd(e - mean, full_matrices=False)
    comps = np.asarray(p.components)
    assert p.k == 4 and p.dim == 12 and p.count == 500
    np.testing.assert_allclose(p.mean, mean, atol=5e-7)                       # rounded to 6 decimals
    np.testing.assert_allclose(np.abs(np.sum(comps * vt[:4], axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.abs(comps), np.abs(vt[:4]), atol=5e-7)
    np.testing.assert_allclose(p.explained_variance_ratio, s[:4] ** 2 / np.sum(s ** 2), atol=5e-7)
    # The sign convention: each direction's largest coordinate is positive, whatever LAPACK returned.
    assert all(c[np.argmax(np.abs(c))] > 0 for c in comps)
    flipped = text_projection(np.column_stack([-e[:, :6], e[:, 6:]]), 4)
    assert all(c[np.argmax(np.abs(c))] > 0 for c in np.asarray(flipped.components))
    # The coordinates: (e - mean) . v_k, for any embeddings of the same width.
    x = _embeddings(7, seed=3)
    np.testing.assert_allclose(p.project(x), (x - mean) @ comps.T, atol=1e-5)


def test_fewer_directions_than_asked_when_the_reference_is_small():
    assert text_projection(_embeddings(3), 5).k == 2                           # n - 1
    assert text_projection(_embeddings(50, d=2), 5).k == 2                     # d
    with pytest.raises(ValueError, match="at least 2"):
        text_projection(_embeddings(1))
    with pytest.raises(ValueError, match="NaN"):
        text_projection(np.full((4, 3), np.nan))


def test_text_baseline_holds_the_derived_features_and_round_trips():
    rng = np.random.default_rng(0)
    e = _embeddings()
    tokens = rng.integers(0, 60, 500)
    unknown = np.minimum(rng.integers(0, 3, 500), tokens)
    predicted, true = rng.choice(["bug", "task"], 120), rng.choice(["bug", "task"], 120)
    b = build_text_baseline(tokens, unknown, e, embedding="backbone", components=3, predictions=predicted,
                            labels=true)
    assert b.schema_version == 2 and b.text is not None and b.text.embedding == "backbone"
    names = ["token_count", "unknown_token_rate", "embedding_pc1", "embedding_pc2", "embedding_pc3"]
    assert b.text.features == names and list(b.numeric) == names
    assert b.numeric["token_count"].count == 500 and b.prediction.count == 120 and b.performance.count == 120
    # The feature values are what numpy gives independently (the baseline keeps min/max/mean of each).
    assert b.numeric["token_count"].mean == pytest.approx(tokens.mean())
    rate = unknown / np.maximum(tokens, 1)
    assert b.numeric["unknown_token_rate"].max == pytest.approx(rate.max(), rel=1e-6)
    assert b.numeric["unknown_token_rate"].mean == pytest.approx(rate.mean(), rel=1e-6)
    coords = (e - e.mean(axis=0)) @ np.asarray(b.text.projection.components).T
    for k in range(3):
        f = b.numeric[f"embedding_pc{k + 1}"]
        assert f.min == pytest.approx(coords[:, k].min(), abs=1e-5)
        assert f.max == pytest.approx(coords[:, k].max(), abs=1e-5)
        assert abs(f.mean) < 1e-5                                   # centred on the reference mean
    text = b.model_dump_json()
    back = Baseline.model_validate_json(text)
    assert back == b and back.model_dump_json() == text
    assert b.performance.accuracy == pytest.approx(np.mean(predicted == true))
    again = build_text_baseline(tokens, unknown, e, embedding="backbone", components=3)
    assert again.model_dump_json() == build_text_baseline(tokens, unknown, e, embedding="backbone",
                                                          components=3).model_dump_json()


def test_old_baselines_stay_valid_and_the_text_section_is_checked():
    old = build_baseline({"x": np.arange(100.0)}).model_dump(mode="json")
    assert old["schema_version"] == 1 and old["text"] is None
    del old["text"]                                              # a file written before the text section
    assert Baseline.model_validate(old).schema_version == 1
    text = build_text_baseline([3, 4, 5], [0, 0, 1], _embeddings(3), embedding="output").model_dump(
        mode="json")
    unversioned = {k: v for k, v in text.items() if k != "schema_version"}
    assert Baseline.model_validate(unversioned).schema_version == 2
    with pytest.raises(ValueError, match="schema_version 2"):
        Baseline.model_validate({**text, "schema_version": 1})
    with pytest.raises(ValueError, match="without a numeric baseline"):
        Baseline.model_validate({**text, "numeric": {k: v for k, v in text["numeric"].items()
                                                    if k != "embedding_pc1"}})
    proj = text["text"]["projection"]
    with pytest.raises(ValueError, match="dim"):
        TextProjection.model_validate({**proj, "mean": proj["mean"][:-1]})
    counts_only = build_text_baseline([3, 4], [0, 1], None, embedding="output")
    assert counts_only.text.projection is None and list(counts_only.numeric) == ["token_count",
                                                                                "unknown_token_rate"]
    assert set(text_features([1], [0])) == {"token_count", "unknown_token_rate"}
