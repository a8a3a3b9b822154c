"""Structured Gaussian experts: class-specific residual correlation and variance functions (the marginal path).

Given ``z_i = k``, subject i's rows follow

    y_i ~ N(X_i beta_k, V_ik),   V_ik = Z_i G_k Z_i' + sigma_k^2 S_ik C_ik S_ik,

with ``C_ik`` an nlme correlation structure (AR1, CAR1, ARMA, CompSymm, Symm, spatial) acting within
the subject and ``S_ik = diag(s_ik)`` the SD ratios of an nlme variance function (VarIdent, VarPower
/ VarExp / VarConstPower of a covariate, VarFixed, VarComb); every expert has its own correlation and
variance parameters. The per-subject matrices are those of :mod:`memoe.marginal` (``memoe.lme``): the
structures are bound once to the subjects (:class:`~memoe.marginal.problem.MarginalProblem`) and
``covariances(x)`` returns, per bucket of subjects with the same number of rows, the stacked relative
covariances ``W_i = V_i / sigma^2``. Every computation below is batched over a bucket; the loops run over
buckets (distinct subject sizes) and experts only.

Parameter layout of one expert: ``x = [theta, u_cor, u_var]`` (lme4's theta of ``Lambda = L / sigma``,
then the structures' unconstrained parameters, the order of :class:`MarginalProblem`). The mixture's
unconstrained vector psi appends each expert's ``[u_cor, u_var]`` after the Gaussian layout of
:class:`~memoe.moe.structure.Structure` (see :class:`StructuredStructure`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memoe.core.linalg.batched import (
    batched_backward_solve_t,
    batched_cholesky,
    batched_forward_solve,
    batched_logdet_chol,
)
from memoe.core.optim import minimize_bounded
from memoe.core.optim.start import best_start
from memoe.errors import ArgumentError, ArgumentTypeError, DataError, FormulaError
from memoe.moe.experts import ExpertGradients, ExpertParams, MStepControl, _sigma_floor
from memoe.moe.gating import gate_newton
from memoe.moe.params import MoEParams
from memoe.moe.problem import MoEProblem
from memoe.moe.structure import Structure

__all__ = [
    "StructuredExpert",
    "StructuredExpertParams",
    "StructuredGradients",
    "StructuredParams",
    "StructuredProblem",
    "StructuredStructure",
    "build_structured_expert",
]

LOG_2PI = math.log(2.0 * math.pi)
# relative step of the central differences of the per-subject log-likelihood in the structures' parameters
_FD_STEP = 2e-5
# an M-step with at least this many evaluations is a whole fit (K = 1): it restarts BOBYQA at the optimum
_PRECISE_MAXEVAL = 10_000


# ---------------------------------------------------------------------------------------------- containers
@dataclass(frozen=True)
class StructuredExpertParams(ExpertParams):
    """One structured expert: ``beta``, ``L``, ``sigma`` and ``extra = [u_cor, u_var]`` (unconstrained)."""

    extra: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass(frozen=True)
class StructuredGradients(ExpertGradients):
    """:class:`ExpertGradients` plus ``extra`` (N, s): ``d l_i / d [u_cor, u_var]`` (unconstrained scale)."""

    extra: np.ndarray | None = None


@dataclass(frozen=True)
class StructuredParams(MoEParams):
    """:class:`MoEParams` plus ``extra`` (K, s): each expert's unconstrained structure parameters."""

    extra: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def _fields(self) -> dict:
        return dict(gamma=self.gamma, beta=self.beta, L=self.L, sigma=self.sigma, extra=self.extra)

    def replace(self, **kw) -> StructuredParams:
        d = self._fields()
        d.update(kw)
        return StructuredParams(**d)

    def permute(self, order: np.ndarray) -> StructuredParams:
        base = MoEParams.permute(self, order)
        return StructuredParams(
            gamma=base.gamma, beta=base.beta, L=base.L, sigma=base.sigma, extra=self.extra[np.asarray(order)]
        )

    def distance(self, other: MoEParams) -> float:
        out = MoEParams.distance(self, other)
        oe = getattr(other, "extra", None)
        if self.extra.size and oe is not None and np.shape(oe) == self.extra.shape:
            out = max(out, float(np.max(np.abs(self.extra - oe) / (np.abs(oe) + 1e-3))))
        return out


def as_structured(params: MoEParams, extra: np.ndarray) -> StructuredParams:
    """``params`` with the structure parameters ``extra`` (K, s) attached (kept if it has its own)."""
    if isinstance(params, StructuredParams):
        return params
    return StructuredParams(gamma=params.gamma, beta=params.beta, L=params.L, sigma=params.sigma, extra=extra)


# ---------------------------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class StructuredStructure(Structure):
    """:class:`Structure` with ``n_extra`` class-specific structure parameters per expert appended to psi.

    Attributes
    ----------
    extra_names : tuple of str
        Names of one expert's unconstrained structure parameters (``cor:Phi``, ``var:2``, ...).
    natural_labels : tuple of (str, str)
        ``(part, term)`` of one expert's natural-scale structure parameters (``("cor", "Phi")``,
        ``("var", "2")``), in :meth:`natural_extra` order.
    natural_extra : callable
        ``u -> natural values`` of one expert (nlme's scale: Phi, SD ratios, powers).
    """

    extra_names: tuple = ()
    natural_labels: tuple = ()
    natural_extra: object = None

    @property
    def n_extra(self) -> int:
        return len(self.extra_names)

    @property
    def coupled(self) -> bool:
        return Structure.coupled.fget(self)

    @property
    def offsets(self) -> dict[str, int]:
        o = Structure.offsets.fget(self)
        o["extra"] = o["end"]
        o["end"] = o["end"] + self.K * self.n_extra
        return o

    def pack(self, params: MoEParams) -> np.ndarray:
        psi = Structure.pack(self, params)
        o = self.offsets["extra"]
        psi[o:] = np.asarray(params.extra, dtype=float).ravel()
        return psi

    def unpack(self, psi: np.ndarray) -> StructuredParams:
        base = Structure.unpack(self, psi)
        o = self.offsets["extra"]
        extra = np.asarray(psi[o:], dtype=float).reshape(self.K, self.n_extra).copy()
        return as_structured(base, extra)

    def project(self, params: MoEParams, mass: np.ndarray) -> MoEParams:
        base = Structure.project(self, params, mass)
        return as_structured(base, params.extra).replace(beta=base.beta, L=base.L, sigma=base.sigma)

    def expert_scores(self, psi: np.ndarray, tau: np.ndarray, grads: list) -> np.ndarray:
        """:meth:`Structure.expert_scores` plus the posterior-weighted scores of the structure parameters."""
        out = Structure.expert_scores(self, psi, tau, grads)
        o = self.offsets["extra"] - self.n_gate
        s = self.n_extra
        for k in range(self.K):
            g = getattr(grads[k], "extra", None)
            if s and g is not None:
                out[:, o + k * s : o + (k + 1) * s] += tau[:, k : k + 1] * g
        return out

    def names(self, fixef: list[str], z_names: list[str], gate: list[str]) -> list[str]:
        return Structure.names(self, fixef, z_names, gate) + [
            f"{n}{k + 1}" for k in range(self.K) for n in self.extra_names
        ]

    def natural_rows(self, k: int) -> list[tuple[str, int, str]]:
        """``(part, expert, term)`` of expert k's (0-based) natural structure parameters."""
        return [(part, k + 1, term) for part, term in self.natural_labels]

    def natural_values(self, params: MoEParams, k: int) -> np.ndarray:
        return np.asarray(self.natural_extra(params.extra[k]), dtype=float)


# ---------------------------------------------------------------------------------------------- expert
class StructuredExpert:
    """Gaussian linear mixed-model expert with nlme residual structures (``memoe.lme``'s likelihood).

    Parameters
    ----------
    problem : memoe.marginal.problem.MarginalProblem
        The structures bound to the mixture's subjects (the layout's groups are the subjects, in the
        order of ``stats``); its ``covariances(x)`` gives each bucket's relative covariances.
    stats : SubjectStats
        The subjects' statistics (the multi-start's two-stage features and the residual-SD floor).
    control : MStepControl, optional
    x0_extra : numpy.ndarray, optional
        Starting ``[u_cor, u_var]`` of every expert (default: the structures' own starts).

    Notes
    -----
    With ``W_i = L_i L_i'`` (batched Cholesky), ``e_i = L_i^-1 (y_i - X_i beta)``:
    ``l_i = -1/2 [n_i log(2 pi sigma^2) + log|W_i| + ||e_i||^2 / sigma^2]``. The M-step maximises
    ``sum_i w_i l_i``: for fixed ``x`` the weighted GLS estimate of beta and ``sigma^2 = sum_i w_i
    ||e_i||^2 / sum_i w_i n_i`` are closed form (nlme's profiling with subject weights), and BOBYQA
    minimises the profiled ``-2 sum_i w_i l_i = sum_i w_i log|W_i| + n_w (1 + log(2 pi rss_w / n_w))``
    over ``x``. With unit weights this is ``memoe.lme(..., method="ML")``'s objective.

    R equivalent
    ------------
    Per expert, ``nlme::lme(fixed, random, correlation, weights, method = "ML")`` with every subject's
    likelihood weighted by its posterior probability (R has no mixture of such experts).

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import AR1
    >>> df, _ = memoe.simulate.memoe_data(60, k=2, seed=3)
    >>> m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=df, correlation=AR1())
    >>> type(m.problem.expert).__name__
    'StructuredExpert'
    """

    joint = False

    def __init__(self, problem, stats, control: MStepControl | None = None, x0_extra: np.ndarray | None = None):
        self.P = problem
        self.stats = stats
        self.control = control or MStepControl()
        self.sigma_floor = _sigma_floor(stats)
        self.N = problem.layout.ngroups
        self.p = problem.p
        self.q = 0 if problem.Z is None else problem.Z.shape[1]
        self.tmap = problem.theta_map
        self.n_theta = problem.n_theta
        self.n_extra = problem.n_cor + problem.n_var
        lay = problem.layout
        XY = np.column_stack([problem.X, problem.y])
        self._XY = lay.gather(XY)
        self._Z = lay.gather(problem.Z) if self.q else None
        self._groups = [b.groups for b in lay.buckets]
        self._eye = [np.eye(b.n)[None] for b in lay.buckets]
        self.x0_extra = np.zeros(self.n_extra) if x0_extra is None else np.asarray(x0_extra, dtype=float)
        self._patterns = [self._find_patterns(k) for k in range(len(lay.buckets))]
        self._weighted_T: tuple | None = None  # (weights, per-bucket per-pattern weighted Gram matrices)

    def _find_patterns(self, k: int):
        """Subjects of bucket k whose W_i is the same function of the parameters: ``(rep, inv)`` or None.

        W_i depends on the parameters only through Z_i, the correlation structure's inputs (lags,
        times, distances) and the variance strata of the subject's rows -- the key of
        :meth:`MarginalProblem._find_patterns`. Discrete-visit designs have few patterns however many
        subjects there are: W, its Cholesky factor and inverse are then computed once per pattern and
        gathered, and the M-step's normal equations come from per-pattern weighted Gram matrices.
        """
        P = self.P
        b = P.layout.buckets[k]
        G = b.size
        parts = []
        if self.q:
            parts.append(self._Z[k].reshape(G, -1))
        if P.cor is not None:
            aux = np.asarray(P.cor.aux[k])
            if aux.shape[0] == G and G > 1:
                parts.append(aux.reshape(G, -1).astype(float))
            elif aux.shape[0] != 1:
                return None
        if P.var is not None:
            parts.append(np.asarray(P.var.strata)[b.rows].astype(float))
        if not parts:
            return np.zeros(1, dtype=np.intp), np.zeros(G, dtype=np.intp)
        key = np.hstack(parts)
        if not np.all(np.isfinite(key)):
            return None
        _, rep, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        if len(rep) * 2 > G:
            return None  # mostly distinct subjects (continuous times): the per-subject path
        return rep, inv.reshape(-1)

    # ------------------------------------------------------------------ parameter maps
    def x_of(self, theta: ExpertParams) -> np.ndarray:
        """``[theta (lme4's, of L / sigma), u_cor, u_var]`` of one expert."""
        th = self.tmap.theta_of([theta.L / theta.sigma]) if self.q else np.zeros(0)
        extra = getattr(theta, "extra", None)
        extra = self.x0_extra if extra is None else extra
        return np.concatenate([th, np.asarray(extra, dtype=float)])

    def _lam(self, x: np.ndarray) -> np.ndarray:
        return self.tmap.lambdas(x[: self.n_theta])[0] if self.q else np.zeros((0, 0))

    def _split(self, x: np.ndarray):
        _theta, u, v = self.P.split(x)
        return self._lam(x), u, self.P.ratios(v)

    def _W(self, k: int, sel, lam: np.ndarray, u: np.ndarray, s_all: np.ndarray) -> np.ndarray:
        """Relative covariances ``W_i = S_i C_i S_i + Z_i Lambda Lambda' Z_i'`` of the groups ``sel`` of bucket
        k, from the bound structures (the formulas of :meth:`MarginalProblem.covariances`)."""
        P = self.P
        b = P.layout.buckets[k]
        s = s_all[b.rows[sel]]
        if P.cor is None:
            C = self._eye[k]
        else:
            aux = np.asarray(P.cor.aux[k])
            C = P.cor.structure.correlation(u, aux if aux.shape[0] == 1 else aux[sel], P.cor.m)
        W = s[:, :, None] * C * s[:, None, :]
        if self.q:
            ZL = self._Z[k][sel] @ lam
            W = W + ZL @ np.swapaxes(ZL, 1, 2)
        return W

    def _bucket(self, x_parts, k: int, gather: bool = True):
        """Bucket k's ``(W, Cholesky factor, log det)``: per pattern (``gather=False``, with the pattern
        index) or per subject."""
        lam, u, s_all = x_parts
        pat = self._patterns[k]
        if pat is None:
            W = self._W(k, slice(None), lam, u, s_all)
            Lc = batched_cholesky(W)
            return W, Lc, batched_logdet_chol(Lc), None
        rep, inv = pat
        W = self._W(k, rep, lam, u, s_all)
        Lc = batched_cholesky(W)
        ld = batched_logdet_chol(Lc)
        if not gather:
            return W, Lc, ld, inv
        return W[inv], Lc[inv], ld[inv], None

    def _factors(self, x: np.ndarray):
        """Per bucket: W_i, their Cholesky factors and log-determinants of every subject (NaN log-determinant
        where some W_i is not positive definite)."""
        parts = self._split(x)
        return [self._bucket(parts, k)[:3] for k in range(len(self._XY))]

    def _resid(self, k: int, beta: np.ndarray) -> np.ndarray:
        XY = self._XY[k]
        return XY[:, :, self.p] - XY[:, :, : self.p] @ beta

    # ------------------------------------------------------------------ E-step
    def subject_loglik(self, theta: ExpertParams) -> np.ndarray:
        """Exact marginal log-likelihood of each subject under this expert, shape (N,)."""
        return self._loglik_x(self.x_of(theta), np.asarray(theta.beta, dtype=float), float(theta.sigma))

    def _loglik_x(self, x: np.ndarray, beta: np.ndarray, sigma: float) -> np.ndarray:
        s2 = sigma**2
        out = np.zeros(self.N)  # a subject without rows (prediction histories) contributes nothing
        parts = self._split(x)
        for k in range(len(self._XY)):
            W, Lc, ld, inv = self._bucket(parts, k, gather=False)
            r = self._resid(k, beta)
            n = r.shape[1]
            with np.errstate(invalid="ignore"):
                if inv is None:
                    e = batched_forward_solve(Lc, r[:, :, None])[:, :, 0]
                    quad = np.einsum("gn,gn->g", e, e)
                else:
                    # one inverse per pattern, gathered: r_i' W_u^-1 r_i
                    Linv = batched_forward_solve(Lc, np.ascontiguousarray(np.broadcast_to(self._eye[k], W.shape)))
                    Winv = np.swapaxes(Linv, 1, 2) @ Linv
                    quad = np.einsum("ga,gab,gb->g", r, Winv[inv], r)
                    ld = ld[inv]
                out[self._groups[k]] = -0.5 * (n * (LOG_2PI + math.log(s2)) + ld + quad / s2)
        # a W_i that is not positive definite (NaN pivots) has no likelihood
        out[~np.isfinite(out)] = -np.inf
        return out

    def subject_gradients(self, theta: ExpertParams) -> StructuredGradients:
        """Log-likelihood and its natural-scale gradients (beta, G, sigma^2 analytic; structures numeric).

        Notes
        -----
        With ``a_i = V_i^-1 r_i`` and ``u_i = Z_i' a_i``: ``d l / d beta = X_i' a_i``,
        ``d l / d G = (u_i u_i' - Z_i' V_i^-1 Z_i) / 2`` and, with ``R_i = S_i C_i S_i`` (so that
        ``V_i = Z_i G Z_i' + sigma^2 R_i``), ``d l / d sigma^2 = (a_i' R_i a_i - tr(V_i^-1 R_i)) / 2``.
        The derivatives in the structures' unconstrained parameters (G and sigma^2 held fixed) are
        central differences of the batched per-subject log-likelihood, two evaluations per parameter.
        """
        x = self.x_of(theta)
        beta = np.asarray(theta.beta, dtype=float)
        sigma = float(theta.sigma)
        s2 = sigma**2
        lam = self._lam(x)
        N, p, q = self.N, self.p, self.q
        ll = np.zeros(N)
        gb = np.zeros((N, p))
        gG = np.zeros((N, q, q))
        gs = np.zeros(N)
        for k, (W, Lc, ld) in enumerate(self._factors(x)):
            g = self._groups[k]
            r = self._resid(k, beta)
            n = r.shape[1]
            Linv = batched_forward_solve(Lc, np.ascontiguousarray(np.broadcast_to(self._eye[k], W.shape)))
            Winv = np.swapaxes(Linv, 1, 2) @ Linv
            e = np.einsum("gab,gb->ga", Linv, r)
            ll[g] = -0.5 * (n * (LOG_2PI + math.log(s2)) + ld + np.einsum("gn,gn->g", e, e) / s2)
            a = np.einsum("gab,gb->ga", Winv, r) / s2
            gb[g] = np.einsum("gna,gn->ga", self._XY[k][:, :, :p], a)
            R = W
            if q:
                Zb = self._Z[k]
                ZL = Zb @ lam
                R = W - ZL @ np.swapaxes(ZL, 1, 2)
                u = np.einsum("gnq,gn->gq", Zb, a)
                ZVZ = np.swapaxes(Zb, 1, 2) @ Winv @ Zb / s2
                gG[g] = 0.5 * (u[:, :, None] * u[:, None, :] - ZVZ)
            aRa = np.einsum("ga,gab,gb->g", a, R, a)
            tr = np.einsum("gab,gba->g", Winv, R) / s2
            gs[g] = 0.5 * (aRa - tr)
        extra = self._extra_gradient(theta, x)
        return StructuredGradients(loglik=ll, beta=gb, G=gG, s2=gs, extra=extra)

    def _extra_gradient(self, theta: ExpertParams, x: np.ndarray) -> np.ndarray:
        """``d l_i / d u`` for the structures' parameters u at fixed beta, G and sigma^2, shape (N, s)."""
        s = self.n_extra
        out = np.zeros((self.N, s))
        if not s:
            return out
        beta = np.asarray(theta.beta, dtype=float)
        sigma = float(theta.sigma)
        # G fixed: theta = L / sigma does not change with u
        for j in range(s):
            h = _FD_STEP * max(1.0, abs(x[self.n_theta + j]))
            xp, xm = x.copy(), x.copy()
            xp[self.n_theta + j] += h
            xm[self.n_theta + j] -= h
            out[:, j] = (self._loglik_x(xp, beta, sigma) - self._loglik_x(xm, beta, sigma)) / (2.0 * h)
        out[~np.isfinite(out)] = 0.0
        return out

    def blup(self, theta: ExpertParams) -> np.ndarray:
        """``E(b_i | y_i, z_i = k) = G Z_i' V_i^-1 r_i`` of every subject, shape (N, q)."""
        if not self.q:
            return np.zeros((self.N, 0))
        x = self.x_of(theta)
        beta = np.asarray(theta.beta, dtype=float)
        G = theta.L @ theta.L.T
        s2 = float(theta.sigma) ** 2
        out = np.zeros((self.N, self.q))
        for k, (_, Lc, _) in enumerate(self._factors(x)):
            e = batched_forward_solve(Lc, self._resid(k, beta)[:, :, None])
            a = batched_backward_solve_t(Lc, e)[:, :, 0] / s2
            out[self._groups[k]] = np.einsum("gnq,gn->gq", self._Z[k], a) @ G.T
        return out

    def blup_condsd(self, theta: ExpertParams) -> np.ndarray:
        """Conditional SDs ``sqrt(diag(G - G Z_i' V_i^-1 Z_i G))`` of the random effects, shape (N, q)."""
        if not self.q:
            return np.zeros((self.N, 0))
        x = self.x_of(theta)
        G = theta.L @ theta.L.T
        s2 = float(theta.sigma) ** 2
        out = np.zeros((self.N, self.q))
        for k, (_, Lc, _) in enumerate(self._factors(x)):
            T = batched_forward_solve(Lc, np.ascontiguousarray(self._Z[k] @ G))  # L^-1 Z G
            var = np.diag(G)[None, :] - np.einsum("gnq,gnq->gq", T, T) / s2
            out[self._groups[k]] = np.sqrt(np.clip(var, 0.0, None))
        return out

    def simulate_residuals(self, params: MoEParams, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Residuals ``e_i ~ N(0, sigma_k^2 S_ik C_ik S_ik)`` of every row, subject i drawn in class ``z[i]``.

        Parameters
        ----------
        params : StructuredParams
        z : numpy.ndarray of int, shape (N,)
            0-based class of every subject.
        rng : numpy.random.Generator

        Returns
        -------
        numpy.ndarray, shape (n,)
            In the rows' order (the model frame's), batched per bucket and class.
        """
        out = np.zeros(len(self.P.y))
        lay = self.P.layout
        for k in range(params.beta.shape[0]):
            th = StructuredExpertParams(beta=params.beta[k], L=params.L[k], sigma=float(params.sigma[k]),
                                        extra=params.extra[k])
            x = self.x_of(th)
            _, u, s_all = self._split(x)
            no_random = np.zeros((self.q, self.q))  # the residual part S C S only
            for j, b in enumerate(lay.buckets):
                sel = np.flatnonzero(z[b.groups] == k)
                if not sel.size:
                    continue
                R = self._W(j, sel, no_random, u, s_all)
                Lc = batched_cholesky(R)
                e = np.einsum("gab,gb->ga", Lc, rng.standard_normal((sel.size, b.n)))
                out[b.rows[sel].ravel()] = (float(params.sigma[k]) * e).ravel()
        return out

    # ------------------------------------------------------------------ M-step
    def weighted_deviance(self, x: np.ndarray, w: np.ndarray) -> float:
        """``-2 sum_i w_i l_i`` with beta and sigma^2 profiled out (see class Notes); +inf if undefined."""
        return self._profile(x, w)[0]

    def _pattern_stats(self, w: np.ndarray) -> list:
        """Per bucket with patterns: weighted Gram matrices ``T_u = sum_{i in u} w_i [X y]_i [X y]_i'`` (U, n, kk,
        n, kk) and pattern weights ``sum_{i in u} w_i``; cached for the weights of the current M-step."""
        if self._weighted_T is not None and self._weighted_T[0] is w:
            return self._weighted_T[1]
        kk = self.p + 1
        out = []
        for k, pat in enumerate(self._patterns):
            if pat is None:
                out.append(None)
                continue
            rep, inv = pat
            XY = self._XY[k]
            G, n, _ = XY.shape
            U = len(rep)
            if U * (n * kk) ** 2 > 2**23:
                out.append(None)  # the statistics would exceed 64 MiB: per-subject whitening
                continue
            wk = w[self._groups[k]]
            flat = XY.reshape(G, n * kk)
            T = np.empty((U, n * kk, n * kk))
            for j in range(U):  # a loop over patterns (few by construction), not subjects
                m = inv == j
                T[j] = (flat[m] * wk[m, None]).T @ flat[m]
            out.append((T.reshape(U, n, kk, n, kk), np.bincount(inv, weights=wk, minlength=U)))
        self._weighted_T = (w, out)
        return out

    def _profile(self, x: np.ndarray, w: np.ndarray):
        kk = self.p + 1
        A = np.zeros((kk, kk))
        logdet = 0.0
        parts = self._split(x)
        stats = self._pattern_stats(w)
        for k in range(len(self._XY)):
            wk = w[self._groups[k]]
            if stats[k] is not None:
                T, wsum = stats[k]
                W, Lc, ld, _ = self._bucket(parts, k, gather=False)
                if not np.all(np.isfinite(ld[wsum > 0])):
                    return np.inf, None
                Linv = batched_forward_solve(Lc, np.ascontiguousarray(np.broadcast_to(self._eye[k], W.shape)))
                Winv = np.swapaxes(Linv, 1, 2) @ Linv
                A += np.einsum("uab,uajbk->jk", Winv, T)
                logdet += float(wsum[wsum > 0] @ ld[wsum > 0])
                continue
            _, Lc, ld, _ = self._bucket(parts, k)
            if not np.all(np.isfinite(ld[wk > 0])):
                return np.inf, None
            M = batched_forward_solve(Lc, self._XY[k]) * np.sqrt(wk)[:, None, None]
            M = M.reshape(-1, kk)
            A += M.T @ M
            logdet += float(wk[wk > 0] @ ld[wk > 0])
        try:
            R = np.linalg.cholesky(0.5 * (A + A.T))
        except np.linalg.LinAlgError:
            return np.inf, None
        p = self.p
        rss = R[p, p] ** 2
        nw = float(w @ self.stats.n)
        if not (rss > 0 and nw > 0):
            return np.inf, None
        dev = logdet + nw * (1.0 + LOG_2PI + math.log(rss / nw))
        return float(dev), (R, rss, nw)

    def profiled(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
        """Weighted GLS beta and ML sigma at ``x`` (sigma floored as the Gaussian expert's)."""
        _, pieces = self._profile(x, w)
        if pieces is None:
            raise np.linalg.LinAlgError("a marginal covariance matrix or X' W^-1 X is not positive definite")
        R, rss, nw = pieces
        p = self.p
        beta = np.linalg.solve(R[:p, :p].T, R[p, :p])
        return beta, max(math.sqrt(rss / nw), self.sigma_floor)

    def lower_bounds(self) -> np.ndarray:
        lo = self.tmap.lower_bounds if self.q else np.zeros(0)
        return np.concatenate([lo, np.full(self.n_extra, -np.inf)])

    def m_step(
        self,
        weights: np.ndarray,
        start: ExpertParams,
        step: float | None = None,
        control: MStepControl | None = None,
    ) -> StructuredExpertParams:
        """Increase ``sum_i weights_i l_i`` from ``start``: BOBYQA over ``[theta, u_cor, u_var]``, beta and sigma
        profiled (weighted GLS and weighted ML variance). The optimiser returns the best point it saw,
        so the weighted objective never decreases (a generalised EM step when ``maxeval`` binds)."""
        ctl = control or self.control
        w = np.asarray(weights, dtype=float)
        x0 = self.x_of(start)
        f0 = self.weighted_deviance(x0, w)
        if not np.isfinite(f0):
            x0 = np.concatenate([x0[: self.n_theta], self.x0_extra])
            f0 = self.weighted_deviance(x0, w)
        lower = self.lower_bounds()

        def f(x: np.ndarray) -> float:
            return self.weighted_deviance(x, w)

        def run(x: np.ndarray, initial_step):
            return minimize_bounded(
                f, x, lower, ftol_abs=ctl.ftol_abs, xtol_abs=ctl.xtol_abs,
                maxeval=max(int(ctl.maxeval), 2 * len(x) + 2), initial_step=initial_step,
            )

        # memoe.lme's steps (proportional to the parameters) when the EM has no step size to offer
        opt = run(x0, step if step is not None else np.maximum(0.2 * np.abs(x0), 0.02))
        x, fx = (opt.x, opt.fmin) if np.isfinite(opt.fmin) and opt.fmin <= f0 else (x0, f0)
        if ctl.maxeval >= _PRECISE_MAXEVAL and x.size:
            # a whole fit in one M-step (K = 1): restart from the optimum, as memoe.lme does, against BOBYQA
            # stopping on a poorly conditioned interpolation model
            opt2 = run(x, np.maximum(0.02 * np.abs(x), 0.002))
            if np.isfinite(opt2.fmin) and opt2.fmin <= fx:
                x = opt2.x
        beta, sigma = self.profiled(x, w)
        lam = self._lam(x)
        return StructuredExpertParams(beta=beta, L=sigma * lam, sigma=sigma, extra=x[self.n_theta :].copy())


# ---------------------------------------------------------------------------------------------- problem
class StructuredProblem(MoEProblem):
    """:class:`MoEProblem` whose experts carry structure parameters (``params.extra``)."""

    def expert_params(self, params: MoEParams, k: int) -> StructuredExpertParams:  # type: ignore[override]
        extra = getattr(params, "extra", None)
        e = self.expert.x0_extra if extra is None or not np.size(extra) else extra[k]
        return StructuredExpertParams(beta=params.beta[k], L=params.L[k], sigma=float(params.sigma[k]), extra=e)

    def m_step(self, tau, params, previous=None, control=None) -> StructuredParams:
        gamma = gate_newton(self.W, tau, params.gamma)
        K = self.K
        beta, L, sigma = params.beta.copy(), params.L.copy(), params.sigma.copy()
        extra = np.array([self.expert_params(params, k).extra for k in range(K)]).reshape(K, -1)
        for k in range(K):
            step = None
            if previous is not None:
                x1 = self.expert.x_of(self.expert_params(params, k))
                x0 = self.expert.x_of(self.expert_params(previous, k))
                if x1.size:
                    step = float(np.clip(2.0 * np.abs(x1 - x0).max(), 1e-4, 0.5))
            th = self.expert.m_step(tau[:, k], self.expert_params(params, k), step, control)
            beta[k], L[k], sigma[k], extra[k] = th.beta, th.L, th.sigma, th.extra
        return StructuredParams(gamma=gamma, beta=beta, L=L, sigma=sigma, extra=extra)

    def initial_params(self, tau, control=None) -> StructuredParams:
        st = self.structure
        K = self.K
        start = StructuredParams(
            gamma=np.zeros((K, st.r)),
            beta=np.zeros((K, st.p)),
            L=np.repeat(np.eye(st.q)[None], K, axis=0),
            sigma=np.ones(K),
            extra=np.repeat(self.expert.x0_extra[None], K, axis=0),
        )
        beta, L, sigma, extra = start.beta.copy(), start.L.copy(), start.sigma.copy(), start.extra.copy()
        for k in range(K):
            th = self.expert.m_step(tau[:, k], self.expert_params(start, k), None, control)
            beta[k], L[k], sigma[k], extra[k] = th.beta, th.L, th.sigma, th.extra
        gamma = gate_newton(self.W, tau, start.gamma)
        return StructuredParams(gamma=gamma, beta=beta, L=L, sigma=sigma, extra=extra)


# ---------------------------------------------------------------------------------------------- builder
def _check_arguments(correlation, weights, group: str) -> None:
    from memoe.marginal.correlation import CorStruct
    from memoe.marginal.varcomb import VarComb
    from memoe.marginal.varfunc import VarFunc
    from memoe.marginal.variance import VarIdent

    if correlation is not None and not isinstance(correlation, CorStruct):
        raise ArgumentTypeError(
            "correlation must be a memoe.marginal correlation structure (AR1, CAR1, ARMA, CompSymm, Symm, Exp, "
            f"Gaus, Spher, Lin, Ratio), e.g. AR1(), got {correlation!r} ({type(correlation).__name__})"
        )
    if weights is not None and not isinstance(weights, VarIdent | VarFunc | VarComb):
        raise ArgumentTypeError(
            "weights must be a memoe.marginal variance function (VarIdent, VarPower, VarExp, VarConstPower, VarFixed, "
            f"VarComb), e.g. VarIdent('visit'), got {weights!r} ({type(weights).__name__})"
        )
    if correlation is not None and correlation.group is not None and correlation.group != group:
        raise FormulaError(
            f"correlation={correlation!r}: its group {correlation.group!r} differs from the MEMoE subject factor "
            f"{group!r}; each expert's residual correlation acts within a subject (give group=None or "
            f"group={group!r})"
        )
    if weights is not None and getattr(weights, "uses_fitted", False):
        raise ArgumentError(
            f"weights={weights!r} is a variance function of the fitted values, which differ between experts and "
            "depend on the latent class: not defined for a mixture of experts; give a covariate (e.g. "
            "VarPower('time')) or VarIdent('visit')"
        )


def build_structured_expert(md, correlation, weights, control: MStepControl | None = None) -> StructuredExpert:
    """Bind the residual structures to the mixture's subjects and build the structured expert.

    Parameters
    ----------
    md : MoEDesign
    correlation : CorStruct or None
    weights : VarIdent, VarFunc, VarComb or None
    control : MStepControl, optional

    Raises
    ------
    ArgumentTypeError, ArgumentError, FormulaError, DataError
        A structure of the wrong type, a correlation grouped by another factor than the subject, a
        variance function of the fitted values, missing columns, a structure the data cannot identify.
    """
    from memoe.marginal.correlation import check_correlation_identifiable
    from memoe.marginal.layout import make_layout
    from memoe.marginal.problem import MarginalProblem
    from memoe.marginal.variance import VarIdent, check_variance_identifiable

    _check_arguments(correlation, weights, md.group)
    frame = md.data
    extra_cols = (correlation.columns() if correlation is not None else []) + (
        weights.columns() if weights is not None else []
    )
    for c in extra_cols:
        if c not in frame.columns:
            raise DataError(
                f"unknown column {c!r} (used by the residual structure); the data have {list(frame.columns)[:12]}"
            )
        if frame[c].isna().any():
            raise DataError(
                f"column {c!r} (used by the residual structure) has {int(frame[c].isna().sum())} missing values in "
                "the rows of the fit; drop those rows first"
            )
    frame = frame.reset_index(drop=True)
    layout = make_layout(md.codes, md.subjects, md.group)
    cor = None
    if correlation is not None:
        cor = correlation.bind(layout, frame)
        check_correlation_identifiable(cor, layout, group=md.group)
    var = None
    if weights is not None:
        if isinstance(weights, VarIdent):
            var = weights.bind(frame)
            check_variance_identifiable(var, weights.by, frame[weights.by])
        else:
            var = weights.bind(frame, np.argsort(layout.codes, kind="stable"))
    q = md.Z.shape[1]
    tmap = md.design.theta_map
    P = MarginalProblem(
        md.design.y, md.design.X, layout, Z=md.Z if q else None, theta_map=tmap if q else None, cor=cor, var=var
    )
    expert = StructuredExpert(P, md.stats, control)
    expert.x0_extra = _start_extra(expert, cor, var)
    expert.bound_cor, expert.bound_var = cor, var
    return expert


def _start_extra(expert: StructuredExpert, cor, var) -> np.ndarray:
    """The structures' start: nlme's candidates, the best of them for the one-expert fit at the default theta."""
    v0 = np.zeros(0) if var is None else np.asarray(var.start(None), dtype=float)
    cands = [np.zeros(0)] if cor is None else [np.asarray(u, dtype=float) for u in cor.starts()]
    th = expert.tmap.initial() if expert.q else np.zeros(0)
    w = np.ones(expert.N)
    best = best_start((np.concatenate([th, u, v0]) for u in cands), lambda x: expert.weighted_deviance(x, w),
                      "positive-definite covariances of the residual structure")
    return best[expert.n_theta :]


def structure_labels(expert: StructuredExpert) -> tuple[tuple, tuple, object]:
    """Unconstrained names, natural ``(part, term)`` labels and the natural map of one expert's structures."""
    cor, var = expert.bound_cor, expert.bound_var
    nc = 0 if cor is None else cor.size
    names: list[str] = []
    labels: list[tuple[str, str]] = []
    if cor is not None:
        names += [f"cor:{n}" for n in cor.names]
        labels += [("cor", str(n)) for n in cor.names]
    if var is not None:
        names += [f"var:{n}" for n in var.names]
        labels += [("var", str(n)) for n in var.names]

    def natural(u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        out = []
        if cor is not None:
            out.append(np.asarray(cor.natural(u[:nc]).to_numpy(), dtype=float))
        if var is not None:
            out.append(np.asarray(var.transform(u[nc:])[0], dtype=float))
        return np.concatenate(out) if out else np.zeros(0)

    return tuple(names), tuple(labels), natural


def structure_table(fit) -> pd.DataFrame:
    """Each expert's residual-structure parameters on nlme's natural scale (rows: part, term; columns: experts)."""
    st = fit.model.structure
    rows = {}
    for k in range(fit.k):
        vals = st.natural_values(fit.estimates, k)
        rows[f"expert {k + 1}"] = vals
    idx = pd.MultiIndex.from_tuples(list(st.natural_labels), names=["part", "term"])
    return pd.DataFrame(rows, index=idx)


class _NewRowsVariance:
    """The fit's bound variance function evaluated on the rows of new data (strata matched to the fit's)."""

    needs_fitted = False

    def __init__(self, bound, frame: pd.DataFrame) -> None:
        self.bound = bound
        self.frame = frame
        self.size = bound.size
        self.names = bound.names
        # every row its own stratum: no shared-pattern shortcut on prediction histories
        self.strata = np.arange(len(frame))

    def ratios(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.bound.ratios_for(u, self.frame), dtype=float)


def history_expert(fit, frame: pd.DataFrame, y, X, Z, codes, N: int, seen: np.ndarray) -> StructuredExpert:
    """The fit's structured expert on the observed rows ``seen`` of new data (prediction from a history).

    The correlation structure is bound to the new subjects' rows (positions, times, distances); the
    variance function keeps the fit's strata and parameters (``ratios_for``).

    Raises
    ------
    DataError
        A correlation structure whose dimension on the new data differs from the fit's (e.g. ``Symm``
        over visit labels the fit did not have).
    """
    from memoe.marginal.layout import make_layout
    from memoe.marginal.problem import MarginalProblem
    from memoe.moe.data import subject_stats

    model = fit.model
    old = model.problem.expert
    rows = np.flatnonzero(seen)
    sub = frame.iloc[rows].reset_index(drop=True)
    c = np.asarray(codes)[rows]
    layout = make_layout(c, pd.RangeIndex(N), model.mdesign.group)
    cor = None
    if model.correlation is not None:
        cor = model.correlation.bind(layout, sub)
        if cor.size != old.bound_cor.size:
            raise DataError(
                f"the correlation structure {model.correlation!r} has {cor.size} parameters on the new data and "
                f"{old.bound_cor.size} in the fit (visit labels or positions the fit did not have); predict these "
                "subjects at population level (re_form=None)"
            )
    var = None if model.weights is None else _NewRowsVariance(old.bound_var, sub)
    q = Z.shape[1]
    P = MarginalProblem(
        np.asarray(y)[rows], np.asarray(X)[rows], layout, Z=np.asarray(Z)[rows] if q else None,
        theta_map=old.tmap if q else None, cor=cor, var=var,
    )
    stats = subject_stats(np.asarray(y)[rows], np.asarray(X)[rows], np.asarray(Z)[rows], c, N)
    ex = StructuredExpert(P, stats, old.control, old.x0_extra)
    ex.bound_cor, ex.bound_var = cor, var
    return ex
