"""Nested grouping levels in ``lme``: the batched objective against the dense marginal model, and refusals.

Oracle: with three nested levels (school / class / student), AR(1) within the innermost groups and
a variance function, the profiled (RE)ML criterion must equal the one computed from the full dense
N x N marginal covariance ``W = sum_q Z_q (I kron D_q) Z_q' + S C S`` (C block-diagonal over the
students, visits in data order), and the BLUPs and their conditional SDs must equal
``D_q Z_q' W^-1 (y - X beta)`` and ``D_q - D_q Z_q' W^-1 Z_q D_q`` (beta known), on shuffled rows.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design.newdata import PredictArgumentError
from memoe.errors import ArgumentError, FormulaError, MemoeError
from memoe.marginal import AR1, VarIdent, lme

FORMULA = "y ~ t + (t | school) + (1 | school:cls) + (1 | school:cls:stu)"


@cache
def _data() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    for s in range(7):
        for c in range(int(rng.integers(1, 4))):
            for k in range(int(rng.integers(1, 3))):
                for v in range(int(rng.integers(1, 5))):
                    rows.append((f"s{s}", f"c{c}", f"k{k}", float(v), ["a", "b"][int(rng.integers(2))]))
    df = pd.DataFrame(rows, columns=["school", "cls", "stu", "t", "g"])
    n = len(df)
    sch = pd.factorize(df["school"])[0]
    cl = pd.factorize(df["school"] + df["cls"])[0]
    st = pd.factorize(df["school"] + df["cls"] + df["stu"])[0]
    df["y"] = (
        1.0 + 0.4 * df["t"] + rng.normal(size=sch.max() + 1)[sch] + 0.3 * rng.normal(size=sch.max() + 1)[sch] * df["t"]
        + 0.8 * rng.normal(size=cl.max() + 1)[cl] + 0.5 * rng.normal(size=st.max() + 1)[st] + rng.normal(size=n)
    )
    # shuffled rows: nothing may depend on the data being sorted by group
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


def _dense(model, params: np.ndarray, reml: bool):
    """(deviance, beta, [b_q], [condsd_q / sigma]) from the dense N x N marginal covariance."""
    P = model.problem
    theta, u, v = P.split(params)
    N, p = P.N, P.p
    W = np.zeros((N, N))
    for lv, lam in zip(P.levels, P.level_factors(theta), strict=True):
        D = lam @ lam.T
        same = lv.codes[:, None] == lv.codes[None, :]
        W += same * (lv.Z @ D @ lv.Z.T)
    s = P.ratios(v)
    C = np.eye(N)
    if P.cor is not None:
        phi = np.tanh(u[0] / 2.0)
        inner = P.levels[-1].codes
        pos = np.zeros(N)
        for g in np.unique(inner):
            idx = np.flatnonzero(inner == g)  # data order within the innermost group
            pos[idx] = np.arange(len(idx))
        same = inner[:, None] == inner[None, :]
        C = np.where(same, phi ** np.abs(pos[:, None] - pos[None, :]), 0.0)
    W += s[:, None] * C * s[None, :]
    Wi = np.linalg.inv(W)
    X, y = P.X, P.y
    A = X.T @ Wi @ X
    beta = np.linalg.solve(A, X.T @ Wi @ y)
    r = y - X @ beta
    rss = float(r @ Wi @ r)
    logdet = np.linalg.slogdet(W)[1]
    if reml:
        nr = N - p
        dev = logdet + np.linalg.slogdet(A)[1] + nr * (1 + np.log(2 * np.pi * rss / nr))
    else:
        dev = logdet + N * (1 + np.log(2 * np.pi * rss / N))
    bs, sds = [], []
    for lv, lam in zip(P.levels, P.level_factors(theta), strict=True):
        D = lam @ lam.T
        b = np.zeros((lv.nlevels, lv.q))
        sd = np.zeros((lv.nlevels, lv.q))
        for j in range(lv.nlevels):
            Zj = np.where((lv.codes == j)[:, None], lv.Z, 0.0)
            b[j] = D @ Zj.T @ Wi @ r
            sd[j] = np.sqrt(np.clip(np.diag(D - D @ Zj.T @ Wi @ Zj @ D), 0.0, None))
        bs.append(b)
        sds.append(sd)
    return dev, beta, bs, sds


def _params(model) -> np.ndarray:
    rng = np.random.default_rng(5)
    P = model.problem
    theta = P.theta_map.initial() * rng.uniform(0.5, 1.5, P.n_theta) + np.where(
        P.theta_map.is_diagonal, 0.0, 0.2
    )
    return np.concatenate([theta, rng.uniform(-0.8, 0.8, P.n_cor), rng.uniform(-0.3, 0.3, P.n_var)])


@pytest.mark.parametrize("structures", ["none", "ar1", "ar1+varident"])
@pytest.mark.parametrize("reml", [True, False])
def test_objective_blups_condsd_equal_dense_marginal_model(structures, reml):
    kw = {}
    if "ar1" in structures:
        kw["correlation"] = AR1()
    if "varident" in structures:
        kw["weights"] = VarIdent("g")
    m = lme(FORMULA, _data(), **kw)
    assert m.level_names == ["school", "school:cls", "school:cls:stu"]
    x = _params(m)
    dev, beta, bs, sds = _dense(m, x, reml)
    assert m.problem.deviance(x, reml) == pytest.approx(dev, rel=1e-11, abs=1e-9)
    sol = m.problem.solve(x, reml)
    assert sol.deviance == pytest.approx(dev, rel=1e-11, abs=1e-9)
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-9, atol=1e-12)
    for ours, ref in zip(sol.bs, bs, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-8, atol=1e-10 * np.max(np.abs(ref)))
    # conditional SDs of the result (at its optimum): against the dense formula there
    fit = m.fit(reml=reml)
    _, _, _, sds = _dense(m, fit.params_unconstrained, reml)
    for grp, ref in zip(fit.level_names, sds, strict=True):
        np.testing.assert_allclose(fit.ranef_condsd[grp].to_numpy(), fit.sigma * ref, rtol=1e-8, atol=1e-12)


def test_fitted_levels_add_blups_level_by_level():
    fit = lme(FORMULA, _data()).fit()
    fl = fit.fitted_levels
    d = fit.design
    eta = fit.fitted_marginal.to_numpy().copy()
    np.testing.assert_allclose(fl["fixed"], eta)
    for grp in fit.level_names:
        blk = next(b for b in d.blocks if b.factor.name == grp)
        eta = eta + np.einsum("nq,nq->n", blk.Z, fit.ranef[grp].to_numpy()[blk.factor.codes])
        np.testing.assert_allclose(fl[grp], eta, rtol=1e-12)
        k = fit.level_names.index(grp) + 1
        np.testing.assert_allclose(fit.predict(level=k), eta, rtol=1e-12)
        np.testing.assert_allclose(fit.predict(_data(), level=k), eta, rtol=1e-12)
    np.testing.assert_array_equal(fl.iloc[:, -1], fit.fitted)


def test_slash_and_interaction_spellings_fit_the_same_model():
    a = lme("y ~ t + (t | school) + (1 | school/cls)", _data()).fit()
    b = lme("y ~ t + (t | school) + (1 | school:cls)", _data()).fit()
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    assert a.level_names == ["school", "cls:school"]  # lme4's name of the slash term


def test_nesting_is_detected_from_the_data():
    """An inner factor whose labels are already unique per outer group needs no interaction."""
    df = _data().assign(cls_id=lambda d: d["school"] + "-" + d["cls"])
    a = lme("y ~ t + (1 | school) + (1 | cls_id)", df).fit()
    b = lme("y ~ t + (1 | school) + (1 | school:cls)", df).fit()
    assert a.level_names == ["school", "cls_id"]
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)


def test_crossed_factors_are_refused_with_a_pointer_to_lmm():
    with pytest.raises(FormulaError, match=r"is not nested in.*memoe\.lmm for crossed designs") as exc:
        lme("y ~ t + (1 | school) + (1 | cls)", _data())
    assert "(1 | school:cls)" in str(exc.value)


def test_correlation_group_must_be_the_innermost_factor():
    with pytest.raises(FormulaError, match="innermost random-effects grouping factor 'school:cls'"):
        lme("y ~ t + (1 | school) + (1 | school:cls)", _data(), correlation=AR1(group="school"))
    fit = lme("y ~ t + (1 | school) + (1 | school:cls)", _data(), correlation=AR1(group="school:cls"))
    assert fit.problem.cor is not None


def test_level_arguments_and_unavailable_pieces_are_refused():
    fit = lme("y ~ t + (t | school) + (1 | school:cls)", _data()).fit()
    nd = _data().head(4)
    with pytest.raises(PredictArgumentError, match=r"level must be 0 \(population\) to 2"):
        fit.predict(nd, level=3)
    with pytest.raises(PredictArgumentError, match="either level="):
        fit.predict(nd, level=1, re_form=None)
    # an inner group not in the fit: refused, or its prior variance with allow_new_levels
    with pytest.raises(MemoeError, match="c9"):
        fit.predict(nd.assign(cls="c9"), interval="confidence")
    new = fit.predict(nd.assign(cls="c9"), interval="confidence", allow_new_levels=True)
    np.testing.assert_allclose(new["fit"], fit.predict(nd, level=1), rtol=1e-12)
    ci = fit.predict(nd, level=0, interval="confidence")
    assert np.all(ci["lower"] < ci["fit"])
    with pytest.raises(ArgumentError, match="ranef_covs"):
        _ = fit.ranef_cov
    with pytest.raises(MemoeError, match="nested levels"):
        fit.predict_subject(nd, [5.0])


def test_single_level_outputs_unchanged():
    df = memoe.datasets.load("sleepstudy")
    fit = lme("Reaction ~ Days + (Days | Subject)", df).fit()
    assert not fit.nested and fit.level_names == ["Subject"]
    assert list(fit.ranef) == ["Subject"] and list(fit.ngroups.index) == ["Subject"]
    assert fit.ranef_cov.shape == (2, 2)
    pd.testing.assert_frame_equal(fit.ranef_cov, fit.ranef_covs["Subject"])
    assert list(fit.intervals().index.get_level_values(0).unique()) == ["fixed", "reStruct", "sigma"]
    np.testing.assert_array_equal(fit.predict(level=1), fit.fitted)


def test_summary_names_each_level_as_nlme():
    text = str(lme(FORMULA, _data(), correlation=AR1()).fit().summary())
    assert " Formula: ~1 + t | school" in text
    assert " Formula: ~1 | cls %in% school" in text
    assert " Formula: ~1 | stu %in% cls %in% school" in text
    assert " Formula: ~1 | school/cls/stu" in text
    assert "Number of Groups: \nschool cls %in% school stu %in% cls %in% school" in text


def test_tidy_and_varcorr_have_one_group_per_level():
    # random intercepts only: no correlation at +-1 (a boundary fit has no Wald interval)
    fit = lme("y ~ t + (1 | school) + (1 | school:cls) + (1 | school:cls:stu)", _data()).fit()
    vc = fit.varcorr
    assert list(dict.fromkeys(vc["grp"])) == [*fit.level_names, "Residual"]
    rp = fit.tidy(conf_int=True)
    rp = rp[rp["effect"] == "ran_pars"]
    assert list(dict.fromkeys(rp["group"])) == [*fit.level_names, "Residual"]
    sd = rp[rp["term"] == "sd__(Intercept)"]
    assert np.all(sd["conf_low"].to_numpy() < sd["estimate"].to_numpy())
    assert np.all(np.isfinite(sd["std_error"].to_numpy()))


def test_save_load_with_the_innermost_group_named(tmp_path):
    fit = lme("y ~ t + (1 | school) + (1 | school:cls)", _data(), correlation=AR1(group="school:cls")).fit()
    fit.save(tmp_path / "f.memoe")
    back = memoe.load(tmp_path / "f.memoe")
    assert back.loglik == pytest.approx(fit.loglik, abs=1e-10)
    assert back.model.correlation == fit.model.correlation
    np.testing.assert_allclose(back.fitted_levels.to_numpy(), fit.fitted_levels.to_numpy(), rtol=1e-10)


@pytest.mark.parametrize("kw", [{}, {"correlation": AR1()}, {"correlation": AR1(), "weights": VarIdent("g")}])
def test_pattern_path_equals_per_group_path(kw):
    """Many outer groups of few shapes (a balanced design) take the per-pattern path, also with AR(1)
    within the innermost groups; its criterion equals the per-group one (and the dense one)."""
    rng = np.random.default_rng(4)
    G = 60
    rows = []
    for s in range(G):
        for c in range(1 + s % 2):
            for v in range(3):
                rows.append((s, c, float(v), "ab"[(s + v) % 2]))
    df = pd.DataFrame(rows, columns=["school", "cls", "t", "g"])
    df["y"] = rng.normal(size=len(df)) + rng.normal(size=G)[df["school"]] + df["t"]
    m = lme("y ~ t + (t | school) + (1 | school:cls)", df, **kw)
    P = m.problem
    assert P._patterns is not None
    x = _params(m)
    for reml in (True, False):
        _, XYt, logdet = P._whiten(x)
        per_group = P._criterion(P._reduce(XYt), logdet, reml)
        assert P.deviance(x, reml) == pytest.approx(per_group, rel=1e-11)
        assert P.deviance(x, reml) == pytest.approx(_dense(m, x, reml)[0], rel=1e-11)


def _dense_pev(fit) -> np.ndarray:
    """sigma^2 [z'(G - G Z'W^-1 Z G) z] + a' V_beta a, a = x - X'W^-1 Z G z, for the fit's own rows
    (all random effects of every level in one dense Z and block-diagonal G)."""
    P = fit.model.problem
    theta, _, _ = P.split(fit.params_unconstrained)
    Zs, Gs = [], []
    for lv, lam in zip(P.levels, P.level_factors(theta), strict=True):
        Zf = np.zeros((P.N, lv.nlevels * lv.q))
        for j in range(lv.q):
            Zf[np.arange(P.N), lv.codes * lv.q + j] = lv.Z[:, j]
        Zs.append(Zf)
        Gs.append(np.kron(np.eye(lv.nlevels), lam @ lam.T))
    Z = np.hstack(Zs)
    G = np.zeros((Z.shape[1], Z.shape[1]))
    o = 0
    for g in Gs:
        G[o : o + len(g), o : o + len(g)] = g
        o += len(g)
    W = np.zeros((P.N, P.N))
    for b, Wk in zip(P.layout.buckets, P.covariances(fit.params_unconstrained), strict=True):
        for gi in range(b.size):
            W[np.ix_(b.rows[gi], b.rows[gi])] = Wk[gi]
    Wi = np.linalg.inv(W)
    S = G - G @ Z.T @ Wi @ Z @ G
    A = P.X - (P.X.T @ Wi @ Z @ G @ Z.T).T
    Vb = fit.vcov().to_numpy()
    return fit.sigma**2 * np.einsum("ni,ij,nj->n", Z, S, Z) + np.einsum("ni,ij,nj->n", A, Vb, A)


@pytest.mark.parametrize("kw", [{}, {"correlation": AR1()}])
def test_conditional_intervals_have_the_dense_prediction_error_variance(kw):
    """predict(interval=...) with the BLUPs of all nested levels: the exact prediction-error variance,
    cross terms between a group's BLUPs and those of the groups containing it included."""
    fit = lme("y ~ t + (t | school) + (1 | school:cls) + (1 | school:cls:stu)", _data(), **kw).fit()
    ci = fit.predict(interval="confidence")
    np.testing.assert_allclose(ci["se_fit"].to_numpy() ** 2, _dense_pev(fit), rtol=1e-8)
    pi = fit.predict(interval="prediction")
    np.testing.assert_allclose(pi["fit"], fit.fitted, rtol=1e-12)
    assert np.all(pi["upper"] - pi["lower"] > ci["upper"] - ci["lower"])
    # an intermediate level: the left-out level's variance enters the prediction interval only
    mid = fit.predict(_data(), interval="confidence", level=2)
    np.testing.assert_allclose(mid["fit"], fit.predict(_data(), level=2), rtol=1e-12)


def test_conditional_intervals_equal_lmm_at_the_same_theta():
    from memoe.marginal.result import MarginalResult

    formula = "y ~ t + (t | school) + (1 | school:cls)"
    lfit = memoe.lmm(formula, _data()).fit()
    m = lme(formula, _data())
    sol = m.problem.solve(np.asarray(lfit.theta, dtype=float), True)
    fit = MarginalResult(m, sol, reml=True, feval=0, seconds=0.0, messages=[])
    nd = _data().head(9)
    for iv in ("confidence", "prediction"):
        for re_form in ("full", "~ (t | school)"):
            a, b = fit.predict(nd, interval=iv, re_form=re_form), lfit.predict(nd, interval=iv, re_form=re_form)
            np.testing.assert_allclose(a["se_fit"], b["se_fit"], rtol=1e-7)
            np.testing.assert_allclose(a["upper"], b["upper"], rtol=1e-9)


def test_interval_refuses_an_inner_group_moved_to_another_outer_group():
    df = _data().assign(cls_id=lambda d: d["school"] + "-" + d["cls"])
    fit = lme("y ~ t + (1 | school) + (1 | cls_id)", df).fit()
    row = df.head(1).copy()
    other = next(s for s in df["school"].unique() if s != row["school"].iloc[0])
    with pytest.raises(memoe.errors.DataError, match="lies in another 'school' group"):
        fit.predict(row.assign(school=other), interval="confidence")
