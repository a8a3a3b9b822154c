"""Closed-form ECM for Gaussian LMM experts: per-subject statistics -> reducible sums -> new parameters.

The EM of :mod:`memoe.moe.em` maximises each expert's weighted marginal likelihood numerically
(BOBYQA on the profiled deviance, many passes over the subjects per iteration). Treating the random
effects ``b_i`` as missing data as well as the class ``z_i`` gives an ECM whose every conditional
maximisation is closed form in *sums over subjects*, so one iteration is one pass over the data --
the shape a distributed engine (:mod:`memoe.dask.moe`) needs: each partition returns a small vector
of sums, the sums are added by a tree reduction, and the client computes the new parameters.

With ``tau_ik`` the posterior of class k, ``b_ik = E[b_i | y_i, k]`` and ``S_ik = Var[b_i | y_i, k]``
under the current parameters (all from the subject statistics of :class:`~memoe.moe.data.SubjectStats`):

* ``beta_k = (sum_i tau_ik X_i'X_i)^-1 sum_i tau_ik X_i'(y_i - Z_i b_ik)``;
* ``sigma_k^2 = sum_i tau_ik (||y_i - X_i beta_k - Z_i b_ik||^2 + tr(Z_i'Z_i S_ik)) / sum_i tau_ik n_i``
  (the new beta_k: the residual is a quadratic in beta whose coefficients are sums, so the joint
  maximiser of the complete-data Q-function needs no second pass);
* ``G_k = sum_i tau_ik (b_ik b_ik' + S_ik) / sum_i tau_ik`` (restricted to the block pattern of the
  random-effects terms, which is the exact maximiser for a block-diagonal G);
* the gate: one Newton step of the weighted multinomial logit from the reduced gradient and Hessian,
  replaced by the step of Boehning's quadratic lower bound (``-H <= 1/2 (I - 11'/K) kron W'W``) when
  the Newton step does not provably increase the gate's Q-function. Either step increases it, so the
  sequence of observed log-likelihoods never decreases (an ECM / MM sequence).

Shared parameters (``mixture=``, ``random_cov="common"``, ``sigma="common"``) are conditional
maximisations too: shared fixed effects solve the ``1 / sigma_k^2``-weighted normal equations at the
current residual SDs; a common G or sigma pools the sums over experts. ``random_cov="proportional"``
has no closed form and is not supported here.

R has no equivalent (lcmm and flexmix maximise numerically); the fixed point is the same maximum
likelihood estimate as :meth:`memoe.MEMoE.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memoe.core.linalg.batched import batched_backward_solve_t, batched_forward_solve
from memoe.errors import ArgumentError
from memoe.moe.experts import GaussianExpert
from memoe.moe.kernels import bmtm, btmv, rowdot
from memoe.moe.params import MoEParams
from memoe.moe.problem import EStep, MoEProblem
from memoe.moe.structure import Structure

__all__ = [
    "EcmLayout", "check_ecm_structure", "ecm_step", "ecm_sums", "ecm_update", "expert_moments", "initial_from_sums",
    "newton_finish",
]


@dataclass(frozen=True)
class EcmLayout:
    """Positions of the reducible sums in one flat vector (so a tree reduction is a vector sum).

    Per expert k: ``mass, sum tau n, sum tau y'y, sum tau y'Z b, sum tau (b'Z'Zb + tr Z'Z S)``, then
    ``sum tau X'X`` (p*p), ``sum tau X'y`` (p), ``sum tau X'Z b`` (p), ``sum tau (bb' + S)`` (q*q).
    Then: the observed log-likelihood, ``sum_i tau_ik log tau_ik`` (classification entropy, negative),
    the gate's gradient ((K-1) r) and negative Hessian (((K-1) r)^2) at the current gamma, and ``W'W``
    (r*r).
    """

    K: int
    p: int
    q: int
    r: int

    @property
    def per_expert(self) -> int:
        return 5 + self.p * self.p + 2 * self.p + self.q * self.q

    @property
    def m(self) -> int:
        return (self.K - 1) * self.r

    @property
    def size(self) -> int:
        return self.K * self.per_expert + 2 + self.m + self.m * self.m + self.r * self.r

    def expert(self, v: np.ndarray, k: int) -> dict[str, np.ndarray | float]:
        p, q = self.p, self.q
        e = v[k * self.per_expert : (k + 1) * self.per_expert]
        o = 5
        out: dict[str, np.ndarray | float] = dict(zip(("mass", "nw", "yy", "yZb", "quad"), map(float, e[:5]),
                                                      strict=True))
        out["XX"] = e[o : o + p * p].reshape(p, p)
        o += p * p
        out["Xy"], out["XZb"] = e[o : o + p], e[o + p : o + 2 * p]
        o += 2 * p
        out["BB"] = e[o : o + q * q].reshape(q, q)
        return out

    def tail(self, v: np.ndarray) -> dict[str, np.ndarray | float]:
        o = self.K * self.per_expert
        m, r = self.m, self.r
        return {
            "loglik": float(v[o]),
            "tau_log_tau": float(v[o + 1]),
            "g": v[o + 2 : o + 2 + m],
            "Hn": v[o + 2 + m : o + 2 + m + m * m].reshape(m, m),
            "WW": v[o + 2 + m + m * m :].reshape(r, r),
        }


def expert_moments(expert: GaussianExpert, beta: np.ndarray, L: np.ndarray, sigma: float):
    """Conditional mean and covariance of every subject's random effects under one expert.

    Returns
    -------
    b : numpy.ndarray, shape (N, q)
        ``E[b_i | y_i]`` (the BLUP, ``Lambda m_i``).
    S : numpy.ndarray, shape (N, q, q)
        ``Var[b_i | y_i] = sigma^2 Lambda S_i^-1 Lambda'`` with ``S_i = I + Lambda'Z_i'Z_i Lambda``.
    """
    st = expert.stats
    N, q = st.N, st.q
    if q == 0:
        return np.zeros((N, 0)), np.zeros((N, 0, 0))
    from memoe.moe.experts import ExpertParams

    _, _, lam, Lc, _, vc, _ = expert._core(ExpertParams(beta=beta, L=L, sigma=float(sigma)))
    m = batched_backward_solve_t(Lc, vc[1][:, :, None])[:, :, 0]
    b = m @ lam.T
    eye = np.ascontiguousarray(np.broadcast_to(np.eye(q), Lc.shape))
    Linv = batched_forward_solve(Lc, eye)  # L_i^-1, so S_i^-1 = L_i^-T L_i^-1
    LL = Linv @ lam.T  # L_i^-1 Lambda'
    S = float(sigma) ** 2 * bmtm(LL, LL)
    return b, S


def ecm_sums(
    expert: GaussianExpert,
    W: np.ndarray,
    params: MoEParams,
    tau: np.ndarray,
    log_gate: np.ndarray,
    subject_loglik: np.ndarray,
    moments: bool = True,
) -> np.ndarray:
    """The reducible sums of one ECM iteration over the subjects of ``expert.stats`` (see :class:`EcmLayout`).

    Parameters
    ----------
    expert : GaussianExpert
        Subject statistics (all subjects, or one partition's).
    W : numpy.ndarray, shape (N, r)
        Gating design of the same subjects.
    params : MoEParams
        Current parameters (their random-effect moments enter the sums).
    tau, log_gate : numpy.ndarray, shape (N, K)
        Posterior probabilities and log gating probabilities at ``params`` (or any weights).
    subject_loglik : numpy.ndarray, shape (N,)
        Observed log-likelihood contributions (summed into the vector).
    moments : bool
        False: ``b = 0, S = 0`` (weighted least squares sums, for starting values from weights).

    Returns
    -------
    numpy.ndarray, shape (EcmLayout.size,)

    Examples
    --------
    >>> e = problem.e_step(params)                                                     # doctest: +SKIP
    >>> v = ecm_sums(problem.expert, problem.W, params, e.tau, e.log_gate, e.subject_loglik)  # doctest: +SKIP
    """
    st = expert.stats
    N, p, q = st.N, st.p, st.q
    K, r = tau.shape[1], W.shape[1]
    lay = EcmLayout(K, p, q, r)
    out = np.zeros(lay.size)
    XXf = st.XX.reshape(N, p * p)
    for k in range(K):
        t = tau[:, k]
        if moments and q:
            b, S = expert_moments(expert, params.beta[k], params.L[k], params.sigma[k])
            Zb = np.einsum("nab,nb->na", st.ZZ, b)  # Z'Z b
            yZb = float(t @ rowdot(st.Zy, b))
            quad = float(t @ (rowdot(b, Zb) + np.einsum("nab,nab->n", st.ZZ, S)))
            XZb = t @ btmv(st.ZX, b)  # X'Z b = (Z'X)' b
            BB = (t @ (b[:, :, None] * b[:, None, :] + S).reshape(N, q * q))
        else:
            yZb, quad, XZb, BB = 0.0, 0.0, np.zeros(p), np.zeros(q * q)
        e = [np.array([t.sum(), t @ st.n, t @ st.yy, yZb, quad]), t @ XXf, t @ st.Xy, XZb, BB]
        out[k * lay.per_expert : (k + 1) * lay.per_expert] = np.concatenate(e)
    o = K * lay.per_expert
    out[o] = float(np.sum(subject_loglik))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[o + 1] = float(np.sum(np.where(tau > 0, tau * np.log(tau), 0.0)))
    m = lay.m
    if m:
        pi = np.exp(log_gate)
        out[o + 2 : o + 2 + m] = ((tau[:, 1:] - pi[:, 1:]).T @ W).ravel()
        p1 = pi[:, 1:]
        Hn = np.empty((K - 1, r, K - 1, r))
        for k in range(K - 1):  # (K - 1)^2 blocks, each a vector pass over subjects
            for j in range(k, K - 1):
                v = p1[:, k] * ((1.0 if j == k else 0.0) - p1[:, j])
                Hn[k, :, j, :] = (W * v[:, None]).T @ W
                Hn[j, :, k, :] = Hn[k, :, j, :].T
        out[o + 2 + m : o + 2 + m + m * m] = Hn.ravel()
    out[o + 2 + m + m * m :] = (W.T @ W).ravel()
    return out


def check_ecm_structure(st: Structure) -> None:
    """Refuse structures without a closed-form conditional maximisation (``random_cov="proportional"``)."""
    if st.q and st.cov == "proportional":
        raise ArgumentError(
            "random_cov='proportional' (G_k = omega_k^2 G_1) has no closed-form ECM update: use random_cov='class' "
            "or 'common', or fit in memory"
        )


def _gate_step(g: np.ndarray, Hn: np.ndarray, WW: np.ndarray, K: int) -> np.ndarray:
    """Newton step of the gate's Q-function, or Boehning's bound step when Newton is not provably ascending.

    ``Q(gamma + d) >= Q(gamma) + g'd - d'B d / 2`` with ``B = 1/2 (I - 11'/K) kron W'W`` (Boehning 1992), so a
    step with a positive lower bound increases Q; the bound step ``B^-1 g`` always has one.
    """
    m = len(g)
    B = 0.5 * np.kron(np.eye(K - 1) - 1.0 / K, WW)
    B += 1e-12 * max(float(np.trace(B)) / max(m, 1), 1e-300) * np.eye(m)
    d_bound = np.linalg.solve(B, g)
    lb_bound = 0.5 * float(g @ d_bound)
    mu = 1e-10 * max(1.0, float(np.trace(Hn)) / max(m, 1))
    try:
        c = np.linalg.cholesky(Hn + mu * np.eye(m))
        d_newton = np.linalg.solve(c.T, np.linalg.solve(c, g))
        lb_newton = float(g @ d_newton) - 0.5 * float(d_newton @ B @ d_newton)
    except np.linalg.LinAlgError:  # (quasi-)separation: the bound step still ascends
        return d_bound
    return d_newton if lb_newton >= lb_bound else d_bound


def _pattern(st: Structure) -> np.ndarray:
    """Entries of G free under the random-effects terms' block pattern (True), from L's free entries."""
    Lm = np.zeros((st.q, st.q))
    Lm[st.rows, st.cols] = 1.0
    return (Lm @ Lm.T) > 0


def _chol(G: np.ndarray, mask: np.ndarray) -> np.ndarray:
    G = np.where(mask, 0.5 * (G + G.T), 0.0)
    q = G.shape[0]
    try:
        L = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:  # a variance collapsed to 0 (boundary): keep it tiny instead
        L = np.linalg.cholesky(G + 1e-12 * max(float(np.trace(G)) / max(q, 1), 1e-300) * np.eye(q))
    return L


def ecm_update(
    v: np.ndarray, params: MoEParams, st: Structure, sigma_floor: float = 0.0
) -> MoEParams:
    """New parameters from the reduced sums ``v`` of :func:`ecm_sums` at ``params`` (see the module docstring).

    Parameters
    ----------
    v : numpy.ndarray
        Sums over all subjects (of every partition).
    params : MoEParams
        The parameters at which the sums were computed.
    st : Structure
    sigma_floor : float
        Smallest residual SD (as :class:`~memoe.moe.experts.GaussianExpert`'s).

    Returns
    -------
    MoEParams
    """
    K, p, q, r = st.K, st.p, st.q, st.r
    lay = EcmLayout(K, p, q, r)
    ex = [lay.expert(v, k) for k in range(K)]
    tail = lay.tail(v)
    gamma = params.gamma.copy()
    if K > 1:
        gamma[1:] += _gate_step(tail["g"], tail["Hn"], tail["WW"], K).reshape(K - 1, r)
    # fixed effects: 1/sigma_k^2-weighted normal equations over the free coefficients (shared ones appear in
    # every expert's block); for all-specific coefficients this is each expert's own least squares
    bidx = st.beta_index() - st.offsets["beta"]
    nb = st.n_shared + K * st.n_specific
    H, h = np.zeros((nb, nb)), np.zeros(nb)
    for k in range(K):
        w = 1.0 / params.sigma[k] ** 2 if st.n_shared else 1.0
        H[np.ix_(bidx[k], bidx[k])] += w * ex[k]["XX"]
        h[bidx[k]] += w * (ex[k]["Xy"] - ex[k]["XZb"])
    beta = np.linalg.solve(H, h)[bidx]
    rss = np.array([
        e["yy"] - 2.0 * beta[k] @ e["Xy"] + beta[k] @ e["XX"] @ beta[k] - 2.0 * e["yZb"] + 2.0 * beta[k] @ e["XZb"]
        + e["quad"]
        for k, e in enumerate(ex)
    ])
    nw = np.array([e["nw"] for e in ex])
    if st.sigma == "common" and K > 1:
        s2 = np.full(K, rss.sum() / nw.sum())
    else:
        s2 = rss / nw
    sigma = np.maximum(np.sqrt(np.maximum(s2, 0.0)), sigma_floor)
    L = np.zeros((K, q, q))
    if q:
        mask = _pattern(st)
        mass = np.array([e["mass"] for e in ex])
        if st.cov == "common" and K > 1:
            L[:] = _chol(sum(e["BB"] for e in ex) / mass.sum(), mask)
        else:
            for k in range(K):
                L[k] = _chol(ex[k]["BB"] / mass[k], mask)
    return MoEParams(gamma=gamma, beta=beta, L=L, sigma=sigma)


def initial_from_sums(v: np.ndarray, st: Structure, sigma_floor: float = 0.0) -> MoEParams:
    """Starting values from the sums of :func:`ecm_sums` with ``moments=False`` at some weights.

    Weighted least squares per expert, the residual SD from the weighted residual sum of squares and
    lme4's start for G (relative factor the identity, ``L_k = sigma_k I``); the gate one Newton step from 0.
    """
    K, q, r = st.K, st.q, st.r
    zero = MoEParams(gamma=np.zeros((K, r)), beta=np.zeros((K, st.p)), L=np.repeat(np.eye(q)[None], K, axis=0),
                     sigma=np.ones(K))
    out = ecm_update(v, zero, st, sigma_floor)
    L = out.sigma[:, None, None] * np.repeat(np.eye(q)[None], K, axis=0)
    if q:
        mask = _pattern(st)
        L = np.where(mask[None], L, 0.0)
    return out.replace(L=L)


def ecm_step(problem: MoEProblem, params: MoEParams, e: EStep | None = None) -> tuple[MoEParams, float]:
    """One in-memory ECM iteration: the same sums and update as the distributed path.

    Parameters
    ----------
    problem : MoEProblem
        With a :class:`~memoe.moe.experts.GaussianExpert`.
    params : MoEParams
    e : EStep, optional
        The E-step at ``params`` (computed when omitted).

    Returns
    -------
    new : MoEParams
    loglik : float
        Observed log-likelihood at ``params``.

    Examples
    --------
    >>> m = memoe.MEMoE("y ~ time + (time | id)", gating="~ w1", k=2, data=df)   # doctest: +SKIP
    >>> new, ll = ecm_step(m.problem, start)                                      # doctest: +SKIP
    """
    check_ecm_structure(problem.structure)
    e = e or problem.e_step(params)
    v = ecm_sums(problem.expert, problem.W, params, e.tau, e.log_gate, e.subject_loglik)
    floor = float(getattr(problem.expert, "sigma_floor", 0.0))
    return ecm_update(v, params, problem.structure, floor), e.loglik


def newton_finish(
    problem: MoEProblem, params: MoEParams, max_iter: int = 20, tol: float = 1e-20, rel: float = 1e-5
) -> tuple[MoEParams, float, int]:
    """Newton iterations on the observed log-likelihood from ``params`` (in memory), as the Dask fit finishes.

    The Hessian is the central difference of the analytic total score (the observed information of
    :func:`memoe.moe.inference.compute_inference`); a step is halved until the log-likelihood does not
    decrease. Stops when the Newton decrement ``g'A^-1 g / 2`` is below ``tol * (1 + |loglik|)`` or the step is
    below 1e-10 of every estimate's scale (round-off level).

    Parameters
    ----------
    problem : MoEProblem
    params : MoEParams
        Near a maximum (an EM solution).
    max_iter : int
    tol : float
    rel : float
        Relative step of the central differences.

    Returns
    -------
    params : MoEParams
    loglik : float
    n_iter : int

    Examples
    --------
    >>> fit = memoe.MEMoE(...).fit()                                                   # doctest: +SKIP
    >>> p, ll, _ = newton_finish(fit.model.problem, fit.estimates)                     # doctest: +SKIP
    """
    st = problem.structure
    floor = float(getattr(problem.expert, "sigma_floor", 0.0))
    psi = st.pack(params)
    d = len(psi)

    def info(x: np.ndarray) -> np.ndarray:
        h = rel * np.maximum(1.0, np.abs(x))
        cols = []
        for j in range(d):
            xp, xm = x.copy(), x.copy()
            xp[j] += h[j]
            xm[j] -= h[j]
            cols.append((problem.score_psi(xp) - problem.score_psi(xm)) / (2.0 * h[j]))
        H = np.column_stack(cols)
        return -(H + H.T) / 2.0

    ll, g = problem.loglik_and_score(psi)
    it = 0
    while it < max_iter:
        it += 1
        try:
            c = np.linalg.cholesky(info(psi))
        except np.linalg.LinAlgError:
            break
        step = np.linalg.solve(c.T, np.linalg.solve(c, g))
        if 0.5 * float(g @ step) < tol * (1.0 + abs(ll)) or np.max(np.abs(step) / (np.abs(psi) + 1e-2)) < 1e-10:
            break
        t, accepted = 1.0, False
        for _half in range(20):
            cand = psi + t * step
            if np.all(np.isfinite(cand)) and np.all(st.unpack(cand).sigma >= floor):
                ll2, g2 = problem.loglik_and_score(cand)
                if np.isfinite(ll2) and ll2 >= ll:
                    psi, ll, g, accepted = cand, ll2, g2, True
                    break
            t *= 0.5
        if not accepted:
            break
    return st.unpack(psi), float(ll), it
