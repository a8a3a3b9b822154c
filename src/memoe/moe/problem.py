"""The estimation problem of a mixture of experts: E-step, M-step, observed log-likelihood and scores.

A :class:`MoEProblem` is immutable in what it means (data, K, structure); its only mutable part is
the core engine's scratch weights inside the expert, set and cleared within each M-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from memoe.moe.experts import ExpertParams, GaussianExpert, MStepControl
from memoe.moe.gating import gate_log_probs, gate_newton, gate_scores
from memoe.moe.kernels import logsumexp_rows
from memoe.moe.params import MoEParams
from memoe.moe.structure import Structure

__all__ = ["EStep", "MoEProblem"]


@dataclass(frozen=True)
class EStep:
    """Everything the E-step computes at one parameter value.

    Attributes
    ----------
    log_gate : numpy.ndarray, shape (N, K)
        ``log pi_ik``.
    loglik_ik : numpy.ndarray, shape (N, K)
        ``log p_k(y_i)``, each expert's exact marginal log-likelihood.
    subject_loglik : numpy.ndarray, shape (N,)
        ``log sum_k pi_ik p_k(y_i)``.
    tau : numpy.ndarray, shape (N, K)
        Posterior probabilities.
    """

    log_gate: np.ndarray
    loglik_ik: np.ndarray
    subject_loglik: np.ndarray
    tau: np.ndarray

    @property
    def loglik(self) -> float:
        return float(self.subject_loglik.sum())

    @property
    def mass(self) -> np.ndarray:
        """Posterior mass of each expert, shape (K,)."""
        return self.tau.sum(axis=0)


class MoEProblem:
    """A K-expert mixture on fixed data.

    Parameters
    ----------
    W : numpy.ndarray, shape (N, r)
        Gating design (a single column of ones for constant class proportions).
    expert : GaussianExpert
        The expert family on the subject statistics (all K experts share the data).
    structure : Structure
    """

    def __init__(self, W: np.ndarray, expert: GaussianExpert, structure: Structure) -> None:
        self.W = W
        self.expert = expert
        self.structure = structure
        self.K = structure.K
        self.N = W.shape[0]

    # ------------------------------------------------------------------ E-step
    @staticmethod
    def expert_params(params: MoEParams, k: int) -> ExpertParams:
        return ExpertParams(beta=params.beta[k], L=params.L[k], sigma=float(params.sigma[k]))

    @property
    def joint(self) -> bool:
        """True for experts evaluated jointly (Laplace / AGQ experts: batched over experts, joint M-step)."""
        return bool(getattr(self.expert, "joint", False))

    def expert_logliks(self, params: MoEParams) -> np.ndarray:
        """``log p_k(y_i)`` of every subject under every expert, shape (N, K)."""
        if self.joint:
            return self.expert.loglik_all(params)
        return np.column_stack([self.expert.subject_loglik(self.expert_params(params, k)) for k in range(self.K)])

    def expert_gradients(self, params: MoEParams) -> list:
        """Per-expert :class:`~memoe.moe.experts.ExpertGradients` at ``params``."""
        if self.joint:
            return self.expert.gradients_all(params)
        return [self.expert.subject_gradients(self.expert_params(params, k)) for k in range(self.K)]

    def e_step(self, params: MoEParams) -> EStep:
        """Posterior probabilities and the observed-data log-likelihood at ``params``."""
        lg = gate_log_probs(self.W, params.gamma)
        ll = self.expert_logliks(params)
        a = lg + ll
        lse = logsumexp_rows(a)
        with np.errstate(invalid="ignore"):
            tau = np.exp(a - lse[:, None])
        return EStep(log_gate=lg, loglik_ik=ll, subject_loglik=lse, tau=tau)

    # ------------------------------------------------------------------ M-step
    def m_step(
        self,
        tau: np.ndarray,
        params: MoEParams,
        previous: MoEParams | None = None,
        control: MStepControl | None = None,
    ) -> MoEParams:
        """One (generalised) M-step from ``params`` with posterior weights ``tau`` (N, K).

        ``previous`` (the parameters one iteration earlier) sizes the optimiser's first steps;
        ``control`` overrides the expert's M-step settings.
        """
        ctl = control or getattr(self.expert, "control", None)
        gamma = gate_newton(self.W, tau, params.gamma, max_iter=getattr(ctl, "gate_iter", 25))
        if self.joint:
            return self._joint_m_step(tau, params.replace(gamma=gamma), control)
        if self.structure.coupled:
            return self._coupled_m_step(tau, params.replace(gamma=gamma))
        beta, L, sigma = params.beta.copy(), params.L.copy(), params.sigma.copy()
        for k in range(self.K):
            step = None
            if previous is not None and params.L.size:
                d = np.abs(params.L[k] / params.sigma[k] - previous.L[k] / previous.sigma[k]).max()
                step = float(np.clip(2.0 * d, 1e-4, 0.5))
            th = self.expert.m_step(tau[:, k], self.expert_params(params, k), step, control)
            beta[k], L[k], sigma[k] = th.beta, th.L, th.sigma
        return MoEParams(gamma=gamma, beta=beta, L=L, sigma=sigma)

    def initial_params(self, tau: np.ndarray, control: MStepControl | None = None) -> MoEParams:
        """Parameters from a soft assignment: separate weighted fits, then the sharing imposed."""
        st = self.structure
        if self.joint:
            beta, L, sigma = self.expert.initial(tau)
            params = MoEParams(gamma=gate_newton(self.W, tau, np.zeros((self.K, st.r))), beta=beta, L=L, sigma=sigma)
            if st.coupled:
                params = st.project(params, tau.sum(axis=0))
            return self._joint_m_step(tau, params, control)
        start = MoEParams(
            gamma=np.zeros((self.K, st.r)),
            beta=np.zeros((self.K, st.p)),
            L=np.repeat(np.eye(st.q)[None], self.K, axis=0),
            sigma=np.ones(self.K),
        )
        beta, L, sigma = start.beta.copy(), start.L.copy(), start.sigma.copy()
        for k in range(self.K):
            # lme4's start: identity relative factor (L = sigma I with sigma = 1)
            th = self.expert.m_step(tau[:, k], self.expert_params(start, k), None, control)
            beta[k], L[k], sigma[k] = th.beta, th.L, th.sigma
        gamma = gate_newton(self.W, tau, start.gamma)
        params = MoEParams(gamma=gamma, beta=beta, L=L, sigma=sigma)
        if st.coupled:
            params = st.project(params, tau.sum(axis=0))
            params = self._coupled_m_step(tau, params)
        return params

    def expert_q(self, tau: np.ndarray, params: MoEParams) -> float:
        """Expert part of the Q-function, ``sum_ik tau_ik log p_k(y_i)``."""
        return float(np.sum(tau * self.expert_logliks(params)))

    def _coupled_m_step(self, tau: np.ndarray, params: MoEParams, maxiter: int = 5) -> MoEParams:
        """M-step when experts share parameters: exact joint GLS for beta, then L-BFGS on the variances.

        Notes
        -----
        Conditional maximisation (ECM): given the covariance parameters, the fixed effects maximise
        ``sum_k sum_i tau_ik l_ik`` in closed form, ``(sum_k E_k' M_k E_k) beta = sum_k E_k' m_k``, where
        ``E_k`` maps the free coefficients to expert k's and ``M_k, m_k`` are the weighted GLS sums.
        Then the variance part of psi (log-Cholesky entries, ``log omega``, ``log sigma``) is moved by
        L-BFGS with the analytic gradient, and the move is kept only if it increases Q.
        """
        st = self.structure
        bidx = st.beta_index() - st.offsets["beta"]
        nb = st.n_shared + st.K * st.n_specific
        H = np.zeros((nb, nb))
        h = np.zeros(nb)
        for k in range(self.K):
            M, m = self.expert.gls_pieces(self.expert_params(params, k), tau[:, k])
            H[np.ix_(bidx[k], bidx[k])] += M
            h[bidx[k]] += m
        try:
            b = np.linalg.solve(H, h)
            cand = params.replace(beta=b[bidx])
            if self.expert_q(tau, cand) >= self.expert_q(tau, params):
                params = cand
        except np.linalg.LinAlgError:
            pass
        psi0 = st.pack(params)
        o = st.offsets["cov"]
        var0 = psi0[o:]
        if var0.size == 0:
            return params

        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            psi = psi0.copy()
            psi[o:] = v
            p = st.unpack(psi)
            grads = [self.expert.subject_gradients(self.expert_params(p, k)) for k in range(self.K)]
            q = sum(float(tau[:, k] @ grads[k].loglik) for k in range(self.K))
            if not np.isfinite(q):
                return 1e300, np.zeros_like(v)
            g = st.expert_scores(psi, tau, grads).sum(axis=0)[o - st.n_gate :]
            return -q, -g

        f0, _ = fun(var0)
        res = minimize(fun, var0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
        if res.fun <= f0 and np.all(np.isfinite(res.x)):
            psi0[o:] = res.x
            params = st.unpack(psi0).replace(gamma=params.gamma)
        return params

    def _joint_m_step(self, tau: np.ndarray, params: MoEParams, control: MStepControl | None = None) -> MoEParams:
        """M-step of jointly evaluated (Laplace / AGQ) experts: L-BFGS on the expert part of psi.

        Notes
        -----
        Maximises ``Q(psi_e) = sum_k sum_i tau_ik l_ik(psi_e)`` (the posterior-weighted marginal
        log-likelihoods: each subject's whole contribution weighted by its posterior probability) with
        the exact gradient ``sum_i`` of :meth:`Structure.expert_scores`, from the current values. The
        experts' parameters are separable unless the structure shares them; one L-BFGS over all of
        them evaluates every expert in one batched pass. ``control.maxeval`` bounds the evaluations
        (a generalised EM step when it binds); the move is kept only if Q increased, so the EM stays
        monotone up to the approximation.
        """
        st = self.structure
        ctl = control or self.expert.control
        psi0 = st.pack(params)
        o = st.n_gate
        floor = float(getattr(self.expert, "sigma_floor", 0.0))

        def evaluate(v: np.ndarray):
            psi = psi0.copy()
            psi[o:] = v
            p = st.unpack(psi)
            if np.any(p.sigma < floor) or not np.all(np.isfinite(v)):
                return None
            grads = self.expert_gradients(p)
            q = float(sum(tau[:, k] @ grads[k].loglik for k in range(self.K)))
            S = st.expert_scores(psi, tau, grads)
            if not (np.isfinite(q) and np.all(np.isfinite(S))):
                return None
            return q, S

        v0 = psi0[o:].copy()
        start = evaluate(v0)
        if start is None:
            return params
        q0, S0 = start
        # precondition by the BHHH matrix sum_i s_i s_i' (the weighted outer product of the per-subject
        # scores, an estimate of the information): the first quasi-Newton step is then a scoring step,
        # whatever the scales of beta and the covariance parameters
        B = S0.T @ S0
        B += 1e-8 * max(float(np.trace(B)) / max(len(v0), 1), 1e-12) * np.eye(len(v0))
        try:
            T = np.linalg.inv(np.linalg.cholesky(B)).T  # v = v0 + T w, T T' = B^-1
        except np.linalg.LinAlgError:
            T = np.eye(len(v0))

        def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
            r = evaluate(v0 + T @ w)
            if r is None:
                return 1e300, np.zeros_like(w)
            return -r[0], -(T.T @ r[1].sum(axis=0))

        # a generalised M-step: a few quasi-Newton iterations (maxeval / 20), exact when maxeval is large
        iters = max(1, int(ctl.maxeval) // 20)
        res = minimize(
            fun, np.zeros(len(v0)), jac=True, method="L-BFGS-B",
            options={"maxiter": iters, "maxfun": 2 * iters + 2, "ftol": 1e-15, "gtol": 1e-10},
        )
        if np.all(np.isfinite(res.x)) and -res.fun >= q0:
            psi0[o:] = v0 + T @ res.x
        return st.unpack(psi0)

    # ------------------------------------------------------------------ observed-data scores
    def subject_scores(self, params: MoEParams, e: EStep | None = None) -> np.ndarray:
        """Per-subject observed-data scores ``d log p(y_i | w_i) / d psi``, shape (N, size).

        Notes
        -----
        Louis/Oakes: the observed-data score is the posterior expectation of the complete-data score,
        ``s_i = sum_k tau_ik d/dpsi [log pi_ik + l_ik]``; the gate's part is ``w_i (tau_ik - pi_ik)``.
        """
        st = self.structure
        e = e or self.e_step(params)
        psi = st.pack(params)
        gs = gate_scores(self.W, e.tau, np.exp(e.log_gate))
        grads = self.expert_gradients(params)
        es = st.expert_scores(psi, e.tau, grads)
        return np.hstack([gs, es])

    def loglik_and_score(self, psi: np.ndarray) -> tuple[float, np.ndarray]:
        """Observed log-likelihood and total score at psi (one E-step and one gradient pass)."""
        params = self.structure.unpack(psi)
        e = self.e_step(params)
        return e.loglik, self.subject_scores(params, e).sum(axis=0)

    def loglik_psi(self, psi: np.ndarray) -> float:
        return self.e_step(self.structure.unpack(psi)).loglik

    def score_psi(self, psi: np.ndarray) -> np.ndarray:
        """Total observed-data score at psi, shape (size,)."""
        return self.subject_scores(self.structure.unpack(psi)).sum(axis=0)
