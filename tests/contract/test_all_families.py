"""One contract over every model family (issue 9's check), in the manner of scikit-learn's estimator checks.

Every check below runs on each family -- lmm, glmm (binomial cbpp, poisson), gls (AR1), lme, gee, MEMoE
(K = 2) and MoE -- on a small fixture. A check whose concept does not apply to a family asserts the
documented :class:`~memoe.errors.MemoeError` instead (GEE has no likelihood).

Fits are shared through a module-level cache (one fit per family and data variant), so the whole file
stays within a few seconds per family.

Tolerances
----------
* Identities that are the same computation done two ways (``predict(train) == fitted``, a save/load
  round trip) are checked to a few hundred ulps of the quantity's scale (``EXACT``).
* Refits of the same problem from re-ordered rows or another table library follow the same optimiser
  path; only the summation order of the sufficient statistics differs (relative round-off ~1e-15),
  which the optimisers' stopping rules can amplify by at most their condition number on these well-
  conditioned small problems: params to 1e-8 relative, the log-likelihood (flat at the optimum, so
  first-order insensitive to the parameters) to 1e-9 relative.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.result import COEF_COLUMNS, GLANCE_COLUMNS, TIDY_COLUMNS, FitResult
from memoe.core.summary import Summary
from memoe.errors import MemoeError
from memoe.glmm.families import get_family
from memoe.marginal import AR1, VarExp

EXACT = 1e-10
PARAMS_RTOL = 1e-8
LOGLIK_RTOL = 1e-9


# ------------------------------------------------------------------------------------------ fixtures
def _poisson_data() -> pd.DataFrame:
    """20 groups of 6 counts with a random intercept (log link)."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(20), 6)
    x = rng.normal(size=g.size)
    u = rng.normal(scale=0.5, size=20)[g]
    count = rng.poisson(np.exp(0.5 + 0.4 * x + u))
    return pd.DataFrame({"g": [f"g{i:02d}" for i in g], "x": x, "count": count})


def _gee_data() -> pd.DataFrame:
    """30 clusters of 4 visits with a shared random intercept (gaussian response)."""
    rng = np.random.default_rng(4)
    gid = np.repeat(np.arange(30), 4)
    t = np.tile(np.arange(1, 5), 30)
    x = rng.normal(size=gid.size)
    arm = np.where(np.repeat(rng.integers(0, 2, 30), 4) == 1, "drug", "placebo")
    y = 2.0 + 0.5 * x - 0.3 * t + 0.8 * (arm == "drug") + np.repeat(rng.normal(size=30), 4) + rng.normal(size=gid.size)
    return pd.DataFrame({"id": [f"c{g:02d}" for g in gid], "t": t, "x": x, "arm": arm, "y": y})


def _sim2_small() -> pd.DataFrame:
    """The first 80 subjects of the memoe_sim2 reference data (two well-separated classes)."""
    d = memoe.datasets.load("memoe_sim2")
    return d[d["id"] <= 80].drop(columns="true_class").reset_index(drop=True)


def _quiet(fn: Callable[[], FitResult]) -> FitResult:
    # convergence/singularity warnings are the subject of other tests; here they would only be noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


@dataclass(frozen=True)
class Family:
    """How to fit one family on a table, and which columns the contract checks may blank."""

    fit: Callable[[object], FitResult]
    data: Callable[[], pd.DataFrame]
    response: str
    covariates: tuple[str, str]  # the columns of the two rows given a missing covariate value
    nested: Callable[[object], FitResult] | None = None  # a smaller model on the same rows (for compare)
    likelihood: bool = True


ORTHO = "distance ~ age + Sex"
# AR1 on the visit (age) rather than on the row position within a subject: nlme's corAR1() without a
# covariate uses the row order, so a row shuffle would change the model, not just its input
FAMILIES: dict[str, Family] = {
    "lmm": Family(
        fit=lambda d: memoe.lmm("Reaction ~ Days + (Days | Subject)", data=d).fit(reml=False),
        nested=lambda d: memoe.lmm("Reaction ~ Days + (1 | Subject)", data=d).fit(reml=False),
        data=lambda: memoe.datasets.load("sleepstudy"),
        response="Reaction",
        covariates=("Days", "Days"),
    ),
    "lmm_weighted": Family(
        fit=lambda d: memoe.lmm("Reaction ~ Days + offset(o) + (Days | Subject)", data=d, weights="w").fit(reml=False),
        nested=lambda d: memoe.lmm("Reaction ~ Days + offset(o) + (1 | Subject)", data=d, weights="w").fit(reml=False),
        data=lambda: memoe.datasets.load("sleepstudy").assign(
            w=lambda x: 1.0 + (x["Days"] % 3) / 2.0, o=lambda x: np.sin(x["Days"].to_numpy(float))
        ),
        response="Reaction",
        covariates=("Days", "w"),
    ),
    "lmlist": Family(
        fit=lambda d: memoe.lmlist("Reaction ~ Days | Subject", d),
        nested=lambda d: memoe.lmlist("Reaction ~ 1 | Subject", d),
        data=lambda: memoe.datasets.load("sleepstudy"),
        response="Reaction",
        covariates=("Days", "Days"),
    ),
    "glmm_binomial": Family(
        fit=lambda d: memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, "binomial").fit(),
        nested=lambda d: memoe.glmm("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", d, "binomial").fit(),
        data=lambda: memoe.datasets.load("cbpp"),
        response="incidence",
        covariates=("period", "period"),
    ),
    "glmm_poisson": Family(
        fit=lambda d: memoe.glmm("count ~ x + (1 | g)", d, "poisson").fit(),
        nested=lambda d: memoe.glmm("count ~ 1 + (1 | g)", d, "poisson").fit(),
        data=_poisson_data,
        response="count",
        covariates=("x", "x"),
    ),
    # issue 11: a GLM (no random effects), a Gamma GLMM with lme4's dispersion, an NB2 GLMM with theta estimated
    "glm_binomial": Family(
        fit=lambda d: memoe.glmm("cbind(incidence, size - incidence) ~ period", d, "binomial").fit(),
        nested=lambda d: memoe.glmm("cbind(incidence, size - incidence) ~ 1", d, "binomial").fit(),
        # augment() returns the model's columns: the fixture holds only those
        data=lambda: memoe.datasets.load("cbpp").drop(columns="herd"),
        response="incidence",
        covariates=("period", "period"),
    ),
    "glmm_gamma": Family(
        fit=lambda d: memoe.glmm("y ~ x + trt + (1 | g)", d, get_family("Gamma", "log")).fit(),
        nested=lambda d: memoe.glmm("y ~ x + (1 | g)", d, get_family("Gamma", "log")).fit(),
        data=lambda: memoe.datasets.load("glmm_gamma_sim")[["y", "x", "trt", "g"]],
        response="y",
        covariates=("x", "trt"),
    ),
    "glmm_nb": Family(
        fit=lambda d: memoe.glmm("y ~ x + (1 | g)", d, "negative_binomial").fit(),
        nested=lambda d: memoe.glmm("y ~ 1 + (1 | g)", d, "negative_binomial").fit(),
        data=lambda: memoe.datasets.load("glmm_nb_sim"),
        response="y",
        covariates=("x", "x"),
    ),
    "gls": Family(
        fit=lambda d: memoe.gls(ORTHO, d, correlation=AR1("Subject", visit="age")).fit(reml=False),
        nested=lambda d: memoe.gls("distance ~ age", d, correlation=AR1("Subject", visit="age")).fit(reml=False),
        data=lambda: memoe.datasets.load("Orthodont"),
        response="distance",
        covariates=("age", "Sex"),
    ),
    "lme": Family(
        fit=lambda d: memoe.lme(f"{ORTHO} + (1 | Subject)", d, correlation=AR1(visit="age")).fit(reml=False),
        nested=lambda d: memoe.lme("distance ~ age + (1 | Subject)", d, correlation=AR1(visit="age")).fit(reml=False),
        data=lambda: memoe.datasets.load("Orthodont"),
        response="distance",
        covariates=("age", "Sex"),
    ),
    "gee": Family(
        fit=lambda d: memoe.gee("y ~ x + t + arm", d, group="id", corstr="exchangeable").fit(),
        nested=lambda d: memoe.gee("y ~ x + t", d, group="id", corstr="exchangeable").fit(),
        data=_gee_data,
        response="y",
        covariates=("x", "arm"),
        likelihood=False,
    ),
    "memoe": Family(
        fit=lambda d: memoe.MEMoE("y ~ time + x + (1 | id)", gating="~ w1", k=2, data=d).fit(
            n_starts=2, seed=1, progress=False
        ),
        nested=lambda d: memoe.MEMoE("y ~ time + x + (1 | id)", gating=None, k=2, data=d).fit(
            n_starts=2, seed=1, progress=False
        ),
        data=_sim2_small,
        response="y",
        # a gating covariate and the subject id: rows the expert formula never sees
        covariates=("w1", "id"),
    ),
    # class-specific residual structures (issue 12): a variance exponential in time per expert (interior
    # estimates on these data, whose serial correlation is nil: an AR(1) would sit on its boundary 0)
    "memoe_varexp": Family(
        fit=lambda d: memoe.MEMoE("y ~ time + x + (1 | id)", gating="~ w1", k=2, data=d, weights=VarExp("time")).fit(
            n_starts=2, seed=1, progress=False
        ),
        nested=lambda d: memoe.MEMoE("y ~ time + x + (1 | id)", gating=None, k=2, data=d,
                                     weights=VarExp("time")).fit(n_starts=2, seed=1, progress=False),
        data=_sim2_small,
        response="y",
        covariates=("w1", "id"),
    ),
    "moe": Family(
        fit=lambda d: memoe.MoE("y ~ time + x", gating="~ w1", k=2, data=d, group="id").fit(
            n_starts=2, seed=1, progress=False
        ),
        nested=lambda d: memoe.MoE("y ~ time + x", gating=None, k=2, data=d, group="id").fit(
            n_starts=2, seed=1, progress=False
        ),
        data=_sim2_small,
        response="y",
        covariates=("x", "w1"),
    ),
}
NAMES = list(FAMILIES)
LIKELIHOOD = [n for n in NAMES if FAMILIES[n].likelihood]

# the rows given a missing response (3) and a missing covariate (2), by position
NAN_RESPONSE_ROWS = (1, 7, 20)
NAN_COVARIATE_ROWS = (4, 13)


@cache
def data(name: str, variant: str = "pandas") -> pd.DataFrame:
    """The family's fixture table: as loaded, row-shuffled, or with missing values."""
    d = FAMILIES[name].data()
    if variant == "pandas":
        return d
    if variant == "shuffled":
        # the index labels travel with the rows, so per-row outputs can be compared by label
        return d.sample(frac=1.0, random_state=np.random.default_rng(5))
    if variant == "holes":
        fam = FAMILIES[name]
        d = d.copy()
        for col in {fam.response, *fam.covariates}:
            if not pd.api.types.is_float_dtype(d[col]) and not isinstance(d[col].dtype, pd.CategoricalDtype):
                d[col] = d[col].astype(float if pd.api.types.is_numeric_dtype(d[col]) else object)
        d.loc[d.index[list(NAN_RESPONSE_ROWS)], fam.response] = np.nan
        for pos, col in zip(NAN_COVARIATE_ROWS, fam.covariates, strict=True):
            d.loc[d.index[pos], col] = np.nan
        return d
    raise AssertionError(variant)


def table(name: str, kind: str):
    """The fixture as a polars DataFrame or a pyarrow Table (skipping when the library is missing)."""
    if kind == "polars":
        pl = pytest.importorskip("polars")
        return pl.from_pandas(data(name))
    pa = pytest.importorskip("pyarrow")
    return pa.Table.from_pandas(data(name), preserve_index=False)


@cache
def fitted_model(name: str, variant: str = "pandas") -> FitResult:
    fam = FAMILIES[name]
    if variant in ("polars", "pyarrow"):
        return _quiet(lambda: fam.fit(table(name, variant)))
    if variant == "nested":
        return _quiet(lambda: fam.nested(data(name)))
    return _quiet(lambda: fam.fit(data(name, variant)))


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture
def fit(name) -> FitResult:
    return fitted_model(name)


def _close(a, b, rtol: float = EXACT) -> None:
    """Elementwise agreement relative to the vector's scale (entries near zero carry the others' round-off)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    assert a.shape == b.shape
    scale = max(float(np.nanmax(np.abs(b))) if b.size else 0.0, 1e-300)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))


def _aligned(series: pd.Series, frame: pd.DataFrame) -> None:
    assert isinstance(series, pd.Series)
    assert series.index.equals(frame.index), f"{series.name}: not indexed like the input rows"


# ------------------------------------------------------------------------------------------- types
def test_is_a_fit_result(name, fit):
    assert isinstance(fit, FitResult)


def test_params_bse_vcov(fit):
    p = fit.params
    assert isinstance(p, pd.Series) and len(p) and p.index.is_unique
    assert isinstance(fit.bse, pd.Series) and fit.bse.index.equals(p.index)
    v = fit.vcov()
    assert isinstance(v, pd.DataFrame) and v.index.equals(p.index) and v.columns.equals(p.index)
    _close(np.sqrt(np.clip(np.diag(v.to_numpy()), 0.0, None)), fit.bse)
    for robust in fit.robust_types:
        r = fit.vcov(robust=robust)
        assert isinstance(r, pd.DataFrame) and r.index.equals(p.index) and r.columns.equals(p.index), robust
        assert np.all(np.isfinite(np.diag(r.to_numpy()))), robust
    with pytest.raises(MemoeError, match="robust='no-such-type'"):
        fit.vcov(robust="no-such-type")


def test_confint(fit):
    ci = fit.confint()
    assert isinstance(ci, pd.DataFrame) and list(ci.columns) == ["lower", "upper"]
    assert set(fit.params.index) <= set(ci.index)
    sub = ci.loc[fit.params.index]
    ok = sub.notna().all(axis=1)
    assert np.all(sub.lower[ok] <= fit.params[ok]) and np.all(fit.params[ok] <= sub.upper[ok])


def test_coef_table(fit):
    ct = fit.coef_table()
    assert list(ct.columns) == COEF_COLUMNS
    assert ct.attrs["statistic"] in ("t", "z", "chisq") and isinstance(ct.attrs["ddf"], str)
    assert len(ct) and set(ct.index) <= set(fit.params.index)


def test_summary(fit):
    s = fit.summary()
    assert isinstance(s, Summary)
    assert isinstance(str(s), str) and str(s).strip()
    assert isinstance(s.tables, dict) and s.tables
    assert all(isinstance(t, pd.DataFrame) for t in s.tables.values())
    assert isinstance(s._repr_html_(), str) and s._repr_html_()


def test_fitted_resid_residuals_aligned(name, fit):
    d = data(name)
    _aligned(fit.fitted, d)
    _aligned(fit.resid, d)
    assert fit.fitted.notna().all()
    for kind in fit.residual_types:
        r = fit.residuals(type=kind)
        _aligned(r, d)
        assert r.notna().all(), kind
    # the default type is the family's first (lme4: deviance residuals for a GLMM); "response" is y - fitted
    _close(fit.residuals(), fit.residuals(type=fit.residual_types[0]))
    if "response" in fit.residual_types:
        _close(fit.residuals(type="response"), fit.resid)


def test_predict_on_training_data_is_fitted(name, fit):
    d = data(name)
    plain = fit.predict()
    _aligned(plain, d)
    _close(plain, fit.fitted)
    again = fit.predict(d)
    _aligned(again, d)
    _close(again, fit.fitted)


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_predict_accepts_polars_and_pyarrow_newdata(name, fit, kind):
    new = fit.predict(table(name, kind))
    _close(new, fit.fitted)


def test_likelihood_and_criteria(name, fit):
    assert isinstance(fit.nobs, (int, np.integer)) and fit.nobs == len(data(name))
    assert isinstance(fit.ngroups, pd.Series)
    if not FAMILIES[name].likelihood:
        for attr in ("loglik", "aic", "bic"):
            with pytest.raises(MemoeError, match="likelihood"):
                getattr(fit, attr)
        return
    assert math.isfinite(fit.loglik) and math.isfinite(fit.aic) and math.isfinite(fit.bic)
    ic = fit.information_criteria()
    assert isinstance(ic, pd.Series) and len(ic)


def test_tidy(fit):
    t = fit.tidy()
    assert list(t.columns) == TIDY_COLUMNS and len(t)
    assert set(t.effect) <= {"fixed", "ran_pars"}
    with_ci = fit.tidy(conf_int=True)
    assert list(with_ci.columns) == [*TIDY_COLUMNS, "conf_low", "conf_high"] and len(with_ci) == len(t)


def test_glance(name, fit):
    g = fit.glance()
    assert isinstance(g, pd.DataFrame) and len(g) == 1
    assert list(g.columns[: len(GLANCE_COLUMNS)]) == GLANCE_COLUMNS
    assert g.nobs.iloc[0] == fit.nobs


def test_augment(name, fit):
    d = data(name)
    a = fit.augment()
    assert isinstance(a, pd.DataFrame) and len(a) == len(d) and a.index.equals(d.index)
    assert set(d.columns) <= set(a.columns)
    assert {".fitted", ".resid", ".fixed"} <= set(a.columns)
    _close(a[".fitted"], fit.fitted)
    _close(a[".resid"], fit.resid)


def test_save_load_round_trip(name, fit, tmp_path):
    path = tmp_path / f"{name}.memoe"
    fit.save(path)
    back = memoe.load(path)
    assert type(back) is type(fit)
    pd.testing.assert_series_equal(back.params, fit.params, rtol=EXACT)
    if FAMILIES[name].likelihood:
        assert back.loglik == pytest.approx(fit.loglik, rel=EXACT)
    _close(back.fitted, fit.fitted)


# -------------------------------------------------------------------------------- invariances
def test_row_permutation_invariance(name, fit):
    other = fitted_model(name, "shuffled")
    _close(other.params, fit.params, PARAMS_RTOL)
    if FAMILIES[name].likelihood:
        assert other.loglik == pytest.approx(fit.loglik, rel=LOGLIK_RTOL)
    # per-row outputs follow their rows; they involve the variance parameters, which the optimisers fix
    # only to their own tolerance (~1e-6 relative on theta where the criterion is flat), hence 1e-5
    _aligned(other.fitted, data(name, "shuffled"))
    _close(other.fitted.loc[fit.fitted.index], fit.fitted, 1e-5)


def test_nan_rows_are_aligned(name):
    d = data(name, "holes")
    f = fitted_model(name, "holes")
    holes = d.index[sorted({*NAN_RESPONSE_ROWS, *NAN_COVARIATE_ROWS})]
    assert f.n_dropped == 5 and f.nobs == len(d) - 5
    a = f.augment()
    per_row = {"fitted": f.fitted, "resid": f.resid, "augment .fitted": a[".fitted"], "augment .resid": a[".resid"]}
    per_row |= {f"residuals({k!r})": f.residuals(type=k) for k in f.residual_types}
    assert len(a) == len(d) and a.index.equals(d.index)
    for label, s in per_row.items():
        assert s.index.equals(d.index), label
        assert list(d.index[s.isna().to_numpy()]) == list(holes), label


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_polars_and_pyarrow_input(name, fit, kind):
    table(name, kind)  # skips when the library is missing
    other = fitted_model(name, kind)
    _close(other.params, fit.params, PARAMS_RTOL)
    if FAMILIES[name].likelihood:
        assert other.loglik == pytest.approx(fit.loglik, rel=LOGLIK_RTOL)


# ------------------------------------------------------------------------------------ compare
def test_compare_nested_fits(name, fit):
    small = fitted_model(name, "nested")
    if not FAMILIES[name].likelihood:
        # the refusal names GEE and says what to use instead (QIC)
        with pytest.raises(MemoeError, match=r"GEE.*likelihood.*qic"):
            memoe.compare(small, fit)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table_ = memoe.compare(small, fit)
    assert isinstance(table_, pd.DataFrame) and len(table_) == 2


def test_nan_rows_survive_save_load(name, tmp_path):
    """A loaded fit keeps the input's index and its dropped rows (also rows the expert formula of a
    mixture never saw: a missing subject id or gating covariate)."""
    f = fitted_model(name, "holes")
    path = tmp_path / f"{name}-holes.memoe"
    f.save(path)
    back = memoe.load(path)
    assert back.n_dropped == f.n_dropped == 5
    pd.testing.assert_index_equal(back.fitted.index, f.fitted.index)
    _close(back.fitted, f.fitted)
    _close(back.augment()[".resid"], f.augment()[".resid"])
