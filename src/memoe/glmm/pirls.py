"""Penalised iteratively re-weighted least squares (PIRLS) for the conditional modes of a GLMM.

Each PIRLS iteration is one weighted penalised least-squares problem on the LMM machinery:
with working weights ``w`` and working response ``z`` the update minimises
``|| W^1/2 (z - Z Lambda u [- X beta]) ||^2 + ||u||^2``, which is the LMM's penalised least
squares on rows scaled by ``sqrt(w)``. With one grouping factor :class:`memoe.lmm.objective.PLSProblem`
solves it (batched small blocks per level); with several, :class:`memoe.glmm.dense.DenseWpls` uses
the same blocked layout (first factor batched, dense Schur complement for the rest) without
rebuilding PLSProblem's sparse structures at every change of the weights.

Two variants, as lme4's ``pwrssUpdate``: ``uOnly`` (beta fixed in the offset; the Laplace and
quadrature objectives of (theta, beta)) and joint (beta and u; lme4's ``nAGQ = 0`` stage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from memoe.glmm.crossed_gradient import CROSSED_GRADIENT_MAX_Q, CrossedGradient
from memoe.glmm.dense import DenseWpls, dense_size
from memoe.glmm.design import GlmmDesign
from memoe.glmm.families import _EPS, _THRESH, Binomial, Family, Poisson
from memoe.glmm.single import GRADIENT_MAX_Q, MAX_Q, SingleWpls
from memoe.lmm.objective import PLSProblem

__all__ = ["PirlsProblem", "PirlsState"]

# |delta u|_inf below which the iteration stops. Newton converges quadratically, so the mode is then
# exact to rounding; the objective (and its finite-difference Hessian, step 1e-4) needs ~1e-11.
U_TOL = 1e-10
MAX_ITER = 60
_LOG_EPS = float(np.log(_EPS))
#: binomial links with the analytic Laplace gradient besides the logit: open eta intervals where neither the mean
#: nor d mu / d eta is clamped (probit: R's thresh -qnorm(eps) = 8.12; cloglog: mu < 1 - eps up to eta = 3.58, and
#: d mu / d eta > eps down to eta = -36)
_NONCANONICAL_BOUNDS = {"probit": (-8.0, 8.0), "cloglog": (-30.0, 3.5)}
# step-halving gives up below this fraction of the Newton step (lme4: 0.001)
MIN_STEP = 1e-3
# several grouping factors use DenseWpls while its dense arrays stay below this many entries:
DENSE_MAX_ENTRIES = 2**22  # 32 MB per dense array (A_12 and G)


def _absmax(v: np.ndarray) -> float:
    """``max |v|`` (0 for an empty vector)."""
    return float(np.abs(v).max()) if v.size else 0.0


@dataclass(frozen=True)
class PirlsState:
    """Conditional modes and everything evaluated at them.

    Attributes
    ----------
    u : numpy.ndarray, shape (q,)
        Spherical random effects, blocks concatenated (each block level-major).
    beta : numpy.ndarray, shape (p,)
    eta, mu, w : numpy.ndarray, shape (n,)
        Linear predictor (with offset), mean, and working weights at ``u``.
    dev_resid : numpy.ndarray, shape (n,)
        Unit deviances at ``mu`` (formed on first use for a transient state).
    dev_sum : float
        Their sum (what the Laplace deviance needs; known from PIRLS' step test without the unit deviances).
    ldL2 : float
        ``log det(L L')`` with ``L L' = Lambda' Z' W Z Lambda + I`` at ``w``.
    iterations : int
    converged : bool
    """

    u: np.ndarray
    beta: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    w: np.ndarray
    dev_sum: float
    ldL2: float
    iterations: int
    converged: bool
    # [unit deviances or None, a function forming them]: a transient state's are formed only if asked for
    _dev: list = field(default_factory=lambda: [None, None], repr=False, compare=False)

    @property
    def dev_resid(self) -> np.ndarray:
        """Unit deviances at ``mu``."""
        if self._dev[0] is None:
            self._dev[0] = self._dev[1]()
        return self._dev[0]

    @property
    def sqrL(self) -> float:
        """``||u||^2``."""
        return float(self.u @ self.u)

    @property
    def pdev(self) -> float:
        """Penalised deviance ``sum d_i + ||u||^2``."""
        return self.dev_sum + self.sqrL


class PirlsProblem:
    """The data of a GLMM and the PIRLS iterations on them.

    Parameters
    ----------
    gd : GlmmDesign
    family : Family
    dense : bool, optional
        Solve each PIRLS step with one dense factor (:class:`~memoe.glmm.dense.DenseWpls`) instead of
        the LMM's blocked :class:`~memoe.lmm.objective.PLSProblem` (only with several grouping factors).
        Default: for several grouping factors unless its dense arrays would exceed ``DENSE_MAX_ENTRIES``.
    """

    def __init__(self, gd: GlmmDesign, family: Family, dense: bool | None = None) -> None:
        d = gd.design
        self.family = family
        self.y, self.wt, self.ntrials, self.offset = gd.y, gd.wt, gd.n, gd.offset
        self.X = d.X
        self.n, self.p = d.X.shape
        self.theta_map = d.theta_map
        self.codes = [b.factor.codes for b in d.blocks]
        self.nlevels = [b.nlevels for b in d.blocks]
        self.Zraw = [b.Z for b in d.blocks]
        self._ZT = [np.ascontiguousarray(Z.T) for Z in self.Zraw]
        self.qk = [b.q for b in d.blocks]
        self.sizes = [lk * qk for lk, qk in zip(self.nlevels, self.qk, strict=True)]
        self.q = int(sum(self.sizes))
        self._noX = np.zeros((self.n, 0))
        # (X it was made from, X', which columns are all ones)
        self._XT = (self.X, np.ascontiguousarray(self.X.T), [bool(np.all(c == 1.0)) for c in self.X.T])
        self._has_offset = bool(np.any(self.offset != 0.0))
        self._loglik_constants = None  # response-only terms of the log-likelihood, computed once
        # -2 log p(y | mu) - sum(unit deviances): constant in mu for the Poisson and (integer) binomial families
        self._loglik_offset: tuple[Family, float | None] | None = None
        # Poisson unit deviances: y log y once per data set instead of y log(y / mu) at every step
        with np.errstate(divide="ignore", invalid="ignore"):
            self._ylogy = np.where(self.y > 0, self.y * np.log(np.where(self.y > 0, self.y, 1.0)), 0.0)
        self._ylogy_y = self._ylogy - self.y
        self._two_wt = 2.0 * self.wt
        self._lam_key: bytes | None = None
        # prior weights all 1 (the usual case): the canonical links' working weights need no product with them
        self._unit_wt = bool(np.all(self.wt == 1.0))
        # 0/1 responses: the binomial unit deviance reads one of mu, 1 - mu (the family's formula, checked once)
        self._y_binary = bool(self.y.size) and bool(np.all((self.y == 0.0) | (self.y == 1.0)))
        self._y_pos = self.y > 0
        # 0/1 responses: m = mu if y = 1 else 1 - mu is (1 - y) + (2 y - 1) mu, exactly (0 + mu, 1 - mu): a
        # multiply-add instead of np.where on a data-dependent mask (branch mispredictions: ~10x slower)
        self._omy = 1.0 - self.y
        self._s = 2.0 * self.y - 1.0
        # work arrays of length n reused by every PIRLS iteration (see _work)
        self._work: list[np.ndarray] | None = None
        self._fixed_work: np.ndarray | None = None
        self._pois_const: tuple[float, np.ndarray] | None = None
        self._binom_const: tuple[float, np.ndarray, np.ndarray] | None = None
        # random-effects columns of ones (intercepts): the predictor needs no product with them
        self._ones = [bool(np.all(ZT_a == 1.0)) for ZT in self._ZT for ZT_a in ZT]
        if dense is None:
            dense = dense_size(self.nlevels, self.qk, self.p) <= DENSE_MAX_ENTRIES
        dense = dense and len(self.qk) > 1
        self.dense = DenseWpls(self.X, self.codes, self.nlevels, self.Zraw, self.theta_map) if dense else None
        self._crossed: CrossedGradient | None = None  # the dense path's Laplace gradient, built on first use
        # one grouping factor: re-weighted per-level sums only, instead of a new PLSProblem per step
        self.single = (
            SingleWpls(self.X, self.codes[0], self.nlevels[0], self.Zraw[0], self.theta_map)
            if len(self.qk) == 1 and 0 < self.qk[0] <= MAX_Q
            else None
        )

    # ------------------------------------------------------------------ pieces
    def split_u(self, u: np.ndarray) -> list[np.ndarray]:
        """Flat ``u`` -> one (levels, q_k) array per block."""
        out, s = [], 0
        for lk, qk in zip(self.nlevels, self.qk, strict=True):
            out.append(u[s : s + lk * qk].reshape(lk, qk))
            s += lk * qk
        return out

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """``theta_map.lambdas(theta)``, kept for the last theta (PIRLS asks for it at every step)."""
        key = np.asarray(theta, dtype=float).tobytes()
        if key != self._lam_key:
            self._lam_key, self._lam = key, self.theta_map.lambdas(theta)
        return self._lam

    def re_predictor(
        self, theta: np.ndarray, u: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None
    ) -> np.ndarray:
        """``Z Lambda u``, shape (n,): each row reads its level's b = lambda u (no Python loop over rows).

        ``out``, ``scratch``: arrays of length n to write into and to gather the second and later columns in
        (PIRLS' work arrays; no allocation).
        """
        lambdas = self.lambdas(theta)
        sw = self.single
        if out is not None and sw is not None and sw.m is not None:
            # one factor, rows sorted by level, m rows per level: each level's values broadcast over its (l1, m)
            # block of rows (no gathers); b_0 + b_1 z_1 + ... as in the general loop below
            b = u.reshape(sw.l1, sw.q) @ lambdas[0].T
            o2 = out.reshape(sw.l1, sw.m)
            ZT = self._ZT[0]
            if sw.q == 1:
                if self._ones[0]:
                    o2[:] = b
                else:
                    np.multiply(ZT[0].reshape(sw.l1, sw.m), b, out=o2)
                return out
            if sw.q == 2 and self._ones[0] and not self._ones[1]:
                np.multiply(ZT[1].reshape(sw.l1, sw.m), b[:, 1:2], out=o2)
                o2 += b[:, 0:1]
                return out
        first = True
        col = 0
        g = scratch
        for uk, lam, ZT, codes in zip(self.split_u(u), lambdas, self._ZT, self.codes, strict=True):
            b = uk @ lam.T
            # column by column: contiguous gathers of one level vector instead of (n, q) row gathers
            for a in range(ZT.shape[0]):
                ba = np.ascontiguousarray(b[:, a])
                if first:
                    out = np.take(ba, codes) if out is None else np.take(ba, codes, out=out)
                    if not self._ones[col]:
                        out *= ZT[a]
                    first = False
                else:
                    g = np.take(ba, codes, out=g)
                    if not self._ones[col]:
                        g *= ZT[a]
                    out += g
                col += 1
        if first:
            if out is None:
                return np.zeros(self.n)
            out.fill(0.0)
        return out

    def fixed_predictor(
        self, beta: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None
    ) -> np.ndarray:
        """``offset + X beta``, shape (n,) (into ``out`` when given).

        As ``beta @ X'`` on the contiguous rows of ``X'``: numpy's product of a tall C-ordered (n, p) array
        with a vector runs at a fraction of memory speed for small p (10^6 x 2: 13 ms against 2.5 ms);
        an offset of zeros costs no pass. With ``out`` and ``scratch`` (work arrays) and p <= 4, as scaled
        column additions (a column of ones is a fill): ~3x faster than the BLAS product at 10^5 x 3.
        """
        if self._XT[0] is not self.X:  # X may be replaced (the null model of a GLM)
            self._XT = (self.X, np.ascontiguousarray(self.X.T), [bool(np.all(c == 1.0)) for c in self.X.T])
        if not self.p:
            out = np.zeros(self.n) if out is None else out
            out.fill(0.0)
        elif out is not None and scratch is not None and self.p <= 4:
            XT, ones = self._XT[1], self._XT[2]
            beta = np.asarray(beta, dtype=float)
            for j in range(self.p):
                bj = float(beta[j])
                if j == 0:
                    if ones[0]:
                        out.fill(bj)
                    else:
                        np.multiply(XT[0], bj, out=out)
                elif ones[j]:
                    out += bj
                else:
                    out += np.multiply(XT[j], bj, out=scratch)
        elif out is None:
            out = np.asarray(beta, dtype=float) @ self._XT[1]
        else:
            np.dot(np.asarray(beta, dtype=float), self._XT[1], out=out)
        if self._has_offset:
            out += self.offset
        return out

    def _work_arrays(self) -> list[np.ndarray]:
        """Seven arrays of length n for PIRLS' row passes, allocated once per problem.

        A fresh temporary of 10^5 doubles costs more than the pass that fills it: glibc returns freed heap
        tops above its trim threshold to the system, so every new array page-faults again (three temporaries
        of 0.8 MB: 0.9 ms against 0.14 ms for the same arithmetic in place).
        """
        if self._work is None or self._work[0].shape[0] != self.n:
            self._work = [np.empty(self.n) for _ in range(7)]
        return self._work

    def _linkinv_into(self, eta: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> tuple[np.ndarray, bool | None]:
        """``linkinv(eta)`` written into ``out`` for the logit and log links (bit for bit the link's formula).

        Returns the means and, for the logit link, whether every ``|eta| <= 30`` (the working weights' fast path
        needs the same test), else None.
        """
        name = self.family.link.name
        if name == "logit":
            src = eta
            inside = not self.n or (float(eta.max()) <= _THRESH and float(eta.min()) >= -_THRESH)
            if not inside:
                src = np.clip(eta, -_THRESH, _THRESH, out=tmp)
            np.exp(src, out=out)
            np.add(out, 1.0, out=tmp)
            return np.divide(out, tmp, out=out), inside
        if name == "log":
            np.exp(eta, out=out)
            return np.maximum(out, _EPS, out=out), None
        return self.family.linkinv(eta), None

    def working(self, eta: np.ndarray):
        """``mu``, ``d mu/d eta`` and the working weights at ``eta``."""
        mu = self.family.linkinv(eta)
        dmu, w = self._weights(eta, mu)
        return mu, dmu, w

    def _weights(
        self, eta: np.ndarray, mu: np.ndarray, out: np.ndarray | None = None, inside: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``d mu/d eta`` and the working weights ``wt (d mu/d eta)^2 / V(mu)`` (``out``: a work array).

        ``inside``: whether every ``|eta| <= 30``, when already known (:meth:`_linkinv_into`).
        """
        fam = self.family
        kind = type(fam)
        if kind is Binomial and fam.link.name == "logit" and inside is None:
            inside = not self.n or max(float(eta.max()), -float(eta.min())) <= _THRESH
        if kind is Binomial and fam.link.name == "logit" and inside:
            # canonical link: d mu/d eta = V(mu) = mu (1 - mu), so the weight is wt mu (1 - mu); R's mu_eta
            # differs from this only beyond its threshold (checked above), two passes instead of seven
            if out is None:
                dmu = mu * (1.0 - mu)
            else:
                dmu = np.subtract(1.0, mu, out=out)
                dmu *= mu
            return dmu, dmu if self._unit_wt else self.wt * dmu
        if kind is Poisson and fam.link.name == "log":
            # d mu/d eta = mu = max(exp(eta), eps) = R's mu_eta, and V(mu) = mu
            return mu, mu if self._unit_wt else self.wt * mu
        dmu = fam.mu_eta(eta)
        return dmu, self.wt * dmu * dmu / fam.variance(mu)

    def dev_resids(self, mu: np.ndarray, eta: np.ndarray | None = None) -> np.ndarray:
        """Unit deviances at ``mu`` (the family's, with the Poisson's ``y log y - y`` computed once).

        ``eta``: the linear predictor of ``mu``; with the log link ``log mu = max(eta, log eps)`` needs no
        logarithm (R's linkinv is ``max(exp(eta), eps)``).
        """
        fam = self.family
        if type(fam) is Poisson:
            # y log(y / mu) - (y - mu) = (y log y - y) - y log mu + mu; y = 0 rows give 0 for finite mu > 0
            if eta is not None and fam.link.name == "log":
                logmu = np.maximum(eta, _LOG_EPS)
            else:
                logmu = np.log(mu)
            d = self._ylogy_y - self.y * logmu
            d += mu
            d *= self._two_wt
            return d
        if type(fam) is Binomial and self._y_binary:
            # Binomial.dev_resids' 0/1 branch, bit for bit, without testing y at every call
            with np.errstate(divide="ignore"):
                d = self._s * mu
                d += self._omy
                np.divide(1.0, d, out=d)
                np.log(d, out=d)
                d *= self.wt
                d *= 2.0
                return d
        return fam.dev_resids(self.y, mu, self.wt)

    def _deviance(
        self, mu: np.ndarray, eta: np.ndarray, tmp: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, float]:
        """``(unit deviances or None, their sum)``: the step-halving test needs only the sum.

        Binomial with 0/1 responses: see below.

        Poisson with the log link and no ``eta`` below ``log(eps)``: ``sum d_i = C + 2 wt'mu - 2 (wt y)'eta``
        (``C = 2 sum wt (y log y - y)`` once per data set), two dot products instead of six passes that
        write arrays; the unit deviances are then formed once per PIRLS run, for the returned state.
        """
        fam = self.family
        if type(fam) is Poisson and fam.link.name == "log" and self.n and float(eta.min()) >= _LOG_EPS:
            if self._pois_const is None:
                self._pois_const = (float(self._ylogy_y @ self._two_wt), self._two_wt * self.y)
            c, two_wty = self._pois_const
            return None, c + float(self._two_wt @ mu) - float(two_wty @ eta)
        if type(fam) is Binomial and self._y_binary:
            # 0/1 responses: sum d_i = -2 wt' log(m), m = mu or 1 - mu; one logarithm in place and a dot product
            # instead of the unit deviances' five passes and their sum (log 0 = -inf: solve() ignores the warning)
            m = np.multiply(self._s, mu, out=tmp)
            m += self._omy
            np.log(m, out=m)
            return None, -2.0 * float(self.wt @ m)
        if type(fam) is Binomial and fam.link.name == "logit":
            # counts / proportions with trials: sum d_i = C - 2 [(wt y)' log mu + (wt (1 - y))' log(1 - mu)],
            # C = 2 sum wt (y log y + (1 - y) log(1 - y)) once per data set: two logarithms in place and two dot
            # products instead of the family's unit deviances (two y log(y / mu) passes with masks, ~30 us at
            # 56 rows); the logit's means stay inside (0, 1), anything else falls through to the unit deviances
            if self._binom_const is None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    wy, w1y = self.wt * self.y, self.wt * (1.0 - self.y)
                    c = 2.0 * float(np.where(wy > 0, wy * np.log(np.where(self.y > 0, self.y, 1.0)), 0.0).sum()
                                    + np.where(w1y > 0, w1y * np.log(np.where(self.y < 1, 1.0 - self.y, 1.0)),
                                               0.0).sum())
                self._binom_const = (c, wy, w1y)
            c, wy, w1y = self._binom_const
            m = np.log(mu, out=tmp)
            s1 = float(wy @ m)
            np.subtract(1.0, mu, out=m)
            np.log(m, out=m)
            total = c - 2.0 * (s1 + float(w1y @ m))
            if math.isfinite(total):
                return None, total
        d = self.dev_resids(mu, eta)
        return d, float(d.sum())

    def wls_problem(self, w: np.ndarray, z: np.ndarray, with_beta: bool) -> PLSProblem:
        """The LMM's penalised least-squares problem on rows scaled by ``sqrt(w)``.

        ``with_beta=False`` leaves X out (beta is then part of the offset, lme4's ``uOnly``).
        """
        sw = np.sqrt(w)
        X = self.X * sw[:, None] if with_beta else self._noX
        return PLSProblem(
            y=sw * z,
            X=X,
            codes=self.codes,
            nlevels=self.nlevels,
            Z=[Z * sw[:, None] for Z in self.Zraw],
            theta_map=self.theta_map,
        )

    def wls(
        self, theta: np.ndarray, w: np.ndarray, z: np.ndarray, with_beta: bool
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """One weighted PLS step at ``theta``: flat ``u``, ``beta`` (empty without X), ``log det(L L')``."""
        if self.q == 0:
            return np.zeros(0), self._wls_fixed(w, z) if with_beta else np.zeros(0), 0.0
        if self.dense is not None:
            return self.dense.solve(theta, w, z, with_beta)
        if self.single is not None:
            return self.single.solve(theta, w, z, with_beta)
        sol = self.wls_problem(w, z, with_beta).solve(theta, reml=False)
        u = np.concatenate([uk.ravel() for uk in sol.u]) if self.q else np.zeros(0)
        return u, sol.beta, float(sol.factor.logdet_Z)

    def _wls_fixed(self, w: np.ndarray, z: np.ndarray) -> np.ndarray:
        """IRLS step without random effects (R's glm.fit): ``beta = (X' W X)^-1 X' W z`` by QR of ``W^1/2 X``."""
        sw = np.sqrt(w)
        q, r = np.linalg.qr(self.X * sw[:, None])
        return np.linalg.solve(r, q.T @ (sw * z)) if self.p else np.zeros(0)

    def _safe_wls(self, theta, w, z, joint: bool):
        """:meth:`wls`, or None when the factorisation fails or the solution is not finite."""
        try:
            with np.errstate(all="ignore"):
                u, b, ldL2 = self.wls(theta, w, z, with_beta=joint)
                # one test for all three: a NaN or inf anywhere (or |u| beyond 1e154, as absurd) is not finite
                ok = math.isfinite(float(u @ u) + float(b @ b) + float(ldL2))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return None
        return (u, b, ldL2) if ok else None

    # ------------------------------------------------------------------ iterations
    def solve(
        self,
        theta: np.ndarray,
        beta: np.ndarray | None,
        u0: np.ndarray | None = None,
        eta0: np.ndarray | None = None,
        beta0: np.ndarray | None = None,
        warm: bool = False,
        min_iter: int = 2,
        transient: bool = False,
    ) -> PirlsState:
        """Conditional modes at ``theta`` (and ``beta``), by PIRLS with step halving.

        Parameters
        ----------
        theta : numpy.ndarray, shape (ntheta,)
        beta : numpy.ndarray of shape (p,), or None
            Fixed effects held fixed (lme4's ``uOnly``); ``None`` updates beta jointly with u
            (lme4's ``nAGQ = 0``), starting from ``eta0``.
        u0 : numpy.ndarray, shape (q,), optional
            Starting modes (default zero).
        eta0 : numpy.ndarray, shape (n,), optional
            Starting linear predictor of the joint update (default: the family's ``mustart``).
        beta0 : numpy.ndarray, shape (p,), optional
            Starting fixed effects of the joint update (with ``u0``: a warm start from an earlier
            solution, which replaces ``eta0``).
        warm : bool, default False
            The start (``u0``, with ``beta0`` in the joint update) is an earlier solution: the iterations
            may stop at the first step when it is already the mode. Otherwise at least two steps are taken,
            which keeps the stopping error a smooth function of theta and beta (finite differences).
        min_iter : int, default 2
            Fewest iterations before convergence may be declared (without ``warm``). From a start within
            ~1e-4 of the modes, three make every stop exact to rounding: two Newton steps reach ~1e-16, while
            with two some points would stop after one step at an error just under the tolerance and others
            not, a stopping error that finite differences of step 1e-4 amplify by 1e8.
        transient : bool, default False
            The returned state's ``eta``, ``mu`` and ``w`` may be the problem's work arrays, valid until the next
            solve (an objective that reads them at once); otherwise the state owns copies.

        Returns
        -------
        PirlsState
            ``converged`` is False when the iterations stopped early (step halving failed or the
            weighted system broke down, e.g. under separation); the state then holds the best modes.
        """
        # extreme linear predictors (separation) give inf/0 intermediates; they are caught below
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            return self._solve(theta, beta, u0, eta0, beta0, warm, min_iter, transient)

    def _solve(self, theta, beta, u0, eta0, beta0=None, warm=False, min_iter=2, transient=False) -> PirlsState:
        theta = np.asarray(theta, dtype=float)
        joint = beta is None
        fam = self.family
        # row passes write into work arrays (current and trial eta and mu, weights, working response, scratch)
        e_cur, e_try, m_cur, m_try, w_buf, z, tmp = self._work_arrays()
        fast = fam.link.name in ("logit", "log")
        # one grouping factor with q <= MAX_Q: its weighted PLS directly (no dispatch per step)
        wls = self.single.solve if (self.single is not None and self.dense is None and self.q) else None

        def predictor(b_, u_, fe, out, scratch):
            # fe + Z Lambda u: the random part first, then the fixed one added (as fe + (Z Lambda u)); scratch is
            # the array the means go to next, free until then
            self.re_predictor(theta, u_, out=out, scratch=scratch)
            if fe is None:
                out += self.fixed_predictor(b_, out=tmp, scratch=scratch)
            else:
                out += fe
            return out

        def means(eta_, out):
            # (mu, whether every |eta| <= 30 for the logit link, else None)
            return self._linkinv_into(eta_, out, tmp) if fast else (fam.linkinv(eta_), None)

        u = np.zeros(self.q) if u0 is None else np.asarray(u0, dtype=float).copy()
        # a start of the form X beta + Z Lambda u can be the mode already: convergence may be seen at step 1
        warm = warm and u0 is not None and (not joint or beta0 is not None)
        if joint and beta0 is not None:
            b = np.asarray(beta0, dtype=float).copy()
            fixed_eta = None
            eta = predictor(b, u, None, e_cur, m_cur)
            mu, inside = means(eta, m_cur)
            d, dsum = self._deviance(mu, eta, tmp)
            pdev = dsum + float(u @ u)
        elif joint:
            b = np.zeros(self.p)
            if eta0 is None:
                eta0 = fam.linkfun(fam.mustart(self.y, self.wt, self.ntrials))
            eta = e_cur
            eta[:] = eta0
            fixed_eta = None
            mu, inside = means(eta, m_cur)
            d, dsum = None, None
            pdev = np.inf  # the start need not be of the form X beta + Z Lambda u
        else:
            b = np.asarray(beta, dtype=float)
            # X beta + offset: kept for the whole run (the last work array is free: scratch is tmp)
            fixed_eta = self.fixed_predictor(b, out=self._fixed_buffer())
            eta = predictor(b, u, fixed_eta, e_cur, m_cur)
            mu, inside = means(eta, m_cur)
            d, dsum = self._deviance(mu, eta, tmp)
            pdev = dsum + float(u @ u)
        # working response without the offset (and without X beta when beta is held fixed)
        base = self.offset if joint else fixed_eta
        subtract_base = not joint or self._has_offset
        b_scale = 0.0 if joint else _absmax(b)  # beta held fixed: its part of the convergence scale is constant
        converged = False
        first = 1 if warm else max(int(min_iter), 1)
        it = 0
        def working(eta: np.ndarray, mu: np.ndarray, inside) -> np.ndarray:
            # IRLS weights w, and z = (eta - base) + (y - mu) / dmu in the work array z (tmp as scratch)
            dmu, w = self._weights(eta, mu, out=w_buf, inside=inside)
            if subtract_base:
                np.subtract(eta, base, out=z)
            else:
                z[:] = eta
            r = np.subtract(self.y, mu, out=tmp)
            r /= dmu
            np.add(z, r, out=z)
            return w

        while it < MAX_ITER:
            it += 1
            w = working(eta, mu, inside)
            if wls is not None:
                try:
                    u_new, beta_new, ldL2 = wls(theta, w, z, joint)
                    # one test for all three: a NaN or inf anywhere (or |u| beyond 1e154, as absurd) is not finite
                    total = float(u_new @ u_new) + float(beta_new @ beta_new) + float(ldL2)
                    step = (u_new, beta_new, ldL2) if math.isfinite(total) else None
                except (np.linalg.LinAlgError, ValueError, FloatingPointError):
                    step = None
            else:
                step = self._safe_wls(theta, w, z, joint)
            if step is None:
                # the weighted system broke down (weights underflowing, e.g. separation): stop here
                break
            u_new, beta_new, ldL2 = step
            b_new = beta_new if joint else b
            # |delta (u, beta)|_inf against U_TOL (1 + |(u, beta)|_inf)
            step_u = u_new - u
            du = _absmax(step_u)
            scale = 1.0 + max(_absmax(u), _absmax(b) if joint else b_scale)
            if joint:
                du = max(du, _absmax(b_new - b))
            if it >= first and math.isfinite(pdev) and du < U_TOL * scale:
                # the factor just computed is at the current (converged) modes
                converged = True
                break
            fac = 1.0
            while True:
                # u + fac (u_new - u) at fac = 1 too: u_new itself changes the objective's last bits, and the
                # contract's 1e-8 agreement of fits on permuted rows holds only while BOBYQA's paths for the two
                # row orders stay alike (its stopping point is fixed to ~1e-8 relative, not to rounding)
                u_try = u + fac * step_u
                b_try = b + fac * (b_new - b) if joint else b
                eta_try = predictor(b_try, u_try, fixed_eta, e_try, m_try)
                mu_try, inside_try = means(eta_try, m_try)
                d_try, dsum_try = self._deviance(mu_try, eta_try, tmp)
                pdev_try = dsum_try + float(u_try @ u_try)
                # a rounding-level increase near the optimum is accepted
                if pdev_try <= pdev + 1e-10 * (abs(pdev) if math.isfinite(pdev) else 0.0):
                    break
                fac *= 0.5
                if fac < MIN_STEP:
                    break
            if fac < MIN_STEP:
                # step halving failed (lme4 stops with an error): keep the best modes found
                break
            u, b, d, dsum, pdev, inside = u_try, b_try, d_try, dsum_try, pdev_try, inside_try
            # the accepted trial becomes current: swap the work arrays (no copies)
            eta, e_try = eta_try, eta
            if mu_try is m_try:
                mu, m_try = mu_try, mu
            else:
                mu = mu_try
        if not converged:
            # the weights at the current modes (an exit after an accepted step has them at the previous ones)
            w = working(eta, mu, inside)
            step = self._safe_wls(theta, w, z, joint)
            ldL2 = np.inf if step is None else step[2]
        if not transient:
            # the state owns its arrays (the work arrays are overwritten by the next solve)
            eta, mu, w = eta.copy(), mu.copy(), w.copy()
        if d is None and (dsum is None or not transient):
            # the iterations compared sums only: the unit deviances of the state once, at its modes
            d = self.dev_resids(mu, eta)
        if dsum is None:
            dsum = float(d.sum())
        state = PirlsState(
            u=u,
            beta=b.copy(),
            eta=eta,
            mu=mu,
            w=w,
            dev_sum=dsum,
            ldL2=ldL2,
            iterations=it,
            converged=converged,
        )
        # a transient state's unit deviances, if asked for before the next solve overwrites eta and mu
        state._dev[:] = [d, lambda: self.dev_resids(mu, eta)]
        return state

    def laplace_gradient(self, theta: np.ndarray, state: PirlsState, joint: bool = False) -> np.ndarray | None:
        """Gradient in ``(theta, beta)`` of lme4's Laplace deviance at a converged uOnly state (None: not available).

        Available for one grouping factor with q <= 3, or several on the dense path with at most
        :data:`~memoe.glmm.crossed_gradient.CROSSED_GRADIENT_MAX_Q` random effects in all, and a canonical link
        (binomial logit with every ``|eta| <= 30``, Poisson log with no mean at its floor: PIRLS' working weights
        are then the exact curvature of the penalised deviance, whose derivative in u vanishes at the modes) or
        the binomial probit / cloglog; see :meth:`memoe.glmm.single.SingleWpls.laplace_gradient` and
        :mod:`memoe.glmm.crossed_gradient`. ``joint``: the state is a joint (u, beta) solution (lme4's nAGQ = 0
        objective), and the gradient is in theta only.
        """
        sw = self.single
        fam = self.family
        if self.dense is not None:
            if self.q > CROSSED_GRADIENT_MAX_Q:
                return None
            if self._crossed is None:
                self._crossed = CrossedGradient(self.X, self.codes, self.nlevels, self.Zraw, self.theta_map)
            solver = self._crossed.gradient
        elif sw is not None and sw.q <= GRADIENT_MAX_Q:
            solver = sw.laplace_gradient
        else:
            return None
        eta, mu = state.eta, state.mu
        if type(fam) is Binomial and fam.link.name == "logit":
            if self.n and max(float(eta.max()), -float(eta.min())) > _THRESH:
                return None
            w = self.wt * mu * (1.0 - mu)
            dw = w * (1.0 - 2.0 * mu)
        elif type(fam) is Poisson and fam.link.name == "log":
            if self.n and float(eta.min()) < _LOG_EPS:
                return None
            w = self.wt * mu
            dw = w
        elif type(fam) is Binomial and fam.link.name in _NONCANONICAL_BOUNDS:
            return self._noncanonical_gradient(theta, state, joint, solver)
        else:
            return None
        r = -2.0 * self.wt * (self.y - mu)
        return solver(np.asarray(theta, dtype=float), state.u, r, w, dw, joint=joint)

    @property
    def sensitivity(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(du/dtheta, dbeta/dtheta)`` of the last joint :meth:`laplace_gradient` (None if none)."""
        if self.dense is not None:
            return None if self._crossed is None else self._crossed.sensitivity
        return None if self.single is None else self.single.sensitivity

    def _noncanonical_gradient(self, theta: np.ndarray, state: PirlsState, joint: bool, solver) -> np.ndarray | None:
        """:meth:`laplace_gradient` for the binomial probit and cloglog links (Fisher scoring: ``w`` is not the
        curvature).

        With ``m1 = d mu / d eta``, ``m2 = d^2 mu / d eta^2``, ``V`` and ``V'``: the score
        ``r = -2 wt (y - mu) m1 / V``, lme4's expected weights ``w = wt m1^2 / V`` (in ``log det``), their
        derivative ``dw = wt m1 (2 m2 V - m1^2 V') / V^2`` and the observed curvature
        ``wo = w - wt (y - mu) (m2 V - m1^2 V') / V^2``, which moves the modes. None where a mean or ``m1`` sits
        at the link's clamp (the deviance is not differentiable there as computed) or a ``wo`` is not positive.
        """
        fam, eta, mu, wt = self.family, state.eta, state.mu, self.wt
        lo, hi = _NONCANONICAL_BOUNDS[fam.link.name]
        if self.n and (float(eta.min()) <= lo or float(eta.max()) >= hi):
            return None
        with np.errstate(all="ignore"):
            m1, m2 = fam.link.mu_eta(eta), fam.link.mu_eta2(eta)
            V, dV = fam.variance(mu), fam.variance_deriv(mu)
            res = self.y - mu
            k = (m2 * V - m1 * m1 * dV) / (V * V)
            w = wt * m1 * m1 / V
            dw = wt * m1 * (2.0 * m2 * V - m1 * m1 * dV) / (V * V)
            wo = w - wt * res * k
            r = -2.0 * wt * res * m1 / V
        if not (np.all(np.isfinite(wo)) and np.all(np.isfinite(dw)) and np.all(wo[wt > 0] > 0)):
            return None
        return solver(np.asarray(theta, dtype=float), state.u, r, w, dw, joint=joint, wo=wo)

    def _fixed_buffer(self) -> np.ndarray:
        """A work array for ``offset + X beta`` held fixed through one uOnly PIRLS run."""
        if self._fixed_work is None or self._fixed_work.shape[0] != self.n:
            self._fixed_work = np.empty(self.n)
        return self._fixed_work

    def loglik_terms(
        self, mu: np.ndarray, dev_resid: np.ndarray | None = None, dev_sum: float | None = None
    ) -> float:
        """``-2 log p(y | mu)`` with normalising constants (R's ``family$aic`` without the 2 k).

        ``dev_resid``: the unit deviances at ``mu`` when known (or ``dev_sum``: their sum). For the Poisson and
        the binomial family with integer counts ``-2 log p(y | mu) = sum d_i + C(y)``; ``C`` is computed once and
        the objective then costs one sum instead of a second pass of logarithms over the data.
        """
        if self._loglik_constants is None:
            self._loglik_constants = self.family.loglik_constants(self.y, self.wt, self.ntrials)
        fam = self.family
        if dev_resid is not None or dev_sum is not None:
            if self._loglik_offset is None or self._loglik_offset[0] is not fam:
                self._loglik_offset = (fam, None)
                if self._deviance_offset_applies():
                    # the constant is taken at the family's starting means, not at the first mu asked for: its
                    # rounding must not depend on the order of calls (a model reloaded from disk computes its
                    # state before a refit, and the refit must retrace the original's evaluations exactly)
                    mu0 = fam.mustart(self.y, self.wt, self.ntrials)
                    full = -2.0 * fam.loglik(self.y, mu0, self.wt, self.ntrials, constants=self._loglik_constants)
                    dsum = float(self.dev_resids(mu0).sum())
                    if np.isfinite(full) and np.isfinite(dsum):
                        self._loglik_offset = (fam, full - dsum)
            offset = self._loglik_offset[1]
            if offset is not None:
                return (float(dev_resid.sum()) if dev_sum is None else dev_sum) + offset
        return -2.0 * fam.loglik(self.y, mu, self.wt, self.ntrials, constants=self._loglik_constants)

    def _deviance_offset_applies(self) -> bool:
        """Whether ``-2 log p(y | mu) - sum d_i`` is free of ``mu`` (R's binomial aic rounds ``m y``)."""
        fam = self.family
        if type(fam) is Poisson:
            return True
        if type(fam) is Binomial and fam.link.name in ("logit", "probit", "cloglog", "log"):
            k, size, f, _ = self._loglik_constants
            m = self.ntrials if np.any(self.ntrials > 1) else self.wt
            with np.errstate(invalid="ignore"):
                return bool(
                    np.array_equal(k, m * self.y) and np.array_equal(size, m)
                    and np.allclose(f * m, self.wt, rtol=1e-14, atol=0.0)
                )
        return False
