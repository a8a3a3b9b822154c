"""Mixed-model experts of any response family: Laplace (or adaptive Gauss-Hermite) marginal likelihoods.

The E-step of a mixture of GLMM experts needs every subject's marginal log-likelihood under every
expert, ``l_ik = log int p(y_i | b) N(b; 0, G_k) db``. With ``b = Lambda_k u`` (``G_k = Lambda_k
Lambda_k'``, lme4's spherical random effects) the integrand is ``exp(h_ik(u)) / (2 pi)^(q/2)`` with

    h_ik(u) = sum_j log p(y_ij | eta_ij) - ||u||^2 / 2,   eta_ij = x_ij' beta_k + z_ij' Lambda_k u,

and the Laplace approximation (lme4's ``nAGQ = 1``) at the mode ``u_ik = argmax h_ik`` is

    l_ik ~= h_ik(u_ik) - log det(H_ik) / 2,   H_ik = I + Lambda_k' Z_i' W_ik Z_i Lambda_k,

with ``W`` the PIRLS (Fisher) weights at the mode, exactly lme4's ``glmResp::Laplace`` restricted to
one subject. For a Gaussian response ``h`` is quadratic and the approximation is exact.

Everything is batched over subjects x experts: the modes come from Newton (PIRLS) steps taken for all
subjects and experts at once, the q x q Hessians stored structure-of-arrays
(:mod:`memoe.core.linalg.soa`), per-subject sums by ``np.add.reduceat`` over rows sorted by subject, and
step halving decided per subject with masks. No Python loop runs over subjects.

Gradients of the Laplace log-likelihood are exact (the M-step and the sandwich need them): with the
envelope theorem for ``h`` and implicit differentiation of the mode for the log-determinant,

    d l / d xi = dh/dxi |_u + sum_j e_j d eta_j/dxi |_u + kappa' d(grad_u h)/dxi - tr(H^-1 dH/dxi |_eta) / 2,

where ``e_j = -s_j W'(eta_j) / 2`` (``s_j = z_j' Lambda H^-1 Lambda' z_j``) is the log-determinant's
sensitivity to ``eta_j`` and ``kappa = H_obs^-1 Lambda' Z' e`` carries it through the mode
(``H_obs`` uses the observed weights ``-d^2 log p / d eta^2``, equal to W for canonical links).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memoe.core.linalg.soa import soa_backward_solve_t, soa_cholesky, soa_forward_solve
from memoe.errors import ArgumentError, DataError, QuadratureError
from memoe.glmm.agq import MAX_NAGQ, gh_rule
from memoe.glmm.families import Family
from memoe.moe.data import SubjectStats
from memoe.moe.experts import ExpertGradients, ExpertParams, MStepControl, _sigma_floor
from memoe.moe.params import MoEParams
from memoe.moe.response import FAMILIES, RowFamily, resolve_family

__all__ = ["FAMILIES", "LaplaceEval", "LaplaceExpert", "RowFamily", "resolve_family"]

# Newton (PIRLS) on the modes: stop when every subject's step is below this (relative to 1 + |u|);
# Newton converges quadratically, so the modes are then exact to rounding
U_TOL = 1e-10
MAX_ITER = 60
# step halving gives up on a subject below this fraction of its Newton step (keeps its modes)
MIN_STEP = 1e-6


@dataclass(frozen=True)
class LaplaceEval:
    """One batched evaluation over M parameter sets (experts).

    Attributes
    ----------
    loglik : numpy.ndarray, shape (M, N)
        Laplace (or AGQ) marginal log-likelihood of each subject under each parameter set.
    u : numpy.ndarray, shape (q, M, N)
        Spherical conditional modes.
    b : numpy.ndarray, shape (M, N, q)
        Conditional modes of the random effects, ``Lambda u``.
    beta, dL, s2 : numpy.ndarray or None
        Per-subject gradients (shapes (M, N, p), (M, N, q, q), (M, N)) when requested;
        ``dL`` is the derivative with respect to every entry of ``Lambda = L``.
    """

    loglik: np.ndarray
    u: np.ndarray
    b: np.ndarray
    beta: np.ndarray | None = None
    dL: np.ndarray | None = None
    s2: np.ndarray | None = None


class LaplaceExpert:
    """A mixed-model expert of any response family, its per-subject marginal likelihood by Laplace or AGQ.

    Parameters
    ----------
    y, X, Z, codes, N
        Response (as the family's ``prepare`` leaves it), fixed- and random-effects columns, subject
        index of each row and number of subjects.
    family : Family or None
        None: Gaussian (then the residual SD is a parameter, as for :class:`GaussianExpert`).
    stats : SubjectStats or None
        Subject statistics of the linear design (k-means start features, the Gaussian SD floor); None
        for an expert used only to evaluate (prediction from a history).
    wt, ntrials : numpy.ndarray, shape (n,), optional
        Prior weights x trials and trials (defaults ones).
    nAGQ : int
        1: Laplace; > 1: adaptive Gauss-Hermite with that many nodes (scalar random effects only).
    control : MStepControl, optional
        ``maxeval`` bounds the L-BFGS evaluations of each M-step.

    Examples
    --------
    >>> import numpy as np
    >>> from memoe.glmm.families import get_family
    >>> from memoe.moe.data import subject_stats
    >>> rng = np.random.default_rng(1)
    >>> codes = np.repeat(np.arange(50), 6)
    >>> X = np.column_stack([np.ones(300), rng.normal(size=300)])
    >>> Z = X[:, :1]
    >>> y = (rng.uniform(size=300) < 0.5).astype(float)
    >>> ex = LaplaceExpert(y, X, Z, codes, 50, get_family("binomial"), subject_stats(y, X, Z, codes, 50))
    >>> ev = ex.evaluate(np.zeros((2, 2)), np.array([[[0.5]], [[1.0]]]))  # two experts at once
    >>> ev.loglik.shape                                                     # (experts, subjects)
    (2, 50)

    The same integrals as lme4's ``glmer(y ~ x + (1 | id), family = binomial, nAGQ = 1)`` per subject.

    Notes
    -----
    The experts' M-step is joint (see :meth:`memoe.moe.problem.MoEProblem.m_step`): L-BFGS on the expert
    part of psi with the exact gradient of ``sum_ik tau_ik l_ik``. The last converged modes are kept as
    the warm start of the next evaluation (the only mutable state); Newton converges to rounding from
    any start, so evaluations do not depend on it.
    """

    joint = True

    def __init__(
        self,
        y: np.ndarray,
        X: np.ndarray,
        Z: np.ndarray,
        codes: np.ndarray,
        N: int,
        family: Family | None,
        stats: SubjectStats | None,
        wt: np.ndarray | None = None,
        ntrials: np.ndarray | None = None,
        nAGQ: int = 1,
        control: MStepControl | None = None,
    ) -> None:
        n = len(y)
        order = np.argsort(codes, kind="stable")
        self.order = order
        cs = codes[order]
        counts = np.bincount(cs, minlength=N)
        if np.any(counts == 0):
            raise DataError("every subject needs at least one observation with a non-missing response")
        self.counts = counts
        self.starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        self.N, self.n = int(N), n
        self.p, self.q = X.shape[1], Z.shape[1]
        self.XT = np.ascontiguousarray(X[order].T)
        self.ZT = np.ascontiguousarray(Z[order].T)
        wt = np.ones(n) if wt is None else np.asarray(wt, dtype=float)
        ntrials = np.ones(n) if ntrials is None else np.asarray(ntrials, dtype=float)
        self.fam = RowFamily(family, np.asarray(y, dtype=float)[order], wt[order], ntrials[order])
        self.family = family
        self.stats = stats
        self.control = control or MStepControl()
        self.sigma_floor = _sigma_floor(stats) if family is None and stats is not None else 0.0
        self.nAGQ = check_nagq(nAGQ, self.q)
        # products of the random-effects columns, lower triangle, for the weighted cross-products
        self._ZZ = {(a, c): self.ZT[a] * self.ZT[c] for a in range(self.q) for c in range(a + 1)}
        self._u: np.ndarray | None = None
        self._cache: tuple[bytes, LaplaceEval] | None = None

    # ------------------------------------------------------------------ small pieces
    @property
    def dispersion(self) -> bool:
        """True when the family has a residual SD to estimate (Gaussian)."""
        return self.family is None

    def _sum(self, x: np.ndarray) -> np.ndarray:
        """Per-subject sums over the last (row) axis."""
        return np.add.reduceat(x, self.starts, axis=-1)

    def _rows(self, v: np.ndarray) -> np.ndarray:
        """Per-subject values (..., N) repeated on the subject's rows (..., n)."""
        return np.repeat(v, self.counts, axis=-1)

    def _re(self, lam: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``b = Lambda u`` (q, M, N) and its contribution ``Z b`` to eta (M, n)."""
        q = self.q
        b = np.einsum("mac,cmn->amn", lam, u) if q else np.zeros_like(u)
        out = np.zeros((lam.shape[0], self.n))
        for a in range(q):
            out += self.ZT[a] * self._rows(b[a])
        return b, out

    def _cross(self, W: np.ndarray) -> np.ndarray:
        """``C = Z_i' W Z_i`` per subject, shape (q, q, M, N)."""
        q = self.q
        C = np.empty((q, q, *W.shape[:-1], self.N))
        for (a, c), zz in self._ZZ.items():
            C[a, c] = self._sum(W * zz)
            C[c, a] = C[a, c]
        return C

    @staticmethod
    def _congr(lam: np.ndarray, C: np.ndarray) -> np.ndarray:
        """``I + Lambda' C Lambda`` per (expert, subject), shape (q, q, M, N)."""
        H = np.einsum("mca,cdmn,mdb->abmn", lam, C, lam)
        for a in range(lam.shape[1]):
            H[a, a] += 1.0
        return H

    @staticmethod
    def _solve(Lc: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``(Lc Lc')^-1 g`` for g (q, M, N)."""
        return soa_backward_solve_t(Lc, soa_forward_solve(Lc, g[:, None]))[:, 0]

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        beta: np.ndarray,
        L: np.ndarray,
        sigma: np.ndarray | None = None,
        gradient: bool = False,
        u0: np.ndarray | None = None,
    ) -> LaplaceEval:
        """Modes, marginal log-likelihoods and (optionally) their gradients for M parameter sets at once.

        Parameters
        ----------
        beta : numpy.ndarray, shape (M, p)
        L : numpy.ndarray, shape (M, q, q)
            Lower Cholesky factors of the random-effects covariances.
        sigma : numpy.ndarray, shape (M,), optional
            Residual SDs (Gaussian family only).
        gradient : bool
        u0 : numpy.ndarray, shape (q, M, N), optional
            Warm start of the modes.
        """
        M = beta.shape[0]
        s2 = None if sigma is None or not self.dispersion else (np.asarray(sigma, dtype=float) ** 2)[:, None]
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            eta0 = beta @ self.XT
            if self.q == 0:
                return self._no_random(eta0, s2, gradient)
            u = np.zeros((self.q, M, self.N)) if u0 is None else u0.copy()
            st = self._modes(eta0, L, s2, u)
            if self.nAGQ > 1:
                return self._agq(eta0, L, s2, st, gradient)
            return self._laplace(eta0, L, s2, st, gradient)

    def _no_random(self, eta0, s2, gradient) -> LaplaceEval:
        ll, d1, _ = self.fam.first(eta0, s2)
        M = eta0.shape[0]
        u = np.zeros((0, M, self.N))
        out = dict(loglik=self._sum(ll), u=u, b=np.zeros((M, self.N, 0)))
        if gradient:
            out["beta"] = np.moveaxis(self._sum(d1[None] * self.XT[:, None, :]), 0, -1)
            out["dL"] = np.zeros((M, self.N, 0, 0))
            if self.dispersion:
                r = self.fam.y - eta0
                out["s2"] = self._sum(-0.5 / s2 + 0.5 * r * r / s2**2)
        return LaplaceEval(**out)

    def _modes(self, eta0, lam, s2, u) -> dict:
        """PIRLS for every (expert, subject) at once, step halving per subject."""
        fam = self.fam
        _, re = self._re(lam, u)
        eta = eta0 + re
        ll, d1, W = fam.first(eta, s2)
        h = self._sum(ll) - 0.5 * np.einsum("amn,amn->mn", u, u)
        for _it in range(MAX_ITER):
            r = np.stack([self._sum(d1 * self.ZT[a]) for a in range(self.q)])
            C = self._cross(W)
            Lc = soa_cholesky(self._congr(lam, C))
            g = np.einsum("mca,cmn->amn", lam, r) - u
            delta = self._solve(Lc, g)
            bad_fac = ~np.all(np.isfinite(Lc[np.arange(self.q), np.arange(self.q)]), axis=0)
            delta[:, bad_fac] = 0.0
            if float(np.max(np.abs(delta), initial=0.0)) < U_TOL * (1.0 + float(np.max(np.abs(u), initial=0.0))):
                break
            fac = np.ones(h.shape)
            while True:
                u_t = u + fac * delta
                _, re = self._re(lam, u_t)
                eta_t = eta0 + re
                ll_t, d1_t, W_t = fam.first(eta_t, s2)
                h_t = self._sum(ll_t) - 0.5 * np.einsum("amn,amn->mn", u_t, u_t)
                # a rounding-level decrease near the mode is accepted; a subject whose step was given up
                # (fac = 0) stays where it is, whatever its value (also a non-finite one)
                worse = ~(h_t >= h - 1e-12 * (1.0 + np.abs(h))) & (fac > 0.0)
                if not worse.any():
                    break
                fac = np.where(worse, 0.5 * fac, fac)
                # a subject whose step keeps failing stays where it is
                fac[fac < MIN_STEP] = 0.0
            u, eta, ll, d1, W, h = u_t, eta_t, ll_t, d1_t, W_t, h_t
        else:
            # iterations exhausted (a subject far from its mode): the pieces at the modes reached
            r = np.stack([self._sum(d1 * self.ZT[a]) for a in range(self.q)])
            C = self._cross(W)
            Lc = soa_cholesky(self._congr(lam, C))
        return dict(u=u, eta=eta, ll=ll, d1=d1, W=W, h=h, r=r, C=C, Lc=Lc)

    def _laplace(self, eta0, lam, s2, st: dict, gradient: bool) -> LaplaceEval:
        q = self.q
        Lc, u, h = st["Lc"], st["u"], st["h"]
        logdet_half = np.log(Lc[0, 0])
        for a in range(1, q):
            logdet_half = logdet_half + np.log(Lc[a, a])
        loglik = h - logdet_half
        b = np.einsum("mac,cmn->amn", lam, u)
        out = dict(loglik=loglik, u=u, b=np.moveaxis(b, 0, -1))
        if not gradient:
            return LaplaceEval(**out)
        fam = self.fam
        eta, d1, r, C = st["eta"], st["d1"], st["r"], st["C"]
        Wobs, dW = fam.second(eta, s2)
        eye = np.zeros((q, q, *h.shape))
        for a in range(q):
            eye[a, a] = 1.0
        Linv = soa_forward_solve(Lc, eye)
        Hinv = np.einsum("cahn,cbhn->abhn", Linv, Linv)  # H^-1 = Linv' Linv (h: the expert axis)
        P = np.einsum("mac,cdmn,mbd->abmn", lam, Hinv, lam)  # Lambda H^-1 Lambda'
        s = np.zeros(eta.shape)
        for (a, c), zz in self._ZZ.items():
            s += (1.0 if a == c else 2.0) * zz * self._rows(P[a, c])
        e = -0.5 * s * dW
        re_ = np.stack([self._sum(e * self.ZT[a]) for a in range(q)])
        rho = np.einsum("mca,cmn->amn", lam, re_)
        if fam.canonical:
            Cobs = C
            kappa = self._solve(Lc, rho)
        else:
            Cobs = self._cross(Wobs)
            kappa = self._solve(soa_cholesky(self._congr(lam, Cobs)), rho)
        lk = np.einsum("mac,cmn->amn", lam, kappa)  # Lambda kappa
        v = np.zeros(eta.shape)
        for a in range(q):
            v += self.ZT[a] * self._rows(lk[a])
        wrow = d1 + e - Wobs * v
        gbeta = self._sum(wrow[None] * self.XT[:, None, :])  # (p, M, N)
        # d l / d Lambda_cd = (r + r_e)_c u_d - (C Lambda H^-1)_cd + kappa_d r_c - (C_obs Lambda kappa)_c u_d
        CLH = np.einsum("cemn,med,dbmn->cbmn", C, lam, Hinv)
        CLk = np.einsum("cdmn,dmn->cmn", Cobs, lk)
        dL = (
            (r + re_ - CLk)[:, None] * u[None, :]
            - CLH
            + r[:, None] * kappa[None, :]
        )
        out["beta"] = np.moveaxis(gbeta, 0, -1)
        out["dL"] = np.moveaxis(dL, (0, 1), (-2, -1))
        if self.dispersion:
            res = fam.y - eta
            tr_hinv = sum(Hinv[a, a] for a in range(q))
            out["s2"] = self._sum(-0.5 / s2 + 0.5 * res * res / s2**2) + 0.5 * (q - tr_hinv) / s2
        return LaplaceEval(**out)

    def _agq(self, eta0, lam, s2, st: dict, gradient: bool) -> LaplaceEval:
        """Adaptive Gauss-Hermite for one scalar random effect (nodes at the mode, scaled by H^-1/2).

        ``l = log s + log sum_k w_k exp(h(u + s z_k) + z_k^2 / 2)``, ``s = H^-1/2``. Its exact gradient:
        ``sum_k omega_k dh(u_k)/dxi`` (nodes held; Fisher's identity by the same rule) plus the moves of
        the nodes, ``A du/dxi + (1/s + sum_k omega_k h'(u_k) z_k) ds/dxi`` with ``A = sum_k omega_k h'(u_k)``
        (both vanish as the rule becomes exact); ``du/dxi`` is the mode's implicit derivative and
        ``ds/dxi = s d(-log H / 2)/dxi``, the Laplace gradient's log-determinant part.
        """
        z, w = gh_rule(self.nAGQ)
        fam = self.fam
        u0, Lc = st["u"][0], st["Lc"][0, 0]  # (M, N); Lc = sqrt(H)
        sd = 1.0 / Lc
        lam1 = lam[:, 0, 0][:, None]  # (M, 1)
        zrow = self.ZT[0]
        U = u0[None] + z[:, None, None] * sd[None]  # (nodes, M, N)
        eta = eta0[None] + lam1[None] * zrow * self._rows(U)
        ll, d1, _ = fam.first(eta, s2)
        hk = self._sum(ll) - 0.5 * U * U
        a = np.log(w)[:, None, None] + hk + 0.5 * (z * z)[:, None, None]
        amax = a.max(axis=0)
        ex = np.exp(a - amax)
        tot = ex.sum(axis=0)
        loglik = np.log(sd) + amax + np.log(tot)
        out = dict(loglik=loglik, u=st["u"], b=(lam1 * u0)[:, :, None])
        if not gradient:
            return LaplaceEval(**out)
        om = ex / tot  # (nodes, M, N) posterior weights of the nodes
        rz = self._sum(d1 * zrow)  # (nodes, M, N): sum_j d log p / d eta_j z_j at each node
        gb = self._sum(d1[:, None] * self.XT[None, :, None, :])  # (nodes, p, M, N)
        fixed_b = np.einsum("kmn,kpmn->pmn", om, gb)
        fixed_l = (om * rz * U).sum(axis=0)
        hprime = lam1[None] * rz - U  # h'(u_k)
        A = (om * hprime).sum(axis=0)
        Bs = 1.0 + sd * (om * hprime * z[:, None, None]).sum(axis=0)  # (1/s + sum omega h' z) * s
        # Laplace pieces at the mode: the log-determinant part D = Laplace gradient - dh/dxi at the mode
        lap = self._laplace(eta0, lam, s2, st, True)
        eta_m, d1_m, r_m = st["eta"], st["d1"], st["r"][0]
        Wobs, _ = fam.second(eta_m, s2)
        Dl = lap.dL[:, :, 0, 0] - r_m * u0
        hb = self._sum(d1_m[None] * self.XT[:, None, :])  # (p, M, N)
        Db = np.moveaxis(lap.beta, -1, 0) - hb
        Hobs = 1.0 + lam1 * lam1 * self._sum(Wobs * zrow * zrow)
        du_b = -lam1[None] * self._sum((Wobs * zrow)[None] * self.XT[:, None, :]) / Hobs[None]
        du_l = (r_m - lam1 * self._sum(Wobs * zrow * zrow) * u0) / Hobs
        gbeta = fixed_b + A[None] * du_b + Bs[None] * Db
        glam = fixed_l + A * du_l + Bs * Dl
        out["beta"] = np.moveaxis(gbeta, 0, -1)
        out["dL"] = glam[:, :, None, None]
        if self.dispersion:
            res = fam.y - eta
            fixed_s = (om * self._sum(-0.5 / s2 + 0.5 * res * res / s2**2)).sum(axis=0)
            res_m = fam.y - eta_m
            Ds = lap.s2 - self._sum(-0.5 / s2 + 0.5 * res_m * res_m / s2**2)
            du_s = -(u0 / s2) / Hobs
            out["s2"] = fixed_s + A * du_s + Bs * Ds
        return LaplaceEval(**out)

    # ------------------------------------------------------------------ the interface the EM uses
    def evaluate_params(self, params: MoEParams, gradient: bool = False) -> LaplaceEval:
        """:meth:`evaluate` at every expert of ``params``, warm-started and cached on the parameter values."""
        key = bytes([self.nAGQ]) + b"".join(
            np.ascontiguousarray(a, dtype=float).tobytes() for a in (params.beta, params.L, params.sigma)
        )
        if self._cache is not None and self._cache[0] == key and (not gradient or self._cache[1].beta is not None):
            return self._cache[1]
        u0 = self._u if self._u is not None and self._u.shape[1] == params.K else None
        ev = self.evaluate(params.beta, params.L, params.sigma, gradient=gradient, u0=u0)
        if np.all(np.isfinite(ev.u)):
            self._u = ev.u
        self._cache = (key, ev)
        return ev

    def loglik_all(self, params: MoEParams) -> np.ndarray:
        """``l_ik`` of every subject under every expert, shape (N, K)."""
        # with the gradients: the M-step and the scores then reuse this evaluation (cache)
        return self.evaluate_params(params, gradient=True).loglik.T

    def gradients_all(self, params: MoEParams) -> list[ExpertGradients]:
        """Per-expert :class:`ExpertGradients` (with ``dL``) at ``params``."""
        ev = self.evaluate_params(params, gradient=True)
        N, q = self.N, self.q
        out = []
        for k in range(params.K):
            s2 = ev.s2[k] if ev.s2 is not None else np.zeros(N)
            out.append(ExpertGradients(ev.loglik[k], ev.beta[k], np.zeros((N, q, q)), s2, dL=ev.dL[k]))
        return out

    def subject_loglik(self, theta: ExpertParams) -> np.ndarray:
        """Marginal log-likelihood of each subject under one expert, shape (N,)."""
        ev = self.evaluate(theta.beta[None], theta.L[None], np.array([theta.sigma]))
        return ev.loglik[0]

    def subject_gradients(self, theta: ExpertParams) -> ExpertGradients:
        ev = self.evaluate(theta.beta[None], theta.L[None], np.array([theta.sigma]), gradient=True)
        s2 = ev.s2[0] if ev.s2 is not None else np.zeros(self.N)
        return ExpertGradients(ev.loglik[0], ev.beta[0], np.zeros((self.N, self.q, self.q)), s2, dL=ev.dL[0])

    def modes(self, params: MoEParams) -> np.ndarray:
        """Conditional modes ``b_ik`` (random effects given membership in expert k), shape (K, N, q)."""
        return self.evaluate_params(params).b

    def conditional_sd(self, params: MoEParams) -> np.ndarray:
        """SDs of the Laplace posterior of each subject's random effects under each expert, (K, N, q).

        ``sqrt(diag(Lambda H^-1 Lambda'))`` at the mode (glmer's ``condVar``).
        """
        ev = self.evaluate_params(params)
        q = self.q
        if q == 0:
            return np.zeros((params.K, self.N, 0))
        s2 = (np.asarray(params.sigma, dtype=float) ** 2)[:, None] if self.dispersion else None
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            st = self._modes(params.beta @ self.XT, params.L, s2, ev.u)
        eye = np.zeros((q, q, params.K, self.N))
        for a in range(q):
            eye[a, a] = 1.0
        Linv = soa_forward_solve(st["Lc"], eye)
        Hinv = np.einsum("camn,cbmn->abmn", Linv, Linv)
        P = np.einsum("mac,cdmn,mad->amn", params.L, Hinv, params.L)
        return np.moveaxis(np.sqrt(np.clip(P, 0.0, None)), 0, -1)

    # ------------------------------------------------------------------ starts
    def initial(self, tau: np.ndarray, sd0: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start values from soft assignments: each expert's posterior-weighted GLM (IRLS, no random effects).

        Returns ``beta`` (K, p), ``L`` (K, q, q) = ``sd0 I`` (lme4's start: identity relative factor) and
        ``sigma`` (K,).
        """
        K = tau.shape[1]
        fam = self.fam
        beta = np.zeros((K, self.p))
        sigma = np.ones(K)
        XT = self.XT
        for k in range(K):  # one small weighted IRLS per expert (K of them, not per subject)
            wrow = self._rows(tau[:, k])
            if fam.gaussian:
                A = (XT * wrow) @ XT.T
                b = np.linalg.lstsq(A, (XT * wrow) @ fam.y, rcond=None)[0]
                res = fam.y - b @ XT
                sigma[k] = max(math.sqrt(float(wrow @ (res * res)) / max(float(wrow.sum()), 1e-12)), self.sigma_floor)
                beta[k] = b
                continue
            mu = fam.family.mustart(fam.y, fam.wt, fam.ntrials)
            eta = fam.family.linkfun(mu)
            b = np.zeros(self.p)
            for _ in range(25):
                dmu = fam.family.mu_eta(eta)
                wts = wrow * fam.wt * dmu * dmu / fam.family.variance(fam.family.linkinv(eta))
                zw = eta + (fam.y - fam.family.linkinv(eta)) / dmu
                A = (XT * wts) @ XT.T + 1e-8 * np.eye(self.p)
                b_new = np.linalg.solve(A, (XT * wts) @ zw)
                eta = np.clip(b_new @ XT, -30.0, 30.0)
                if np.max(np.abs(b_new - b)) < 1e-8 * (1.0 + np.max(np.abs(b))):
                    b = b_new
                    break
                b = b_new
            beta[k] = b
        L = np.repeat(sd0 * np.eye(self.q)[None], K, axis=0)
        if fam.gaussian:
            L = L * sigma[:, None, None]
        return beta, L, sigma

    # ------------------------------------------------------------------ prediction
    def linear_predictor_rows(self, params: MoEParams, b: np.ndarray) -> np.ndarray:
        """``X beta_k + Z b_ik`` on the rows in the caller's (unsorted) order, shape (n, K)."""
        eta = params.beta @ self.XT
        for a in range(self.q):
            eta = eta + self.ZT[a] * self._rows(b[:, :, a])
        out = np.empty((self.n, params.K))
        out[self.order] = eta.T
        return out


def check_nagq(nAGQ, q: int) -> int:
    """``nAGQ``: 1 (Laplace) or more Gauss-Hermite nodes for one scalar random effect (as glmer).

    Raises
    ------
    ArgumentError
        Not an integer in 1..100.
    QuadratureError
        ``nAGQ > 1`` with more than one random effect per subject.
    """
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, int | np.integer) or not 1 <= int(nAGQ) <= MAX_NAGQ:
        raise ArgumentError(f"nAGQ must be an integer between 1 (Laplace) and {MAX_NAGQ}, got {nAGQ!r}")
    if nAGQ > 1 and q != 1:
        raise QuadratureError(
            f"nAGQ > 1 (adaptive Gauss-Hermite) needs a single scalar random effect per subject, as glmer; "
            f"this model has {q}; use nAGQ=1 (Laplace)"
        )
    return int(nAGQ)
