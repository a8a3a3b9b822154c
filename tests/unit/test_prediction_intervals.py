"""predict(..., interval=): standard errors and intervals, population and conditional, for lmm, gls/lme, glmm.

The conditional standard errors are checked against a dense, independent computation of Henderson's
prediction-error covariance (the inverse of the full mixed-model equations, or for lme the per-group
marginal formula), which agrees with the batched PLS / per-bucket code to rounding: the tolerance is
1e-8 relative (the quantities are sums of squares of triangular solves with condition numbers below
1e4 here, so rounding is ~1e-12).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import memoe
from memoe.core.design.newdata import PredictArgumentError
from memoe.errors import ArgumentError, MemoeError, MemoeWarning
from memoe.marginal import CAR1, Exp, gls, lme
from tests.conftest import fitted_case, reference, reference_data

EXACT = 1e-8  # relative: two exact computations of the same variance (rounding only)


def _quiet(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoeWarning)
        return f()


def _block_design(fit):
    """Dense ``Z Lambda`` of all blocks (columns level-major as the PLS problem)."""
    d = fit.design
    n = d.blocks[0].Z.shape[0]
    parts = []
    for blk, lam in zip(d.blocks, fit.relative_factors(), strict=True):
        q = blk.Z.shape[1]
        Zb = np.zeros((n, blk.nlevels * q))
        for a in range(q):
            Zb[np.arange(n), blk.factor.codes * q + a] = blk.Z[:, a]
        parts.append(Zb @ np.kron(np.eye(blk.nlevels), lam))
    return np.hstack(parts)


def _henderson_var(fit, X, w=None, scale2=1.0):
    """``scale2 a' C^-1 a`` per fitted row from the dense mixed-model equations."""
    ZL = _block_design(fit)
    w = np.ones(len(X)) if w is None else w
    C = np.block(
        [
            [ZL.T @ (w[:, None] * ZL) + np.eye(ZL.shape[1]), ZL.T @ (w[:, None] * X)],
            [X.T @ (w[:, None] * ZL), X.T @ (w[:, None] * X)],
        ]
    )
    a = np.hstack([ZL, X])
    return scale2 * np.einsum("ij,ji->i", a, np.linalg.solve(C, a.T))


# ---------------------------------------------------------------------------- LMM
@pytest.mark.parametrize("case", ["sleepstudy_corr_slope_reml", "penicillin_reml", "pastes_ml"])
def test_lmm_conditional_se_is_henderson(case):
    fit = fitted_case(case)
    out = fit.predict(interval="confidence")
    assert list(out.columns) == ["fit", "se_fit", "lower", "upper"]
    v = _henderson_var(fit, fit.design.X, scale2=fit.sigma**2)
    np.testing.assert_allclose(out["se_fit"].to_numpy() ** 2, v, rtol=EXACT)
    # the conditional predictions are lme4's fitted values (R reference, 1e-5 relative)
    np.testing.assert_allclose(out["fit"].to_numpy(), reference(case)["results"]["fitted"], rtol=1e-5)
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(out["upper"] - out["lower"], 2 * z * out["se_fit"], rtol=1e-12)


def test_lmm_blups_match_r():
    case = "sleepstudy_corr_slope_reml"
    fit = fitted_case(case)
    ref = pd.DataFrame(reference(case)["results"]["ranef"]["Subject"]).set_index("group")
    ours = fit.ranef["Subject"].set_index(fit.ranef["Subject"].index.astype(str))
    # 1e-5 relative to each column's scale (a BLUP near 0 has no relative precision of its own)
    scale = np.abs(ref.to_numpy()).max(axis=0)
    np.testing.assert_allclose(ours.loc[ref.index].to_numpy() / scale, ref.to_numpy() / scale, atol=1e-5)


def test_lmm_population_is_x_beta_and_variances():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    df = reference_data("sleepstudy_corr_slope_reml")
    X = fit.design.fixed.matrix_for(df)
    V = fit.vcov().to_numpy()
    conf = fit.predict(df, re_form=None, interval="confidence", level=0.9)
    np.testing.assert_allclose(conf["fit"], X @ fit.fixef.to_numpy(), rtol=1e-13)
    np.testing.assert_allclose(fit.predict(df, re_form=None), X @ fit.fixef.to_numpy(), rtol=1e-13)
    np.testing.assert_allclose(conf["se_fit"] ** 2, np.einsum("ij,jk,ik->i", X, V, X), rtol=EXACT)
    assert conf.attrs["level"] == 0.9
    pred = fit.predict(df, re_form=None, interval="prediction", level=0.9)
    G = fit.term_covariances()[0]
    zGz = np.einsum("ij,jk,ik->i", X, G, X)  # Z = [1, Days] = X here
    half = stats.norm.ppf(0.95) * np.sqrt(conf["se_fit"] ** 2 + zGz + fit.sigma**2)
    np.testing.assert_allclose(pred["upper"] - pred["fit"], half, rtol=EXACT)


def test_lmm_new_level_adds_prior_variance():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    df = reference_data("sleepstudy_corr_slope_reml").head(4).copy()
    df["Subject"] = "new"
    out = fit.predict(df, interval="confidence", allow_new_levels=True)
    pop = fit.predict(df, re_form=None, interval="confidence")
    X = fit.design.fixed.matrix_for(df)
    zGz = np.einsum("ij,jk,ik->i", X, fit.term_covariances()[0], X)
    np.testing.assert_allclose(out["se_fit"] ** 2, pop["se_fit"] ** 2 + zGz, rtol=EXACT)
    with pytest.raises(memoe.core.design.newdata.NewLevelError):
        fit.predict(df, interval="confidence")


def test_lmm_dropped_rows_and_newdata_index():
    df = reference_data("sleepstudy_corr_slope_reml")
    df.loc[3, "Reaction"] = np.nan
    fit = _quiet(lambda: memoe.lmm("Reaction ~ Days + (Days | Subject)", df).fit())
    out = fit.predict(interval="prediction")
    assert out.index.equals(df.index) and np.isnan(out.loc[3]).all() and np.isfinite(out.drop(3)).all().all()
    new = df.iloc[[5, 2]].set_index(pd.Index(["a", "b"]))
    assert list(fit.predict(new, interval="confidence").index) == ["a", "b"]


# ---------------------------------------------------------------------------- GLMM
def test_glmm_conditional_se_is_henderson_and_response_scale():
    df = memoe.datasets.load("cbpp")
    fit = _quiet(lambda: memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", df, "binomial").fit())
    link = fit.predict(interval="confidence", type="link")
    v = _henderson_var(fit, fit.model.problem.X, w=fit.state.pirls.w)
    np.testing.assert_allclose(link["se_fit"] ** 2, v, rtol=EXACT)
    resp = fit.predict(interval="confidence")
    from scipy.special import expit

    np.testing.assert_allclose(resp["lower"], expit(link["lower"]), rtol=1e-12)
    np.testing.assert_allclose(resp["fit"], fit.fitted, rtol=1e-12)
    assert (resp["lower"] < resp["fit"]).all() and (resp["fit"] < resp["upper"]).all()
    pop = fit.predict(df, re_form=None, interval="prediction", type="link")
    X = fit.design.fixed.matrix_for(df)
    np.testing.assert_allclose(pop["fit"], X @ fit.fixef.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(pop["se_fit"] ** 2, np.einsum("ij,jk,ik->i", X, fit.vcov().to_numpy(), X), rtol=EXACT)
    tau2 = fit.term_covariances()[0][0, 0]
    np.testing.assert_allclose(
        pop["upper"] - pop["fit"], stats.norm.ppf(0.975) * np.sqrt(pop["se_fit"] ** 2 + tau2), rtol=EXACT
    )


def test_glmm_predict_subject_refused():
    df = memoe.datasets.load("cbpp")
    fit = _quiet(lambda: memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", df, "binomial").fit())
    with pytest.raises(memoe.errors.FamilyError, match="Gaussian"):
        fit.predict_subject(df, df)


# ---------------------------------------------------------------------------- gls / lme
def _lme_dense_var(fit):
    """Per-group (x - K z)' V_beta (x - K z) + z'(G - G Z' V^-1 Z G) z from marginal_covariance."""
    d = fit.design
    blk = d.blocks[0]
    G = fit.ranef_cov.to_numpy()
    Vb = fit.vcov().to_numpy()
    out = np.empty(d.n)
    for i, lev in enumerate(blk.factor.levels):
        r = np.flatnonzero(blk.factor.codes == i)
        V = fit.marginal_covariance(lev)
        # marginal_covariance is in visit (data) order within the group, as r
        Zi, Xi = blk.Z[r], d.X[r]
        Vi = np.linalg.inv(V)
        a = Xi - Zi @ (Xi.T @ Vi @ Zi @ G).T
        S = G - G @ Zi.T @ Vi @ Zi @ G
        out[r] = np.einsum("ij,jk,ik->i", a, Vb, a) + np.einsum("ij,jk,ik->i", Zi, S, Zi)
    return out


@pytest.fixture(scope="module")
def lme_exp():
    case = "bodyweight_lme_exp_nugget_reml"
    df = reference_data(case)
    fit = _quiet(lambda: lme("weight ~ Time * Diet + (Time | Rat)", df, correlation=Exp("Time", nugget=True)).fit())
    return case, df, fit


def test_lme_conditional_se_with_residual_structure(lme_exp):
    case, df, fit = lme_exp
    out = fit.predict(interval="confidence")
    np.testing.assert_allclose(out["se_fit"] ** 2, _lme_dense_var(fit), rtol=EXACT)
    r = reference(case)["results"]
    # conditional and population predictions against nlme (the range / nugget are flat directions
    # that nlme stops on at ~1e-5 relative, which moves the fitted values by less than 1e-5)
    np.testing.assert_allclose(out["fit"], r["fitted"], rtol=1e-5)
    np.testing.assert_allclose(fit.predict(df, level=0), r["fitted_marginal"], rtol=1e-5)
    pred = fit.predict(interval="prediction", level=0.8)
    np.testing.assert_allclose(
        pred["upper"] - pred["fit"], stats.norm.ppf(0.9) * np.sqrt(out["se_fit"] ** 2 + fit.sigma**2), rtol=EXACT
    )


def test_gls_population_intervals_and_level_argument():
    df = memoe.datasets.load("BodyWeight")
    fit = _quiet(lambda: gls("weight ~ Time * Diet", df, correlation=CAR1("Time", "Rat")).fit())
    X = fit.design.fixed.matrix_for(df)
    out = fit.predict(df, interval="prediction", level=0.9)
    np.testing.assert_allclose(out["fit"], X @ fit.fixef.to_numpy(), rtol=1e-13)
    se2 = np.einsum("ij,jk,ik->i", X, fit.vcov().to_numpy(), X)
    np.testing.assert_allclose(out["se_fit"] ** 2, se2, rtol=EXACT)
    half = stats.norm.ppf(0.95) * np.sqrt(se2 + fit.sigma**2)
    np.testing.assert_allclose(out["upper"] - out["fit"], half, rtol=EXACT)
    with pytest.raises(PredictArgumentError, match="coverage"):
        fit.predict(df, level=0.9)  # a coverage without interval=
    with pytest.raises(PredictArgumentError, match="level must be 0"):
        fit.predict(df, level=2)


# ---------------------------------------------------------------------------- arguments
def test_bad_interval_and_level_are_refused():
    fit = fitted_case("sleepstudy_corr_slope_reml")
    with pytest.raises(PredictArgumentError, match="'confidence' or 'prediction'"):
        fit.predict(interval="credible")
    with pytest.raises(ArgumentError, match=r"level must be in \(0, 1\)"):
        fit.predict(interval="confidence", level=95)
    with pytest.raises(PredictArgumentError, match="type"):
        fit.predict(interval="confidence", type="mean")


def test_memoe_interval_is_refused():
    df = memoe.datasets.load("memoe_sim2")
    df = df[df["id"] <= 40].reset_index(drop=True)
    fit = _quiet(
        lambda: memoe.MEMoE("y ~ time + (1 | id)", gating="~ w1", k=2, data=df).fit(n_starts=1, seed=1, progress=False)
    )
    with pytest.raises(MemoeError, match="mixture"):
        fit.predict(interval="prediction")
    with pytest.raises(MemoeError, match="mixture"):
        fit.predict_subject(df, df)
    assert isinstance(fit.predict(), pd.Series)


# ---------------------------------------------------------------------------- coverage
@pytest.mark.slow
def test_prediction_interval_coverage_simulation():
    """Coverage of 95% prediction intervals of new observations of seen subjects (conditional) and of
    new subjects (population), over 40 simulated data sets of 100 subjects x 5 visits.

    4,000 intervals per kind, correlated within a data set through the shared estimates: with a design
    effect of at most 3 the Monte Carlo SD of the coverage is sqrt(3 * 0.95 * 0.05 / 4000) = 0.006; the
    plug-in of estimated variances with 100 subjects costs well under 0.5%. The band 0.95 +- 0.02 is
    3.3 Monte Carlo SDs, and a wrong variance term (sigma^2 or z'Gz left out, or the fixed-effects
    part alone) moves the coverage by more than 0.1.
    """
    rng = np.random.default_rng(20240611)
    n_sub, n_vis, reps = 100, 5, 40
    t = np.tile(np.arange(n_vis, dtype=float), n_sub)
    sub = np.repeat(np.arange(n_sub), n_vis)
    hits_c = hits_p = total = 0
    for _ in range(reps):
        b0 = rng.normal(0, 2.0, n_sub)
        df = pd.DataFrame({"y": 10 + 1.0 * t + b0[sub] + rng.normal(0, 1.0, len(t)), "t": t, "s": sub})
        fit = _quiet(lambda df=df: memoe.lmm("y ~ t + (1 | s)", df).fit())
        new = pd.DataFrame({"t": np.full(n_sub, 5.5), "s": np.arange(n_sub)})
        y_new = 10 + 5.5 + b0 + rng.normal(0, 1.0, n_sub)
        c = fit.predict(new, interval="prediction")
        hits_c += int(((c["lower"] <= y_new) & (y_new <= c["upper"])).sum())
        y_pop = 10 + 5.5 + rng.normal(0, 2.0, n_sub) + rng.normal(0, 1.0, n_sub)
        p = fit.predict(new, re_form=None, interval="prediction")
        hits_p += int(((p["lower"] <= y_pop) & (y_pop <= p["upper"])).sum())
        total += n_sub
    assert abs(hits_c / total - 0.95) < 0.02, hits_c / total
    assert abs(hits_p / total - 0.95) < 0.02, hits_p / total
