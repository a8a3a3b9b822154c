"""Simulate responses from a fitted mixture (lme4's ``simulate.merMod`` for MEMoE / MoE fits).

Each simulated data set keeps the fit's design: the same subjects with their baseline (gating)
covariates, the same visits, times and time-varying covariates; only the latent classes, the random
effects and the residuals are drawn anew, from the fitted gate and experts:

* ``z_i ~ Categorical(softmax(W_i gamma'))`` (the fitted prior class probabilities of subject i);
* ``u_i ~ N(0, G_{z_i})`` with ``G_k = L_k L_k'`` (no random effects for MoE experts);
* ``y_ij = X_ij beta_{z_i} + Z_ij u_i + sigma_{z_i} e_ij``, ``e_ij ~ N(0, 1)``.

This is the null model of the parametric bootstrap LRT (:func:`memoe.moe.bootstrap.bootstrap_lrt`).
All draws are batched over subjects and rows (no loop over subjects).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import softmax

from memoe.core.arguments import check_bool, check_int, check_seed

__all__ = ["simulate", "simulate_response"]


def simulate_response(model, params, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One simulated response vector from a mixture model at given parameters.

    Parameters
    ----------
    model : MEMoE or MoE
        The model (its design: ``mdesign.design.X`` (n, p), ``mdesign.Z`` (n, q), ``mdesign.W`` (N, r),
        ``mdesign.codes`` (n,)).
    params : MoEParams
        ``gamma`` (K, r), ``beta`` (K, p), ``L`` (K, q, q), ``sigma`` (K,).
    rng : numpy.random.Generator

    Returns
    -------
    y : numpy.ndarray, shape (n,)
        Simulated responses of the model's rows (in the order of ``mdesign.data``).
    z : numpy.ndarray of int, shape (N,)
        The drawn classes, 0-based, one per subject (in the order of ``mdesign.subjects``).
    """
    md = model.mdesign
    X, Z, W, codes = md.design.X, md.Z, md.W, np.asarray(md.codes)
    gamma, beta, L, sigma = (np.asarray(a, dtype=float) for a in (params.gamma, params.beta, params.L, params.sigma))
    K, N, q = beta.shape[0], W.shape[0], Z.shape[1]
    prob = softmax(W @ gamma.T, axis=1)  # (N, K) prior class probabilities
    # inverse-cdf draw of every subject's class at once; the minimum guards against cumsum rounding below 1
    z = np.minimum((rng.uniform(size=N)[:, None] > np.cumsum(prob, axis=1)).sum(axis=1), K - 1)
    zr = z[codes]
    y = np.einsum("np,np->n", X, beta[zr]) if X.shape[1] else np.zeros(len(codes))
    if q:
        u = np.einsum("nab,nb->na", L[z], rng.standard_normal((N, q)))  # (N, q), u_i ~ N(0, L_k L_k')
        y = y + np.einsum("nq,nq->n", Z, u[codes])
    expert = getattr(getattr(model, "problem", None), "expert", None)
    if hasattr(expert, "simulate_residuals"):  # class-specific residual structures (memoe.moe.structured)
        return y + expert.simulate_residuals(params, z, rng), z
    y = y + sigma[zr] * rng.standard_normal(len(codes))
    return y, z


def simulate(fit, nsim: int = 1, seed=None, classes: bool = False):
    """Simulate responses from a fitted MEMoE / MoE (same subjects, covariates and visits).

    Parameters
    ----------
    fit : MEMoEResult
    nsim : int, default 1
        Number of simulated response vectors.
    seed : int >= 0, numpy.random.SeedSequence or Generator, optional
        Makes the draws reproducible.
    classes : bool, default False
        Also return the drawn latent classes.

    Returns
    -------
    pandas.DataFrame
        Columns ``sim_1 .. sim_nsim``, one row per row used by the fit (index of the fit's data).
    pandas.DataFrame, optional
        With ``classes=True``: the drawn classes (1-based experts), subjects x ``sim_1 .. sim_nsim``.

    Examples
    --------
    >>> import memoe
    >>> df, _ = memoe.simulate.memoe_data(100, k=2, seed=1)
    >>> fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df).fit(n_starts=2, seed=1)
    >>> fit.simulate(3, seed=1).shape == (len(df), 3)
    True

    Notes
    -----
    R: ``simulate(fit, nsim, seed)`` (lme4's ``simulate.merMod`` with ``re.form = NA``: new random
    effects), extended by a new draw of each subject's class from the fitted gate.
    """
    nsim = check_int(nsim, "nsim", minimum=1)
    seed = check_seed(seed)
    classes = check_bool(classes, "classes")
    rng = np.random.default_rng(seed)
    model = fit.model
    md = model.mdesign
    cols = [f"sim_{j + 1}" for j in range(nsim)]
    ys, zs = [], []
    for _ in range(nsim):
        y, z = simulate_response(model, fit.estimates, rng)
        ys.append(y)
        zs.append(z + 1)
    out = pd.DataFrame(np.column_stack(ys), index=md.data.index, columns=cols)
    if not classes:
        return out
    return out, pd.DataFrame(np.column_stack(zs), index=md.subjects, columns=cols)
