"""Adaptive Gauss-Hermite quadrature for a GLMM with one scalar random-effects term (lme4's ``nAGQ > 1``).

Notes
-----
With one scalar term the levels are conditionally independent, so the likelihood is a product of
one-dimensional integrals. For level ``j`` with mode ``u0_j`` and ``s_j = 1 / L_jj`` (the
Laplace approximation's conditional SD of ``u_j``), the nodes are ``u_jk = u0_j + s_j z_k``, where
``(z_k, w_k)`` is the Gauss-Hermite rule for the standard normal density (weights sum to 1).
With ``devc_j(u) = sum_{i in j} d_i(u) + u^2`` (unit deviances of the level plus the penalty),

    -2 log L = sum_j [ devc_j(u0_j) + log L_jj^2 - 2 log m_j ],
    m_j = sum_k w_k exp(-(devc_j(u_jk) - devc_j(u0_j)) / 2 + z_k^2 / 2).

As in lme4's ``glmerAGQ`` the unit deviances are used, *without* the family's normalising
constants, so lme4's (and our) AGQ log-likelihood is on a different scale from the Laplace one.
With one node (``z = 0, w = 1``) this is the Laplace deviance without those constants.

:func:`agq_gradient` is its exact gradient in ``(theta, beta)`` with the modes re-found at every point (lme4's
stage 2): the quasi-Newton stage 2 and the derivative check of :class:`memoe.glmm.model.GLMM` use it for the
binomial logit / probit / cloglog and Poisson log families.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.special import expit

from memoe.errors import QuadratureError
from memoe.glmm.families import _THRESH, Binomial, Poisson
from memoe.glmm.pirls import _LOG_EPS, _NONCANONICAL_BOUNDS, PirlsProblem, PirlsState

__all__ = ["QuadratureError", "agq_deviance", "agq_gradient", "check_agq", "gh_rule"]

MAX_NAGQ = 100


@cache
def gh_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights for the standard normal density (lme4's ``GHrule``)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / np.sqrt(2.0 * np.pi)
    z.flags.writeable = False
    w.flags.writeable = False
    return z, w


def check_agq(problem: PirlsProblem, nAGQ: int) -> None:
    """lme4's conditions for ``nAGQ > 1``: one scalar random-effects term.

    Raises
    ------
    QuadratureError
    """
    if int(nAGQ) != nAGQ or nAGQ < 0 or nAGQ > MAX_NAGQ:
        raise QuadratureError(f"nAGQ must be an integer between 0 and {MAX_NAGQ}, got {nAGQ!r}")
    if nAGQ > 1 and (len(problem.qk) != 1 or problem.qk[0] != 1):
        raise QuadratureError(
            "nAGQ > 1 is only available for models with a single, scalar random-effects term "
            f"(this model has {len(problem.qk)} grouping factor(s) with {problem.qk} columns)"
        )


def _canonical(problem: PirlsProblem, eta: np.ndarray) -> str | None:
    """``"logit"`` / ``"log"`` where the unit deviance is ``C_i + 2 wt_i (b(eta_i) - y_i eta_i)`` exactly as
    computed (binomial logit with every ``|eta| <= 30``, Poisson log with no mean at its floor: the links' clamps
    are not reached), else None."""
    fam = problem.family
    if eta.size == 0:
        return None
    if type(fam) is Binomial and fam.link.name == "logit":
        return "logit" if max(float(eta.max()), -float(eta.min())) <= _THRESH else None
    if type(fam) is Poisson and fam.link.name == "log":
        return "log" if float(eta.min()) >= _LOG_EPS else None
    return None


class _LevelSums:
    """Per-level sums of (nodes, rows) arrays -> (nodes, levels), built once per problem and node count.

    Rows sorted by level with every level the same size (balanced longitudinal data): one matrix product of the
    (nodes * levels, rows per level) view with ones; otherwise one ``np.bincount`` over node-offset level codes.
    """

    def __init__(self, problem: PirlsProblem, K: int) -> None:
        self.K, self.l1 = K, problem.nlevels[0]
        sw = problem.single
        self.m = sw.m if sw is not None else None
        if self.m is not None:
            self.ones = np.ones(self.m)
        else:
            codes = problem.codes[0]
            self.idx = (np.arange(K)[:, None] * self.l1 + codes[None, :]).ravel()

    def __call__(self, A: np.ndarray) -> np.ndarray:
        K, l1 = self.K, self.l1
        if self.m is not None:
            return (A.reshape(K * l1, self.m) @ self.ones).reshape(K, l1)
        return np.bincount(self.idx, weights=A.ravel(), minlength=K * l1).reshape(K, l1)


def _level_sums(problem: PirlsProblem, K: int) -> _LevelSums:
    cache = problem.__dict__.setdefault("_agq_sums", {})
    if K not in cache:
        cache[K] = _LevelSums(problem, K)
    return cache[K]


def _agq_core(problem: PirlsProblem, state: PirlsState, theta: np.ndarray, nAGQ: int) -> dict:
    """The quadrature's node quantities at a PIRLS solution: value and what :func:`agq_gradient` reuses.

    Vectorised over nodes x rows (:class:`_LevelSums`). With a canonical link inside its clamps
    (:func:`_canonical`) the deviance differences from the mode need no unit deviances:
    ``d_i(eta) - d_i(eta0) = 2 wt_i (b(eta) - b(eta0) - y_i (eta - eta0))`` (``b`` the cumulant: softplus or exp),
    which costs one ``logaddexp`` / ``exp`` per node and row instead of the family's logarithms.
    """
    z, w = gh_rule(int(nAGQ))
    fam = problem.family
    codes = problem.codes[0]
    l1 = problem.nlevels[0]
    lam = float(theta[0])
    zcol = problem.Zraw[0][:, 0]
    u0 = state.u
    eta0 = state.eta
    K = len(z)
    sums = _level_sums(problem, K)
    # L_jj^2 = 1 + lambda^2 sum_{i in j} w_i z_i^2: the scalar term's factor is diagonal
    wz2 = state.w * zcol * zcol
    S = np.bincount(codes, weights=wz2, minlength=l1) if sums.m is None else wz2.reshape(l1, sums.m) @ sums.ones
    L2 = 1.0 + lam * lam * S
    sd = 1.0 / np.sqrt(L2)
    U = u0[None, :] + z[:, None] * sd[None, :]  # (K, l1)
    # eta at the nodes: the mode's plus lambda z_i s_j z_k
    step = lam * zcol * sd[codes]
    deta = z[:, None] * step[None, :]
    eta = eta0[None, :] + deta
    kind = _canonical(problem, eta) if _canonical(problem, eta0) else None
    mu = None
    if kind == "logit":
        dd = problem.wt * (np.logaddexp(0.0, eta) - np.logaddexp(0.0, eta0) - problem.y * deta)
    elif kind == "log":
        with np.errstate(over="ignore"):
            mu = np.exp(eta)
        dd = problem.wt * (mu - state.mu - problem.y * deta)
    if kind is not None:
        # devc_jk - devc_j(u_j)
        ddev = 2.0 * sums(dd) + (U * U - u0 * u0)
        devc0_sum = state.dev_sum + float(u0 @ u0)
    else:
        mu = fam.linkinv(eta)
        d = fam.dev_resids(problem.y[None, :], mu, problem.wt[None, :])
        devc0 = np.bincount(codes, weights=state.dev_resid, minlength=l1) + u0 * u0
        ddev = sums(d) + U * U - devc0[None, :]
        devc0_sum = float(devc0.sum())
    expo = -0.5 * ddev + 0.5 * (z * z)[:, None]
    terms = w[:, None] * np.exp(expo)
    mult = terms.sum(axis=0)
    value = float(devc0_sum + np.log(L2).sum() - 2.0 * np.log(mult).sum())
    return {"value": value, "theta": lam, "nAGQ": int(nAGQ), "S": S, "L2": L2, "sd": sd, "U": U, "eta": eta,
            "mu": mu, "sums": sums, "terms": terms, "mult": mult, "kind": kind}


def agq_deviance(problem: PirlsProblem, state: PirlsState, theta: np.ndarray, nAGQ: int) -> float:
    """Adaptive Gauss-Hermite deviance at a PIRLS solution (see the module notes).

    The node quantities are kept (``problem._agq_last``) for a gradient at the same state read next
    (:func:`agq_gradient`).
    """
    core = _agq_core(problem, state, theta, nAGQ)
    problem._agq_last = (state, core)
    return core["value"]

def _scores(problem: PirlsProblem, eta: np.ndarray, mu: np.ndarray) -> np.ndarray | None:
    """``r = d dev_i / d eta_i`` at linear predictors ``eta`` (any shape broadcasting with the rows), or None where
    a mean or ``d mu / d eta`` is at the link's clamp (the deviance as computed is flat there, not differentiable).

    Canonical links: ``r = -2 wt (y - mu)``; the binomial probit / cloglog: ``r = -2 wt (y - mu) m1 / V``.
    """
    fam, wt, y = problem.family, problem.wt, problem.y
    name = fam.link.name
    if eta.size == 0:
        return np.zeros_like(eta)
    if type(fam) is Binomial and name == "logit":
        if max(float(eta.max()), -float(eta.min())) > _THRESH:
            return None
        return -2.0 * wt * (y - mu)
    if type(fam) is Poisson and name == "log":
        if float(eta.min()) < _LOG_EPS:
            return None
        return -2.0 * wt * (y - mu)
    if type(fam) is Binomial and name in _NONCANONICAL_BOUNDS:
        lo, hi = _NONCANONICAL_BOUNDS[name]
        if float(eta.min()) <= lo or float(eta.max()) >= hi:
            return None
        with np.errstate(all="ignore"):
            r = -2.0 * wt * (y - mu) * fam.link.mu_eta(eta) / fam.variance(mu)
        return r if np.all(np.isfinite(r)) else None
    return None


def _curvatures(problem: PirlsProblem, state: PirlsState) -> tuple[np.ndarray, np.ndarray] | None:
    """At the modes: ``dw = d w_i / d eta_i`` of the weights in ``L_jj`` (lme4's expected weights) and ``wo``, the
    observed curvature ``d^2 dev_i / d eta_i^2 / 2`` that moves the modes (``= w`` for a canonical link); None where
    not available (see :func:`_scores`)."""
    fam, wt, eta, mu = problem.family, problem.wt, state.eta, state.mu
    if type(fam) is Binomial and fam.link.name == "logit":
        w = wt * mu * (1.0 - mu)
        return w * (1.0 - 2.0 * mu), w
    if type(fam) is Poisson and fam.link.name == "log":
        w = wt * mu
        return w, w
    if type(fam) is Binomial and fam.link.name in _NONCANONICAL_BOUNDS:
        # the third derivative of the log-density in eta through d^2 mu / d eta^2 and V'
        # (as PirlsProblem._noncanonical_gradient)
        with np.errstate(all="ignore"):
            m1, m2 = fam.link.mu_eta(eta), fam.link.mu_eta2(eta)
            V, dV = fam.variance(mu), fam.variance_deriv(mu)
            k = (m2 * V - m1 * m1 * dV) / (V * V)
            w = wt * m1 * m1 / V
            dw = wt * m1 * (2.0 * m2 * V - m1 * m1 * dV) / (V * V)
            wo = w - wt * (problem.y - mu) * k
        if not (np.all(np.isfinite(wo)) and np.all(np.isfinite(dw)) and np.all(wo[wt > 0] > 0)):
            return None
        return dw, wo
    return None


def agq_gradient(problem: PirlsProblem, state: PirlsState, theta: np.ndarray, nAGQ: int) -> np.ndarray | None:
    """Gradient in ``(theta, beta)`` of :func:`agq_deviance` with the modes re-found at each point (lme4's stage 2).

    Parameters
    ----------
    problem : PirlsProblem
        One scalar random-effects term (:func:`check_agq`), binomial logit / probit / cloglog or Poisson log.
    state : PirlsState
        A converged uOnly PIRLS state at ``(theta, beta)``.
    theta : numpy.ndarray, shape (1,)
    nAGQ : int
        Number of quadrature nodes (> 1).

    Returns
    -------
    numpy.ndarray, shape (1 + p,) or None
        None where a linear predictor at a node or at the mode is at the link's clamp (the caller then uses
        BOBYQA or value differences).

    Notes
    -----
    Per level ``T_j = log L2_j - 2 log sum_k w_k exp(-devc_j(U_jk) / 2 + z_k^2 / 2)``, ``U_jk = u_j + s_j z_k``,
    ``s_j = L2_j^-1/2``, ``L2_j = 1 + lambda^2 S_j``, ``S_j = sum_i w_i z_i^2`` (lme4's working weights). With the
    node posteriors ``pi_jk`` (normalised ``w_k exp(...)``), ``g_jk = d devc_j / du`` at ``U_jk`` and any parameter
    ``phi``: ``dT_j = sum_k pi_jk (partial_phi devc_jk + g_jk dU_jk) + dlog L2_j``, with
    ``dU_jk = du_j - z_k s_j dlog L2_j / 2``. The AGQ sum is not stationary at the mode, so ``du_j`` comes from
    the stationarity condition ``lambda rho_j / 2 + u_j = 0`` (``rho_j = sum_i r_i z_i``):
    ``A_j du_j/dlambda = -(rho_j / 2 + lambda So_j u_j)``, ``A_j du_j/dbeta = -lambda sum_i wo_i z_i x_i``,
    ``A_j = 1 + lambda^2 So_j`` (observed curvature ``wo``). ``L2_j`` moves with the weights' derivative ``dw``
    (the third derivative of the log-density in eta) along ``d eta_i = z_i u_j dlambda + x_i dbeta
    + lambda z_i du_j``. Everything is a level vector or a (nodes, rows) array: no loop over levels.
    """
    problem._agq_sensitivity = None
    z, _ = gh_rule(int(nAGQ))
    codes = problem.codes[0]
    l1 = problem.nlevels[0]
    n = problem.n
    lam = float(theta[0])
    zcol = problem.Zraw[0][:, 0]
    X = problem.X
    u0 = state.u
    eta0, mu0 = state.eta, state.mu
    r0 = _scores(problem, eta0, mu0)
    cur = _curvatures(problem, state)
    if r0 is None or cur is None:
        return None
    dw, wo = cur
    lam2 = lam * lam
    p = X.shape[1]
    # the per-level sums at the modes in one pass: wo z^2, r z, dw z^3 and wo z x_b
    ones = problem.single is not None and problem.single._ones[0]
    woz = wo if ones else wo * zcol
    rows = np.empty((3 + p, n))
    if ones:
        rows[0], rows[1], rows[2] = wo, r0, dw
    else:
        np.multiply(woz, zcol, out=rows[0])
        np.multiply(r0, zcol, out=rows[1])
        np.multiply(dw * zcol * zcol, zcol, out=rows[2])
    if p:
        XT = problem._XT[1] if problem._XT[0] is X else X.T
        np.multiply(woz[None, :], XT, out=rows[3:])
    if problem.single is not None:
        lsums = problem.single._sums(rows)
    else:
        lsums = np.stack([np.bincount(codes, weights=row, minlength=l1) for row in rows])
    So, rho, zeta, ZWoX = lsums[0], lsums[1], lam2 * lsums[2], lsums[3:]
    Ao = 1.0 + lam2 * So
    last = getattr(problem, "_agq_last", None)
    core = last[1] if last is not None and last[0] is state else None
    if core is None or core["theta"] != lam or core["nAGQ"] != int(nAGQ):
        core = _agq_core(problem, state, theta, nAGQ)
    L2, s, U, eta, sums = core["L2"], core["sd"], core["U"], core["eta"], core["sums"]
    mu = core["mu"]
    if core["kind"] is not None:
        # inside the links' clamps (checked by the core): the canonical score
        r = -2.0 * problem.wt * (problem.y - (expit(eta) if mu is None else mu))
    else:
        with np.errstate(all="ignore"):
            mu = problem.family.linkinv(eta)
        r = _scores(problem, eta, mu)
        if r is None:
            return None
    R = sums(r * zcol[None, :])
    # node posteriors (the deviance's terms, normalised per level)
    pi = core["terms"] / core["mult"]
    g = lam * R + 2.0 * U  # d devc_j / du at the nodes
    G1 = (pi * g).sum(axis=0)
    G2 = (pi * g * z[:, None]).sum(axis=0)
    c = 1.0 - 0.5 * s * G2  # the weight of dlog L2_j: its own 1 and the nodes' spread s_j
    v = lam2 * dw if ones else lam2 * dw * zcol * zcol  # d (L2_j - 1) / d eta_i
    # mode sensitivities (implicit function theorem on the stationarity condition)
    du_lam = -(0.5 * rho + lam * So * u0) / Ao
    du_beta = -lam * ZWoX / Ao  # (p, levels)
    dlogL2_lam = (2.0 * lam * core["S"] + zeta * (u0 + lam * du_lam)) / L2
    # (modes, du/dtheta, du/dbeta) at this point: the next PIRLS run's predicted start (memoe.glmm.model)
    problem._agq_sensitivity = (np.array(u0, dtype=float), du_lam, du_beta)
    grad = np.empty(1 + X.shape[1])
    grad[0] = float((pi * U * R).sum()) + float(G1 @ du_lam) + float(c @ dlogL2_lam)
    if n:
        rbar = (pi[:, codes] * r).sum(axis=0)  # the node-averaged scores of each row
        grad[1:] = X.T @ (rbar + v * (c / L2)[codes]) + du_beta @ (G1 + c * lam * zeta / L2)
    else:
        grad[1:] = 0.0
    return grad
