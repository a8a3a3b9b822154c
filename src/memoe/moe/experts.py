"""Gaussian experts: each subject's exact marginal log-likelihood, its gradients and the M-step.

An expert is anything with the :class:`Expert` interface: ``subject_loglik`` (the E-step needs it),
``subject_gradients`` (scores and sandwich) and ``m_step`` (weighted refit). The Gaussian linear
mixed-model expert is exact; a non-Gaussian expert would plug in its Laplace approximation of the
same per-subject marginal likelihood and its gradients. ``q = 0`` (no random effects) gives the
linear-regression expert of a conventional mixture of experts.

All per-subject work is a batched small-matrix computation over the statistics of
:class:`~memoe.moe.data.SubjectStats`; nothing loops over subjects or touches the rows.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from memoe.core.arguments import check_int
from memoe.core.covariance import ThetaMap
from memoe.core.linalg.batched import batched_backward_solve_t, batched_cholesky, batched_forward_solve
from memoe.core.optim import minimize_bounded
from memoe.errors import ArgumentError
from memoe.lmm.objective import PLSProblem
from memoe.moe.data import SubjectStats
from memoe.moe.kernels import bmtm, bmv, btmv, colmv, congruence, logdet_chol, right_const, rowdot

__all__ = ["Expert", "ExpertGradients", "ExpertParams", "GaussianExpert", "MStepControl"]

LOG_2PI = math.log(2.0 * math.pi)
M_STEP_OPTIMIZERS = ("fisher", "bobyqa")


@dataclass(frozen=True)
class ExpertParams:
    """One expert: fixed effects ``beta`` (p,), Cholesky factor ``L`` (q, q) of G, residual SD ``sigma``."""

    beta: np.ndarray
    L: np.ndarray
    sigma: float


@dataclass(frozen=True)
class ExpertGradients:
    """Per-subject derivatives of ``l_i = log p(y_i)`` on the natural scale.

    Attributes
    ----------
    loglik : numpy.ndarray, shape (N,)
    beta : numpy.ndarray, shape (N, p)
        ``d l_i / d beta = X_i' V_i^-1 r_i``.
    G : numpy.ndarray, shape (N, q, q)
        ``d l_i / d G`` (symmetric-matrix derivative) ``= (u_i u_i' - Z_i' V_i^-1 Z_i) / 2``,
        ``u_i = Z_i' V_i^-1 r_i``.
    s2 : numpy.ndarray, shape (N,)
        ``d l_i / d sigma^2 = (r_i' V_i^-2 r_i - tr V_i^-1) / 2``.
    dL : numpy.ndarray, shape (N, q, q), optional
        ``d l_i / d L`` with respect to every entry of the Cholesky factor ``L`` of G, given directly by
        experts whose likelihood is computed in L (the Laplace experts); when set, the chain rule uses
        it instead of ``2 (d l / d G) L`` (which it equals).
    """

    loglik: np.ndarray
    beta: np.ndarray
    G: np.ndarray
    s2: np.ndarray
    dL: np.ndarray | None = None


@dataclass(frozen=True)
class MStepControl:
    """Settings of one expert's M-step (a generalised EM step when ``maxeval`` binds).

    Attributes
    ----------
    maxeval : int
        Largest number of objective evaluations.
    ftol_abs : float
        Absolute change of the weighted deviance that ends the optimisation.
    xtol_abs : float
        Change of theta that ends the optimisation.
    optimizer : {"fisher", "bobyqa"}
        ``"fisher"``: Fisher scoring on the weighted profiled deviance with its analytic gradient and
        expected Hessian (:meth:`memoe.lmm.objective.PLSProblem.ml_derivatives`); ``"bobyqa"``: the
        derivative-free optimiser lme4 uses. Both reach the same M-step optimum; Fisher scoring needs a
        few evaluations where BOBYQA needs tens.
    gate_iter : int
        Newton iterations of the gate's weighted multinomial logit per M-step (each increases its
        part of the Q-function; the default converges it).
    """

    maxeval: int = 60
    ftol_abs: float = 1e-9
    xtol_abs: float = 1e-7
    optimizer: str = "fisher"
    gate_iter: int = 25

    def __post_init__(self) -> None:
        check_int(self.maxeval, "MStepControl.maxeval", minimum=1)
        check_int(self.gate_iter, "MStepControl.gate_iter", minimum=1)
        for name in ("ftol_abs", "xtol_abs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < np.inf):
                raise ArgumentError(f"MStepControl.{name} must be a non-negative finite number, got {v!r}")
        if self.optimizer not in M_STEP_OPTIMIZERS:
            raise ArgumentError(f"MStepControl.optimizer must be one of {M_STEP_OPTIMIZERS}, got {self.optimizer!r}")


class Expert(Protocol):
    """What the EM needs from an expert family."""

    def subject_loglik(self, theta: ExpertParams) -> np.ndarray:
        """Marginal log-likelihood of each subject, shape (N,)."""
        ...

    def subject_gradients(self, theta: ExpertParams) -> ExpertGradients:
        """Per-subject gradients on the natural scale."""
        ...

    def m_step(self, weights: np.ndarray, start: ExpertParams, step: float | None = None) -> ExpertParams:
        """Parameters that increase ``sum_i weights_i * l_i`` from ``start``."""
        ...


def _sigma_floor(stats: SubjectStats) -> float:
    """Smallest residual SD an expert may take: 1e-5 of the pooled OLS residual SD.

    Far below any residual SD a real data set estimates (the pooled residual also carries the
    between-subject variation), yet it keeps the log-likelihood bounded when an expert would
    otherwise collapse onto a few subjects that its random effects reproduce exactly.
    """
    XX, Xy = stats.XX.sum(axis=0), stats.Xy.sum(axis=0)
    b = np.linalg.lstsq(XX, Xy, rcond=None)[0]
    rss = max(float(stats.yy.sum() - b @ Xy), 0.0)
    sd = math.sqrt(rss / max(float(stats.n.sum()), 1.0))
    return 1e-5 * sd if sd > 0 else 1e-300


class GaussianExpert:
    """A Gaussian linear mixed model ``y_i ~ N(X_i beta, Z_i G Z_i' + sigma^2 I)`` (q = 0: regression).

    Parameters
    ----------
    stats : SubjectStats
    pls : PLSProblem or None
        The LMM engine on the same rows; its group weights make the profiled deviance the
        posterior-weighted -2 log-likelihood (M-step). None when q = 0.
    theta_map : ThetaMap or None
    control : MStepControl

    Notes
    -----
    With ``Lambda = L / sigma``, ``S_i = I + Lambda' Z_i'Z_i Lambda = L_i L_i'``, ``r_i = y_i - X_i beta``,
    ``v_i = Lambda' Z_i' r_i`` and ``c_i = L_i^-1 v_i``:
    ``l_i = -1/2 [n_i log(2 pi sigma^2) + log|S_i| + (r_i'r_i - ||c_i||^2) / sigma^2]``,
    where ``r_i'r_i = y'y - 2 beta'X'y + beta'X'X beta`` and ``Z_i'r_i = Z'y - Z'X beta`` come from the
    statistics. With ``m_i = S_i^-1 v_i``: ``V_i^-1 r_i = (r_i - Z_i Lambda m_i) / sigma^2``, so
    ``X_i'V_i^-1 r_i = (X'r - X'Z Lambda m_i) / sigma^2``, ``r'V^-2 r = (r'r - v'm - m'm) / sigma^4``,
    ``tr V_i^-1 = (n_i - q + tr S_i^-1) / sigma^2`` and
    ``Z'V^-1 Z = (A - A Lambda S^-1 Lambda' A) / sigma^2`` with ``A = Z_i'Z_i``.
    The BLUP under the expert is ``b_i = Lambda m_i``.
    """

    def __init__(
        self,
        stats: SubjectStats,
        pls: PLSProblem | None,
        theta_map: ThetaMap | None,
        control: MStepControl | None = None,
    ) -> None:
        self.stats = stats
        self.pls = pls
        self.theta_map = theta_map
        self.control = control or MStepControl()
        self._XX_flat = stats.XX.reshape(stats.N, -1)
        self.sigma_floor = _sigma_floor(stats)

    # ------------------------------------------------------------------ E-step kernel
    def _rss(self, beta: np.ndarray) -> np.ndarray:
        st = self.stats
        return st.yy - 2.0 * colmv(st.Xy, beta) + colmv(self._XX_flat, np.outer(beta, beta).ravel())

    def _factor(self, lam: np.ndarray) -> np.ndarray:
        """Cholesky factors of ``S_i = I + Lambda' Z_i'Z_i Lambda``, shape (N, q, q)."""
        S = congruence(self.stats.ZZ, lam)
        idx = np.arange(self.stats.q)
        S[:, idx, idx] += 1.0
        return batched_cholesky(S)

    def _core(self, theta: ExpertParams):
        st = self.stats
        s2 = float(theta.sigma) ** 2
        rr = self._rss(theta.beta)
        if st.q == 0:
            return s2, rr, None, None, None, None, np.zeros(st.N)
        lam = theta.L / theta.sigma
        Lc = self._factor(lam)
        Zr = st.Zy - bmv(st.ZX, np.broadcast_to(theta.beta, (st.N, st.p)))
        v = right_const(Zr[:, None, :], lam)[:, 0, :]
        c = batched_forward_solve(Lc, v[:, :, None])[:, :, 0]
        # diag(L_i) >= 1 because S_i >= I, so the product in logdet_chol cannot underflow
        return s2, rr, lam, Lc, Zr, (v, c), logdet_chol(Lc)

    def subject_loglik(self, theta: ExpertParams) -> np.ndarray:
        """Exact marginal log-likelihood of each subject under this expert, shape (N,)."""
        if self.pls is not None:
            # the core engine's structure-of-arrays statistics, processed in cache-sized chunks
            return self.pls.level_loglik(theta.L / theta.sigma, theta.beta, float(theta.sigma))
        s2, rr, _, _, _, vc, logdet = self._core(theta)
        quad = rr if vc is None else rr - rowdot(vc[1], vc[1])
        return -0.5 * (self.stats.n * (LOG_2PI + math.log(s2)) + logdet + quad / s2)

    def subject_gradients(self, theta: ExpertParams) -> ExpertGradients:
        """Log-likelihood and its natural-scale gradients for every subject (see class Notes)."""
        st = self.stats
        s2, rr, lam, Lc, Zr, vc, logdet = self._core(theta)
        Xr = st.Xy - (st.XX.reshape(-1, st.p) @ theta.beta).reshape(st.N, st.p)
        if st.q == 0:
            ll = -0.5 * (st.n * (LOG_2PI + math.log(s2)) + rr / s2)
            return ExpertGradients(ll, Xr / s2, np.zeros((st.N, 0, 0)), 0.5 * (rr / s2**2 - st.n / s2))
        v, c = vc
        ll = -0.5 * (st.n * (LOG_2PI + math.log(s2)) + logdet + (rr - rowdot(c, c)) / s2)
        m = batched_backward_solve_t(Lc, c[:, :, None])[:, :, 0]
        lm = m @ lam.T  # Lambda m_i, shape (N, q)
        u = (Zr - bmv(st.ZZ, lm)) / s2
        gbeta = (Xr - btmv(st.ZX, lm)) / s2
        P = right_const(st.ZZ, lam)  # A Lambda
        K1 = batched_forward_solve(Lc, np.ascontiguousarray(np.swapaxes(P, 1, 2)))
        ZVZ = (st.ZZ - bmtm(K1, K1)) / s2
        gG = 0.5 * (u[:, :, None] * u[:, None, :] - ZVZ)
        eye = np.ascontiguousarray(np.broadcast_to(np.eye(st.q), Lc.shape))
        Linv = batched_forward_solve(Lc, eye)
        tr_sinv = rowdot(Linv.reshape(st.N, -1), Linv.reshape(st.N, -1))
        rv2r = (rr - rowdot(v, m) - rowdot(m, m)) / s2**2
        tr_vinv = (st.n - st.q + tr_sinv) / s2
        return ExpertGradients(ll, gbeta, gG, 0.5 * (rv2r - tr_vinv))

    def blup(self, theta: ExpertParams) -> np.ndarray:
        """Conditional mean of each subject's random effects under this expert, shape (N, q)."""
        _, _, lam, Lc, _, vc, _ = self._core(theta)
        if lam is None:
            return np.zeros((self.stats.N, 0))
        m = batched_backward_solve_t(Lc, vc[1][:, :, None])[:, :, 0]
        return m @ lam.T

    def _gls(self, lam: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Weighted normal equations on the relative scale ``V*_i = I + Z_i Lambda Lambda' Z_i'``.

        Returns ``M = sum_i w_i X_i'V*_i^-1 X_i`` (p, p), ``m = sum_i w_i X_i'V*_i^-1 y_i`` (p,) and
        ``sum_i w_i y_i'V*_i^-1 y_i``, via ``T_i = L_i^-1 Lambda' Z_i'X_i``: ``X'V*^-1 X = X'X - T'T``.
        """
        st = self.stats
        p = st.p
        M = (w @ self._XX_flat).reshape(p, p)
        m = w @ st.Xy
        yy = float(w @ st.yy)
        if st.q:
            Lc = self._factor(lam)
            LZX = np.swapaxes(right_const(np.ascontiguousarray(np.swapaxes(st.ZX, 1, 2)), lam), 1, 2)
            T = batched_forward_solve(Lc, np.ascontiguousarray(LZX))
            t = batched_forward_solve(Lc, (st.Zy @ lam)[:, :, None])[:, :, 0]
            M = M - (w @ bmtm(T, T).reshape(st.N, p * p)).reshape(p, p)
            m = m - w @ btmv(T, t)
            yy -= float(w @ rowdot(t, t))
        return M, m, yy

    def gls_pieces(self, theta: ExpertParams, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted GLS normal equations at the expert's covariance parameters.

        Returns
        -------
        M : numpy.ndarray, shape (p, p)
            ``sum_i w_i X_i' V_i^-1 X_i``.
        m : numpy.ndarray, shape (p,)
            ``sum_i w_i X_i' V_i^-1 y_i``.
        """
        s2 = float(theta.sigma) ** 2
        M, m, _ = self._gls(theta.L / theta.sigma if self.stats.q else theta.L, w)
        return M / s2, m / s2

    def profiled(self, lam: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
        """Weighted ML fixed effects and residual SD at a relative factor ``lam`` (q, q).

        Notes
        -----
        ``beta = M^-1 m`` (the weighted GLS estimate, free of sigma) and
        ``sigma^2 = sum_i w_i r_i'V*_i^-1 r_i / sum_i w_i n_i = (y'V*^-1 y - beta'm) / n_w``: the same
        profiling the core engine's deviance performs, from the subject statistics.
        """
        M, m, yy = self._gls(lam, w)
        beta = np.linalg.solve(M, m)
        pwrss = max(yy - float(beta @ m), 1e-300)
        # the floor keeps an expert that collapses onto a few exactly fitted subjects (sigma -> 0,
        # likelihood -> +inf) finite; the model reports such experts (DegenerateExpertWarning)
        return beta, max(math.sqrt(pwrss / float(w @ self.stats.n)), self.sigma_floor)

    # ------------------------------------------------------------------ M-step
    def m_step(
        self,
        weights: np.ndarray,
        start: ExpertParams,
        step: float | None = None,
        control: MStepControl | None = None,
    ) -> ExpertParams:
        """Increase ``sum_i weights_i l_i``: Fisher scoring (or BOBYQA) on the engine's weighted profiled deviance.

        Parameters
        ----------
        weights : numpy.ndarray, shape (N,)
            Posterior probabilities of this expert.
        start : ExpertParams
            Warm start (its theta = ``L / sigma`` in lme4's layout).
        step : float, optional
            Initial trust-region radius of BOBYQA (``MStepControl.optimizer="bobyqa"``); near
            convergence the EM passes the size of the last change of theta. Fisher scoring sizes its
            steps itself and ignores it.
        control : MStepControl, optional
            Overrides the expert's settings (exploratory runs use a coarse M-step).

        Returns
        -------
        ExpertParams

        Notes
        -----
        ``PLSProblem.set_group_weights(w)`` scales each subject's whole log-likelihood, so
        ``deviance(theta, reml=False) = -2 sum_i w_i l_i`` with beta and sigma profiled out (flexmix's
        ``FLXMRlmm`` M-step maximises the same weighted likelihood). Both optimisers start at the current
        theta and keep only decreases of the deviance, and profiling beta and sigma can only improve on
        the current values: the weighted objective never decreases (a generalised EM step).

        Examples
        --------
        >>> new = expert.m_step(tau[:, 0], start)  # doctest: +SKIP
        """
        if self.pls is None:
            return self._wls(weights)
        pls, tmap = self.pls, self.theta_map
        pls.set_group_weights(weights)
        theta0 = tmap.theta_of([start.L / start.sigma])
        ctl = control or self.control
        try:
            if ctl.optimizer == "fisher":
                out = _fisher_scoring(pls, tmap, theta0, ctl)
                if out is not None:
                    theta, beta, sigma = out
                    lam = tmap.lambdas(theta)[0]
                    # the floor of :meth:`profiled` (an expert collapsing onto exactly fitted subjects)
                    if sigma >= self.sigma_floor:
                        return ExpertParams(beta=beta, L=sigma * lam, sigma=sigma)
                    return ExpertParams(beta=beta, L=self.sigma_floor * lam, sigma=self.sigma_floor)
                theta = theta0
            else:
                opt = minimize_bounded(
                    lambda th: pls.deviance(th, False),
                    theta0,
                    tmap.lower_bounds,
                    ftol_abs=ctl.ftol_abs,
                    xtol_abs=ctl.xtol_abs,
                    maxeval=ctl.maxeval,
                    initial_step=step,
                )
                theta = opt.x if np.isfinite(opt.fmin) else theta0
        finally:
            pls.set_group_weights(None)
        lam = tmap.lambdas(theta)[0]
        beta, sigma = self.profiled(lam, weights)
        return ExpertParams(beta=beta, L=sigma * lam, sigma=sigma)

    def _wls(self, w: np.ndarray) -> ExpertParams:
        """Weighted least squares of the regression expert (closed form)."""
        beta, sigma = self.profiled(np.zeros((0, 0)), w)
        return ExpertParams(beta=beta, L=np.zeros((0, 0)), sigma=sigma)



def _fisher_scoring(pls: PLSProblem, tmap: ThetaMap, theta0: np.ndarray, ctl: MStepControl):
    """Minimise the weighted ML profiled deviance by Fisher scoring with step halving, from ``theta0``.

    Returns ``(theta, beta, sigma)`` at the last accepted point (never worse than the start), or None
    when the deviance cannot be evaluated at ``theta0``.

    Notes
    -----
    Each iteration solves ``H d = g`` with the gradient and expected Hessian of
    :meth:`PLSProblem.ml_derivatives` (Levenberg-damped if H is not positive definite) and halves the
    step until the deviance decreases (Armijo). theta is unconstrained here: the deviance depends on
    Lambda only through ``Lambda Lambda'``, which a sign change of a column of Lambda leaves unchanged,
    so the result is mapped back to lme4's non-negative diagonal by flipping columns. It stops when
    the predicted decrease ``g'H^-1 g / 2`` is below ``ftol_abs``, the step below ``xtol_abs``, or after
    ``maxeval`` deviance evaluations. Fisher scoring converges in a few iterations from a warm start
    (each costs about two deviance evaluations), where BOBYQA needs 2 ntheta + 1 evaluations to build
    its first model alone.
    """
    f = pls.ml_factor(theta0)
    if f is None:
        return None
    d = pls.ml_derivatives(f)
    evals = 1
    n = len(theta0)
    while evals < ctl.maxeval:
        g, H = d.gradient, d.hessian
        mu = 0.0
        scale = max(float(np.trace(H)) / max(n, 1), 1e-300)
        step = None
        for _ in range(10):
            try:
                c = np.linalg.cholesky(H + mu * np.eye(n))
                step = np.linalg.solve(c.T, np.linalg.solve(c, g))
                break
            except np.linalg.LinAlgError:
                mu = 1e-8 * scale if mu == 0.0 else 100.0 * mu
        if step is None or not np.all(np.isfinite(step)):
            break
        dec = float(g @ step)
        if not dec > 2.0 * ctl.ftol_abs:
            break
        t, new = 1.0, None
        while evals < ctl.maxeval:
            evals += 1
            # the last allowed evaluation never needs derivatives: skip keeping its per-level factor
            ft = pls.ml_factor(f.theta - t * step, keep=evals < ctl.maxeval)
            if ft is not None and ft.deviance <= f.deviance - 1e-4 * t * dec:
                new = ft
                break
            t *= 0.5
        if new is None:
            break
        gain = f.deviance - new.deviance
        f, d = new, None
        # converged (quadratically: the next gain would be smaller still) or out of evaluations: the
        # derivatives at the new point are not needed, beta and sigma come with its factor
        if gain < ctl.ftol_abs or t * float(np.abs(step).max()) < ctl.xtol_abs or evals >= ctl.maxeval:
            break
        d = pls.ml_derivatives(f)
    beta, sigma = pls.ml_profiled(f) if d is None else (d.beta, d.sigma)
    # lme4's layout: non-negative diagonal of Lambda (flip the sign of columns with a negative one)
    lam = tmap.lambdas(f.theta)
    for lk in lam:
        lk *= np.where(np.diag(lk) < 0, -1.0, 1.0)[None, :]
    return tmap.theta_of(lam), beta, sigma
