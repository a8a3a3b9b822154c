"""The native design path (memoe.core.design.native) against formulaic's, element by element."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from formulaic import model_matrix

from memoe.core.design.contrasts import apply_contrasts, resolve_contrasts
from memoe.core.design.fixed import build_fixed, evaluate_matrix, model_matrix_with_contrasts
from memoe.core.design.native import native_matrix, parse_terms, scoped_terms
from memoe.core.formula.names import r_column_name


def _data(n: int = 40, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    d = pd.DataFrame({
        "y": rng.normal(size=n),
        "x": rng.normal(size=n),
        "z": rng.normal(size=n) * 10,
        "i": rng.integers(0, 9, n),
        "u": rng.integers(0, 5, n).astype(np.uint16),
        "t": rng.random(n) < 0.4,
        # text: pandas' default str dtype, and object
        "s": pd.Series(np.array(["lo", "mid", "hi"])[rng.integers(0, 3, n)], dtype="str"),
        "o": pd.Series(np.array(["p", "q"], dtype=object)[rng.integers(0, 2, n)], dtype=object),
        # unordered Categorical with an unused category; ordered Categorical (poly by default)
        "c": pd.Categorical(np.array(["b", "a", "d"])[rng.integers(0, 3, n)], categories=["d", "b", "a", "zz"]),
        "k": pd.Categorical(np.array(["low", "med", "high", "top"])[rng.integers(0, 4, n)],
                            categories=["low", "med", "high", "top"], ordered=True),
        # integer categories
        "m": pd.Categorical(rng.integers(1, 4, n)),
        "my col": np.array(["u", "v", "w"], dtype=object)[rng.integers(0, 3, n)],
        "f32": rng.normal(size=n).astype(np.float32),
        "w": rng.normal(size=n),
    })
    d.loc[[3, 17], "x"] = np.nan  # missing rows are dropped below, as the model frame does
    d.loc[[5], "s"] = None
    return d.dropna().copy()


FORMULAS = [
    "1", "x", "0 + x", "x + z + x:z", "x * z", "i + u", "t", "x:t",
    "s", "0 + s", "o", "c", "0 + c", "k", "0 + k", "m", "s + c", "s * c", "s:c", "0 + s:c", "s + s:c", "c + s:c",
    "x * s", "x:s", "0 + x:s", "x + x:s", "s:x", "k * x", "x:k", "s * c * x", "s:c:x", "x + s + k + c + o",
    "k:s", "o * k", "0 + o + s", "i * s", "t * s", "u:c", "x:z:s",
    "x + x", "(s + c + x) ** 2", "s / c", "x - 1", "-1 + s", "s + 0", "x:z:s + s", "m * s", "`my col` + s",
    "`my col`:s", "t:s:m", "f32 * s", "f32 + x", "0 + f32:k",
    # powers of a column (R's I(x^2), rewritten to ** by the formula parser): int and float columns
    "x + I(x ** 2)", "I(i ** 3) * s", "I(x**2):k", "u + I(u ** 2)", "I(z ** 2) + I(z ** 3)",
]
CONTRASTS = [None, {"s": "sum"}, {"s": "helmert", "c": "sum"}, {"k": "treatment", "s": "poly"}, {"c": "helmert"},
             {"m": "sum", "s": "helmert"}]


def _formulaic(rhs, d, contrasts):
    X, spec, names, resolved = model_matrix_with_contrasts(rhs, d, contrasts)
    return X, list(spec.column_names), names, resolved


@pytest.mark.parametrize("contrasts", CONTRASTS)
@pytest.mark.parametrize("rhs", FORMULAS)
def test_native_equals_formulaic(rhs, contrasts):
    d = _data()
    used = {c for t in parse_terms(rhs) for c in t}
    if contrasts and not set(contrasts) <= used:
        contrasts = {k: v for k, v in contrasts.items() if k in used} or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X0, cols0, names0, resolved0 = _formulaic(rhs, d, contrasts)
    resolved = resolve_contrasts([rhs], d, contrasts)
    nm = native_matrix(rhs, d, resolved, "the fixed effects")
    assert nm is not None, rhs
    assert nm.names == names0
    assert nm.X.shape == X0.shape
    np.testing.assert_array_equal(nm.X, X0)  # bit for bit, NaN-free
    assert resolved == resolved0
    # the lazily built spec is formulaic's and replays the same matrix
    spec = nm.spec.get()
    assert list(spec.column_names) == cols0
    np.testing.assert_array_equal(evaluate_matrix(spec, d), X0)


@pytest.mark.parametrize("rhs", ["1 + x + s", "0 + s", "1 + k", "c", "x:s", "0 + s:o", "1 + t + x"])
def test_native_random_terms_equal_formulaic(rhs):
    # random-effects terms: default contrasts (poly for the ordered k), names without levels
    d = _data()
    resolved = resolve_contrasts([rhs], d, None)
    mm = model_matrix(apply_contrasts(rhs, resolved), d, output="numpy", na_action="ignore")
    nm = native_matrix(rhs, d, resolved, "a random-effects term")
    np.testing.assert_array_equal(nm.X, np.asarray(mm, dtype=float))
    assert nm.names == [r_column_name(c) for c in mm.model_spec.column_names]


@pytest.mark.parametrize("rhs", ["np.log(z + 100)", "I(x * 2)", "C(s, contr.sum)", "factor(i)", "poly(x, 2)",
                                 "x + {x ** 2}", "I(t ** 2)", "I(f32 ** 2)", "I(x ** 0.5)", "I(s ** 2)"])
def test_other_formulas_go_through_formulaic(rhs):
    assert native_matrix(rhs, _data(), {}, "the fixed effects") is None


def test_single_level_and_nullable_go_through_formulaic():
    d = _data()
    d["one"] = "a"
    d["nul"] = pd.array(np.arange(len(d)), dtype="Int64")
    d["mix"] = pd.Series([1, "a"] * (len(d) // 2) + [1] * (len(d) % 2), dtype=object, index=d.index)
    d["f32"] = d["x"].astype(np.float32)  # formulaic multiplies float32 columns in float32
    d["kna"] = d["k"].where(d["x"] > 0)  # missing levels (code -1) when called on a frame that kept them
    for rhs in ["one", "x + nul", "mix", "f32:x", "kna"]:
        assert native_matrix(rhs, d, {}, "the fixed effects") is None


def test_scoping_without_margins():
    # formulaic's (patsy's) rule, replayed: a:b alone codes b reduced then a:b with a reduced, b full
    terms = parse_terms("a:b")
    assert scoped_terms(terms, frozenset({"a", "b"})) == (((),), ((("b", True),), (("a", True), ("b", False))))
    # x:a without x: a in full
    assert scoped_terms(parse_terms("x:a"), frozenset({"a"}))[1] == ((("x", False), ("a", False)),)


def test_build_fixed_native_and_lazy_spec_predict():
    d = _data()
    fd = build_fixed("x * s + k", d)
    assert not isinstance(fd.spec_source, type(fd.spec))  # lazy until asked
    new = d.iloc[:7]
    np.testing.assert_array_equal(fd.matrix_for(new), fd.X[:7])
    # a level the fit has not seen is refused by name, as on formulaic's path
    from memoe.core.design.newdata import NewLevelError

    bad = new.copy()
    bad["s"] = pd.Series(["zzz"] * 7, index=bad.index, dtype="str")
    with pytest.raises(NewLevelError, match="s"):
        fd.matrix_for(bad)


def test_unused_levels_after_dropping_rows():
    # levels of a text column are those of the rows kept; a Categorical keeps its categories (as formulaic)
    d = _data()
    d = d[d["s"] != "mid"]
    nm = native_matrix("s + c", d, resolve_contrasts(["s + c"], d, None), "the fixed effects")
    X0, _, names0, _ = _formulaic("s + c", d, None)
    assert nm.names == names0 and "smid" not in nm.names and "czz" in nm.names
    np.testing.assert_array_equal(nm.X, X0)


def test_lazy_spec_copies_and_pickles():
    import copy
    import pickle

    d = _data()
    fd = build_fixed("x + s", d)
    for clone in (copy.deepcopy(fd.spec_source), pickle.loads(pickle.dumps(fd.spec_source))):
        assert list(clone.get().column_names) == list(fd.spec.column_names)


@pytest.mark.parametrize("dtype", ["str", object])
def test_level_order_of_text(dtype):
    # upper case before lower case, digits as text ("10" < "9"), non-ASCII last: formulaic's (pandas') order
    rng = np.random.default_rng(8)
    d = pd.DataFrame({"x": rng.normal(size=60)})
    d["g"] = pd.Series(np.array(["B", "a", "é", "10", "9", "Z z"], dtype=object)[rng.integers(0, 6, 60)], dtype=dtype)
    for rhs in ["g", "0 + g", "x * g"]:
        X0, _, names0, _ = _formulaic(rhs, d, None)
        nm = native_matrix(rhs, d, resolve_contrasts([rhs], d, None), "the fixed effects")
        assert nm.names == names0
        np.testing.assert_array_equal(nm.X, X0)
        assert list(nm.spec.get().column_names) == list(model_matrix(rhs, d).model_spec.column_names)
