"""The direct model matrices of plain numeric formulas equal formulaic's (memoe.core.design.direct)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design import build_design
from memoe.core.design.fixed import build_fixed, model_matrix_with_contrasts
from memoe.core.design.native import native_matrix
from memoe.core.design.scaling import choose_scaling, column_spreads, spreads_from_gram


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 400
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "t": np.tile(np.arange(8.0), n // 8),
            "x": rng.normal(size=n),
            "w": rng.normal(3.0, 2.0, size=n),
            "k": rng.integers(-5, 50, size=n),  # int64 column
            "u": rng.integers(0, 9, size=n).astype(np.uint16),
            "f32": rng.normal(size=n).astype(np.float32),
            "g": np.repeat(np.arange(n // 8), 8),
            "s": rng.choice(["a", "b", "c"], size=n),
            "b": rng.random(n) > 0.5,
        }
    )


PLAIN = [
    "1",
    "t",
    "0 + t",
    "t - 1",
    "t + x",
    "x + t",
    "t * x",
    "t:x",
    "x:t + t",
    "t * x * w",
    "t:x:w + w",
    "(t + x + w) ** 2",
    "k + t:k",
    "u + k:u + f32",
    "0 + t + x:w",
    "t + t:x:k:w",
]


@pytest.mark.parametrize("rhs", PLAIN)
def test_direct_fixed_matrix_equals_formulaic(data, rhs):
    assert native_matrix(rhs, data, {}, "the fixed effects") is not None
    fd = build_fixed(rhs, data)
    X, spec, names, _ = model_matrix_with_contrasts(rhs, data)
    assert fd.X.flags.f_contiguous
    assert fd.names == names
    assert list(fd.spec.column_names) == list(spec.column_names)
    np.testing.assert_array_equal(fd.X, X)
    # the spec learned on two rows replays on new rows as formulaic's own
    new = data.iloc[::7]
    np.testing.assert_array_equal(fd.matrix_for(new), X[::7])


@pytest.mark.parametrize(
    "rhs",
    ["s", "t + s", "t:s", "b", "t + b", "np.log(np.abs(w))", "I(t ** 2)", "poly(t, 2)", "scale(x)", "C(s)",
     "center(t)", "t + factor(k)"],
)
def test_other_formulas_equal_formulaic(data, rhs):
    fd = build_fixed(rhs, data)
    X, _, names, _ = model_matrix_with_contrasts(rhs, data)
    # build_fixed names a logical column R's way (bTRUE)
    assert fd.names == [nm.replace("b", "bTRUE") if nm == "b" else nm for nm in names]
    np.testing.assert_array_equal(fd.X, X)


def test_nullable_columns_go_through_formulaic(data):
    df = data.assign(nx=data["x"].astype("Float64"))
    assert native_matrix("nx", df, {}, "the fixed effects") is None
    # a contrast for a numeric column is still refused with the same message as before
    with pytest.raises(memoe.errors.DataError, match="uses as a number"):
        build_fixed("t + s", data, contrasts={"t": "sum"})


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ t + x + (t | g)",
        "y ~ t * x + (1 + t | g)",
        "y ~ x + (t || g)",
        "y ~ x + (0 + t | g) + (1 | g)",
        "y ~ t + (x + t | g)",
        "y ~ w + (t:x | g)",
        "y ~ t + s + (t | g)",
        "y ~ poly(t, 2) + (t | g)",
    ],
)
def test_design_blocks_equal_formulaic(data, formula, monkeypatch):
    direct = build_design(formula, data)
    import memoe.core.design.fixed as fixed_mod
    import memoe.core.design.random as random_mod

    # the reference: every formula through formulaic
    monkeypatch.setattr(fixed_mod, "native_matrix", lambda *a, **k: None)
    monkeypatch.setattr(random_mod, "native_matrix", lambda *a, **k: None)
    ref = build_design(formula, data)
    np.testing.assert_array_equal(direct.X, ref.X)
    assert direct.fixef_names == ref.fixef_names
    assert [b.columns for b in direct.blocks] == [b.columns for b in ref.blocks]
    for b, r in zip(direct.blocks, ref.blocks, strict=True):
        np.testing.assert_array_equal(b.Z, r.Z)
        np.testing.assert_array_equal(b.factor.codes, r.factor.codes)
    np.testing.assert_array_equal(direct.theta_map.names, ref.theta_map.names)


def test_random_slope_is_a_read_only_view_of_X(data):
    d = build_design("y ~ t + x + (t | g)", data)
    Z = d.blocks[0].Z
    assert np.shares_memory(Z, d.X)
    assert not Z.flags.writeable
    np.testing.assert_array_equal(Z, d.X[:, :2])


def test_fits_agree_with_formulaic_path(data, monkeypatch):
    fit = memoe.lmm("y ~ t * x + (t | g)", data).fit(warn=False)
    import memoe.core.design.fixed as fixed_mod
    import memoe.core.design.random as random_mod

    monkeypatch.setattr(fixed_mod, "native_matrix", lambda *a, **k: None)
    monkeypatch.setattr(random_mod, "native_matrix", lambda *a, **k: None)
    ref = memoe.lmm("y ~ t * x + (t | g)", data).fit(warn=False)
    # same matrices up to memory layout: the same optimum to the optimiser's tolerance
    np.testing.assert_allclose(fit.params, ref.params, rtol=1e-7, atol=1e-9)
    assert abs(fit.reml_criterion - ref.reml_criterion) < 1e-8 * abs(ref.reml_criterion)


@pytest.mark.parametrize(
    ("offset", "scale"),
    [(0.0, 1.0), (5.0, 1.0), (99.0, 1.0), (101.0, 1.0), (1.7e9, 1.0), (0.0, 0.9e4), (0.0, 1.1e4), (0.0, 1.1e-4),
     (0.0, 0.9e-4), (3.0, 1e-300), (0.0, 1e300), (1e12, 1e-3)],
)
def test_gram_spreads_decide_as_the_exact_ones(offset, scale):
    rng = np.random.default_rng(3)
    n = 1000
    z = rng.standard_normal(n)
    col = offset + scale * (z - z.mean()) / z.std()
    X = np.asfortranarray(np.column_stack([np.ones(n), rng.normal(size=n), col]))
    with np.errstate(all="ignore"):
        G = X.T @ X
    approx = choose_scaling(X, None, columns=spreads_from_gram(X, G))
    exact = choose_scaling(X, None, columns=column_spreads(X))
    assert (approx is None) == (exact is None)
    if exact is not None:
        np.testing.assert_array_equal(approx.center, exact.center)
        np.testing.assert_array_equal(approx.scale, exact.scale)
    y = 1e9 + rng.normal(size=n)  # the response alone asks for a scaling: the column values must be exact
    a, e = choose_scaling(X, y, columns=spreads_from_gram(X, G)), choose_scaling(X, y)
    np.testing.assert_array_equal(a.center, e.center)
    np.testing.assert_array_equal(a.scale, e.scale)
