"""Simulate longitudinal data from a Mixed-Effects Mixture of Experts with known truth.

The model matches ``memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=K)``:

* gating: ``P(z_i = k | w_i) = softmax_k(g_k0 + g_k1 w1_i + g_k2 w2_i)``, expert 1 the reference;
* expert k: ``y_ij = b_k0 + b_k1 time_ij + b_k2 x_ij + u_i0 + u_i1 time_ij + e_ij``,
  ``(u_i0, u_i1) ~ N(0, G_k)`` (or a scaled multivariate t with the same covariance),
  ``e_ij ~ N(0, sigma_k^2)``;
* ``w1_i ~ N(0, 1)``, ``w2_i ~ Bernoulli(0.5)``, visit times sorted ``Uniform(time_range)`` draws
  (irregular), ``x_ij = x_w1 * w1_i + N(0, 1)`` (time-varying, correlated with the gate).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import softmax

__all__ = ["DEFAULTS", "memoe_data"]

#: default true parameters per K (K = 2 is the ``memoe_sim2`` reference case)
DEFAULTS: dict[int, dict[str, list]] = {
    1: {"beta": [[10.0, 1.0, 0.5]], "gamma": [[0.0, 0.0, 0.0]], "sd": [[1.2, 0.4]], "corr": [0.1], "sigma": [0.8]},
    2: {
        "beta": [[10.0, 1.0, 0.5], [12.0, 0.0, 1.5]],
        "gamma": [[0.0, 0.0, 0.0], [-0.2, 1.0, 0.7]],
        "sd": [[1.2, 0.4], [1.0, 0.3]],
        "corr": [0.1, -0.2],
        "sigma": [0.8, 1.0],
    },
    3: {
        "beta": [[10.0, 1.0, 0.5], [12.0, 0.0, 1.5], [8.0, -0.8, 1.0]],
        "gamma": [[0.0, 0.0, 0.0], [-0.2, 1.0, 0.7], [0.3, -0.8, 0.5]],
        "sd": [[1.2, 0.4], [1.0, 0.3], [0.8, 0.25]],
        "corr": [0.1, -0.2, 0.0],
        "sigma": [0.8, 1.0, 0.6],
    },
}


def _cov(sd: list[float], corr: float) -> np.ndarray:
    s0, s1 = sd
    return np.array([[s0 * s0, corr * s0 * s1], [corr * s0 * s1, s1 * s1]])


def memoe_data(
    n_subjects: int = 300,
    k: int = 2,
    *,
    beta: list[list[float]] | None = None,
    gamma: list[list[float]] | None = None,
    sd: list[list[float]] | None = None,
    corr: list[float] | None = None,
    sigma: list[float] | None = None,
    visits: tuple[int, int] = (4, 8),
    time_range: tuple[float, float] = (0.0, 4.0),
    x_w1: float = 0.4,
    re_dist: str = "normal",
    t_df: float = 3.0,
    seed: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Draw a data set from a MEMoE with known parameters.

    Parameters
    ----------
    n_subjects : int
    k : int
        Number of experts; unspecified parameters come from :data:`DEFAULTS` (K <= 3).
    beta : list of K lists [intercept, time, x], optional
    gamma : list of K lists [intercept, w1, w2], optional
        Gating coefficients; the first row must be zero (reference expert).
    sd : list of K pairs [sd intercept, sd slope], optional
    corr : list of K floats, optional
        Random intercept-slope correlations.
    sigma : list of K floats, optional
    visits : (int, int)
        Visits per subject drawn uniformly from ``visits[0]..visits[1]``.
    time_range : (float, float)
    x_w1 : float
        Dependence of the time-varying covariate x on the gating covariate w1.
    re_dist : {"normal", "t"}
        ``"t"``: multivariate t random effects with ``t_df`` degrees of freedom, scaled to the same
        covariance ``G_k`` (a misspecified scenario for the Gaussian model).
    t_df : float
        Must exceed 2 for ``"t"``.
    seed : int, optional

    Returns
    -------
    data : pandas.DataFrame
        Columns ``id, time, x, w1, w2, y, true_class`` (true_class in 1..K), rows sorted by subject
        and time.
    truth : dict
        ``K``, ``beta`` (K x 3), ``gamma`` (K x 3), ``G`` (K x 2 x 2), ``sd``, ``corr``, ``sigma``,
        ``names`` of the coefficients, ``true_class`` per subject, ``re_dist``.

    Examples
    --------
    >>> import memoe
    >>> df, truth = memoe.simulate.memoe_data(100, k=2, seed=1)
    >>> df.columns.tolist()
    ['id', 'time', 'x', 'w1', 'w2', 'y', 'true_class']
    >>> truth["K"]
    2
    """
    if k not in DEFAULTS and any(v is None for v in (beta, gamma, sd, corr, sigma)):
        raise ValueError(f"no default parameters for k={k}; give beta, gamma, sd, corr and sigma")
    d = DEFAULTS.get(k, {})
    B = np.asarray(beta if beta is not None else d["beta"], dtype=float)
    Gm = np.asarray(gamma if gamma is not None else d["gamma"], dtype=float)
    SD = np.asarray(sd if sd is not None else d["sd"], dtype=float)
    R = np.asarray(corr if corr is not None else d["corr"], dtype=float)
    S = np.asarray(sigma if sigma is not None else d["sigma"], dtype=float)
    if B.shape != (k, 3) or Gm.shape != (k, 3) or SD.shape != (k, 2) or R.shape != (k,) or S.shape != (k,):
        raise ValueError("parameter shapes must be beta (K,3), gamma (K,3), sd (K,2), corr (K,), sigma (K,)")
    if np.any(Gm[0] != 0):
        raise ValueError("gamma[0] must be zero (expert 1 is the reference)")
    if re_dist not in ("normal", "t") or (re_dist == "t" and t_df <= 2):
        raise ValueError("re_dist must be 'normal' or 't' (with t_df > 2)")
    rng = np.random.default_rng(seed)
    N = int(n_subjects)
    G = np.stack([_cov(SD[j], R[j]) for j in range(k)])
    chol = np.linalg.cholesky(G)
    w1 = rng.normal(0.0, 1.0, N)
    w2 = rng.binomial(1, 0.5, N).astype(float)
    Wm = np.column_stack([np.ones(N), w1, w2])
    prob = softmax(Wm @ Gm.T, axis=1)
    z = np.minimum((rng.uniform(size=N)[:, None] > np.cumsum(prob, axis=1)).sum(axis=1), k - 1)
    n_i = rng.integers(visits[0], visits[1] + 1, size=N)
    ids = np.repeat(np.arange(N), n_i)
    n = len(ids)
    time = rng.uniform(time_range[0], time_range[1], n)
    order = np.lexsort((time, ids))
    time = time[order]
    x = x_w1 * w1[ids] + rng.normal(0.0, 1.0, n)
    u = np.einsum("nab,nb->na", chol[z], rng.standard_normal((N, 2)))
    if re_dist == "t":
        scale = np.sqrt((t_df - 2.0) / rng.chisquare(t_df, N))
        u = u * scale[:, None]
    zr = z[ids]
    e = S[zr] * rng.standard_normal(n)
    y = B[zr, 0] + B[zr, 1] * time + B[zr, 2] * x + u[ids, 0] + u[ids, 1] * time + e
    data = pd.DataFrame(
        {"id": ids + 1, "time": time, "x": x, "w1": w1[ids], "w2": w2[ids], "y": y, "true_class": zr + 1}
    )
    truth = {
        "K": k,
        "names": {"fixed": ["(Intercept)", "time", "x"], "gating": ["(Intercept)", "w1", "w2"]},
        "beta": B.tolist(),
        "gamma": Gm.tolist(),
        "G": G.tolist(),
        "sd": SD.tolist(),
        "corr": R.tolist(),
        "sigma": S.tolist(),
        "true_class": (z + 1).tolist(),
        "re_dist": re_dist,
        "formula": "y ~ time + x + (time | id)",
        "gating": "~ w1 + w2",
        "seed": seed,
    }
    return data, truth
