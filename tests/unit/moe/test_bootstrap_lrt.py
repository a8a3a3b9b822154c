"""memoe.bootstrap_lrt: parametric bootstrap LRT for K against K + 1 experts (McLachlan 1987)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, ArgumentTypeError, MemoeWarning, ModelComparisonError

F = "y ~ time + (1 | id)"
G = "~ w"


def mixture_data(n: int, seed: int, k: int = 1, shift: float = 3.0) -> pd.DataFrame:
    """Random-intercept trajectories, 5 visits; with k = 2 half the subjects are shifted up by ``shift``."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n), 5)
    t = np.tile(np.arange(5, dtype=float), n)
    w = rng.normal(size=n)
    z = (rng.uniform(size=n) < 0.5).astype(int) if k == 2 else np.zeros(n, dtype=int)
    y = 1.0 + 0.5 * t + shift * z[ids] + rng.normal(0, 1.0, n)[ids] + rng.normal(0, 1.0, len(ids))
    return pd.DataFrame({"id": ids, "time": t, "w": w[ids], "y": y})


def fits(df: pd.DataFrame, formula: str = F, gating: str | None = G):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = memoe.MEMoE(formula, gating=gating, k=1, data=df).fit(progress=False, se=False)
        f2 = memoe.MEMoE(formula, gating=gating, k=2, data=df).fit(n_starts=3, seed=1, progress=False, se=False,
                                                                    previous=f1)
    return f1, f2


@pytest.fixture(scope="module")
def h0():
    df = mixture_data(40, seed=2)
    return (df, *fits(df))


def test_result_and_p_value_definition(h0):
    _, f1, f2 = h0
    r = memoe.bootstrap_lrt(f1, f2, nsim=3, seed=4, n_jobs=1, n_starts=2)
    assert r.statistic == pytest.approx(2 * (f2.loglik - f1.loglik), rel=1e-12)
    t_star = r.replicates["statistic"].to_numpy()
    assert np.allclose(t_star, 2 * (r.replicates["loglik_large"] - r.replicates["loglik_small"]))
    assert r.p_value == pytest.approx((1 + np.sum(t_star >= r.statistic)) / (3 + 1))
    assert r.nsim == 3 and r.n_failed == 0 and len(r.null) == 3 and (r.k_small, r.k_large) == (1, 2)
    # nested models refitted from the smaller fit's splits: the larger fit is not below the smaller one
    assert np.all(t_star > -1e-6)
    text = r.summary()
    assert "McLachlan 1987" in text and "H0: k = 1" in text and "bootstrap p-value" in text
    assert repr(r).startswith("BootstrapLRT(k 1 vs 2")


def test_deterministic_given_seed_regardless_of_n_jobs(h0):
    _, f1, f2 = h0
    a = memoe.bootstrap_lrt(f1, f2, nsim=4, seed=11, n_jobs=1, n_starts=2, chunksize=1)
    b = memoe.bootstrap_lrt(f1, f2, nsim=4, seed=11, n_jobs=2, n_starts=2)
    pd.testing.assert_frame_equal(a.replicates, b.replicates)
    c = memoe.bootstrap_lrt(f1, f2, nsim=4, seed=12, n_jobs=1, n_starts=2)
    assert not np.allclose(a.replicates.to_numpy(), c.replicates.to_numpy())


def test_lmm_as_the_one_expert_model(h0):
    df, _f1, f2 = h0
    lmm_ml = memoe.lmm(F, df).fit(reml=False)
    r = memoe.bootstrap_lrt(lmm_ml, f2, nsim=2, seed=3, n_jobs=1, n_starts=2)
    # the LMM's ML logLik is the K = 1 MEMoE's (optimisers agree to ~1e-8 here)
    assert r.loglik_small == pytest.approx(lmm_ml.loglik, abs=1e-5)
    assert r.statistic == pytest.approx(2 * (f2.loglik - lmm_ml.loglik), abs=2e-5)
    assert any("one-expert mixture" in n for n in r.notes)
    lmm_reml = memoe.lmm(F, df).fit()
    with pytest.warns(MemoeWarning, match="refitting"):
        r2 = memoe.bootstrap_lrt(lmm_reml, f2, nsim=1, seed=3, n_jobs=1, n_starts=2)
    assert r2.loglik_small == pytest.approx(r.loglik_small, abs=1e-5)


def test_transformed_response_is_simulated_on_the_model_scale():
    df = mixture_data(30, seed=7)
    df["y"] = np.exp(df["y"] / 4)
    f1, f2 = fits(df, "np.log(y) ~ time + (1 | id)")
    r = memoe.bootstrap_lrt(f1, f2, nsim=2, seed=1, n_jobs=1, n_starts=2)
    assert r.n_failed == 0 and np.all(np.isfinite(r.null))


def test_refuses_what_is_not_k_against_more_experts(h0):
    df, f1, f2 = h0
    with pytest.raises(ModelComparisonError, match="fewer experts"):
        memoe.bootstrap_lrt(f2, f1, nsim=1)
    with pytest.raises(ModelComparisonError, match="fit_large must be a MEMoE"):
        memoe.bootstrap_lrt(f1, memoe.lmm(F, df).fit(reml=False), nsim=1)
    other = memoe.lmm("y ~ 1 + (1 | id)", df).fit(reml=False)
    with pytest.raises(ModelComparisonError, match="not the one-expert version"):
        memoe.bootstrap_lrt(other, f2, nsim=1)
    sub = df[df["id"] < 30]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1_sub = memoe.MEMoE(F, gating=G, k=1, data=sub).fit(progress=False, se=False)
        f2_nogate = memoe.MEMoE(F, gating=None, k=2, data=df).fit(n_starts=2, seed=1, progress=False, se=False)
        f3 = memoe.MEMoE(F, gating=G, k=3, data=df).fit(n_starts=2, seed=1, progress=False, se=False)
    with pytest.raises(ModelComparisonError, match="different data"):
        memoe.bootstrap_lrt(f1_sub, f2, nsim=1)
    with pytest.raises(ModelComparisonError, match="differ in gating"):
        memoe.bootstrap_lrt(f2_nogate, f3, nsim=1)
    with pytest.raises(ModelComparisonError, match="MoE"):
        moe = memoe.MoE("y ~ time", gating=G, k=2, data=df, group="id").fit(n_starts=2, seed=1, progress=False)
        memoe.bootstrap_lrt(f1, moe, nsim=1)


def test_refuses_bad_arguments(h0):
    _, f1, f2 = h0
    with pytest.raises(ArgumentError, match="nsim"):
        memoe.bootstrap_lrt(f1, f2, nsim=0)
    with pytest.raises(ArgumentTypeError, match="SeedSequence"):
        memoe.bootstrap_lrt(f1, f2, nsim=1, seed=np.random.default_rng(1))
    with pytest.raises(ArgumentError, match="n_jobs"):
        memoe.bootstrap_lrt(f1, f2, nsim=1, n_jobs=0)
    with pytest.raises(ArgumentTypeError, match="control"):
        memoe.bootstrap_lrt(f1, f2, nsim=1, control={"n_polish": 1})


@pytest.mark.slow
def test_nominal_size_under_k_and_power_under_k_plus_1():
    """Under K = 1 the bootstrap p-value is (discrete) uniform; under K = 2 (separated classes) it is minimal.

    With nsim = 9 the p-value takes the values 0.1, 0.2, ..., 1 with probability 0.1 each under H0 (T and the
    T* are exchangeable). 10 data sets: #{p <= 0.1} ~ Binomial(10, 0.1), P(> 4) = 0.0016; mean p has mean
    0.55 and SD 0.091, so [0.25, 0.85] is +-3.3 SD. Latent-class models (no gate) keep the refits fast.
    """
    p0 = []
    for s in range(10):
        f1, f2 = fits(mixture_data(30, seed=100 + s), gating=None)
        p0.append(memoe.bootstrap_lrt(f1, f2, nsim=9, seed=s, n_starts=2).p_value)
    p0 = np.array(p0)
    assert np.sum(p0 <= 0.1 + 1e-12) <= 4, p0
    assert 0.25 <= p0.mean() <= 0.85, p0
    for s in range(2):
        # classes 6 residual SDs apart: the random intercept cannot absorb them
        f1, f2 = fits(mixture_data(30, seed=200 + s, k=2, shift=6.0), gating=None)
        r = memoe.bootstrap_lrt(f1, f2, nsim=9, seed=s, n_starts=2)
        assert r.p_value == pytest.approx(0.1), r.summary()  # T above every T*
