"""fit.simulate: responses from the fitted gate and experts on the fit's own design."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from memoe.errors import ArgumentError, ArgumentTypeError


def test_simulate_shape_index_and_reproducibility(sim2_fit, sim2):
    s = sim2_fit.simulate(3, seed=5)
    assert list(s.columns) == ["sim_1", "sim_2", "sim_3"]
    assert s.index.equals(sim2.index)
    assert s.equals(sim2_fit.simulate(3, seed=5))
    assert not s.equals(sim2_fit.simulate(3, seed=6))
    _y, z = sim2_fit.simulate(2, seed=5, classes=True)
    assert z.shape == (300, 2) and set(np.unique(z)) <= {1, 2}
    assert z.index.equals(sim2_fit.classify().index)


def test_simulated_moments_match_the_fitted_mixture(sim2_fit):
    """Mean and variance of the simulated responses equal the mixture's, within Monte Carlo error."""
    nsim = 4000
    ys, zs = sim2_fit.simulate(nsim, seed=1, classes=True)
    Y, Z = ys.to_numpy(), zs.to_numpy() - 1
    md, est = sim2_fit.model.mdesign, sim2_fit.estimates
    prior = softmax(md.W @ est.gamma.T, axis=1)  # (N, K)
    # class frequencies per subject: binomial, 5 Monte Carlo SEs
    freq = (Z == 1).mean(axis=1)
    se = np.sqrt(prior[:, 1] * (1 - prior[:, 1]) / nsim)
    assert np.max(np.abs(freq - prior[:, 1]) / se) < 5.5  # 300 subjects: max of 300 |N(0,1)| is < 5.5
    # row means: E y_ij = sum_k pi_ik x_ij' beta_k; Var y_ij = sum_k pi_ik (v_ijk + m_ijk^2) - (E y_ij)^2
    X, Zr, codes = md.design.X, md.Z, md.codes
    m = X @ est.beta.T  # (n, K)
    G = est.G
    v = np.einsum("nq,kqr,nr->nk", Zr, G, Zr) + est.sigma**2  # (n, K)
    pi = prior[codes]
    mean = (pi * m).sum(axis=1)
    var = (pi * (v + m**2)).sum(axis=1) - mean**2
    z_mean = (Y.mean(axis=1) - mean) / np.sqrt(var / nsim)
    assert np.max(np.abs(z_mean)) < 5.5  # 1,827 rows
    # the variance's Monte Carlo SE needs the fourth moment; 4,000 draws give it to ~3% for these mixtures
    assert np.median(np.abs(Y.var(axis=1) / var - 1)) < 0.03


def test_simulate_refuses_bad_arguments(sim2_fit):
    with pytest.raises(ArgumentError, match="nsim"):
        sim2_fit.simulate(0)
    with pytest.raises(ArgumentTypeError, match="seed"):
        sim2_fit.simulate(1, seed="a")
