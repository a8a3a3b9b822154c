"""Analytic gradient in theta of the profiled ML deviance / REML criterion on the dense small path.

The problem is the one :class:`memoe.core.linalg.dense_small.DenseSmall` factors: the first factor's
``l_1`` diagonal blocks ``D_j = lambda_1' A_jj lambda_1 + I`` (``A = Z'Z``), the later factors' random
effects (``m_z`` of them, any ``q_k``) in the dense Schur complement ``S = I + Lambda_r' H Lambda_r`` with
``H = A_rr - A_r1 Lambda_1 D^-1 Lambda_1' A_1r``. A theta entry moves one entry ``(a, b)`` of the relative
factor ``lambda_k`` (``dLambda = I_{l_k} kron E_ab``); with the notation of :mod:`memoe.lmm.gradient`

* ``d log|M| = 2 tr(M^-1 Lambda'A dLambda) = 2 sum_l [M^-1 Lambda'A]_{(l,b),(l,a)}``. The diagonal blocks
  of ``M^-1 Lambda'A`` are, for a later block, those of ``S^-1 Lambda_r' H`` (a sum of elementwise
  products of ``S^-1`` with ``H Lambda_r = A_rr Lambda_r - Hg' G_z``, ``Hg = L^-1 Lambda_1' A_1r``,
  ``G_z = Hg Lambda_r``), and for the first block ``T_j (A_jj - Q_j + Q_j T_j' lambda_1' A_jj)`` with
  ``T_j = D_j^-1 lambda_1'`` and ``Q_j = F_j S^-1 F_j'``, ``F = A_1r Lambda_r``;
* the penalised RSS and ``log|R_X'R_X|`` terms are ``-2 [lambda_k' (c_r S_r + c_X S_U)]_ba`` with
  ``S_r``, ``S_U`` the level sums of ``(Z'r)_l (Z'r)_l'`` and ``U_l U_l'`` over block k, ``Y = Z'V^-1[X y]
  = Z'[X y] - A Lambda x`` and ``x = M^-1 Lambda'Z'[X y]`` from the bordered factor (two triangular
  solves), ``Z'r = Y [-beta; 1]``, ``U = Y_X R_X^-1``, ``c_r = n / pwrss`` (ML) or ``(n - p) / pwrss``
  (REML), ``c_X = 1`` for REML only.

Everything is a handful of dense products of the sizes the deviance already handles (``n_1 m_z^2`` and
``m_z^3`` flops: ``S^-1`` by LAPACK ``potri``); no loop over levels or subjects. The centring/scaling of
``[X y]`` and lme4's prior weights add constants to the criterion, so the gradient is that of the
working problem.

lme4 has no counterpart (``mkLmerDevfun`` is derivative-free); this is the gradient of the function
``lme4::mkLmerDevfun(...)`` returns (REML or ML), checked against central finite differences in
``tests/unit/test_lmm_gradient_small.py``.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
from scipy.linalg import blas, lapack

from memoe.core.linalg.dense_small import _rmul_lambda
from memoe.lmm.deviance import profiled_deviance

__all__ = ["one_factor_deviance_and_gradient", "one_factor_gradient_available", "small_deviance_and_gradient",
           "small_gradient_available"]


def small_gradient_available(problem) -> bool:
    """Whether the problem's deviance is evaluated on the dense small path (the gradient here applies).

    Parameters
    ----------
    problem : PLSProblem or other

    Returns
    -------
    bool
        True for an in-memory :class:`memoe.lmm.objective.PLSProblem` on the ``dense_small`` path without
        group weights (a mixture's weights never reach that path).
    """
    from memoe.lmm.objective import PLSProblem

    if type(problem) is not PLSProblem or problem.weights is not None:
        return False
    return problem.dense_small is not None or one_factor_gradient_available(problem)


# One grouping factor: the analytic gradient is taken ("auto") from this q_1 and up to this many levels.
# BOBYQA's evaluations grow with the number of theta entries (q_1 (q_1 + 1) / 2): on a q_1 = 3 slope model
# with 150 subjects 157 values + 30 for the check against 21 + 12 gradients here (15 against 32 ms); q_1 = 4,
# 100 subjects: 27 gradients against 730 values (26 against 232 ms). Per level a gradient costs a few batched
# q_1 x q_1 LAPACK calls: past ~500 levels BOBYQA wins again (1,000 subjects q_1 = 3: 105 against 84 ms).
# q_1 = 2 from the moment start floored on the correlation scale (memoe.lmm.start): 6-9 gradients against
# 40-66 BOBYQA values, fit min over 15 (ms): sleepstudy ML 1.75 against 2.09, Orthodont 2.49 against 2.86,
# BodyWeight 2.56 against 3.21; even at 80-100 levels (2.28 / 2.37, 1.78 / 1.81) and 3% slower at 500 levels
# (3.40 / 3.31), hence its own level limit. q_1 = 1 stays on BOBYQA (Dyestuff 16 values, 0.8 ms).
# Measured in benchmarks/README.md ("Small and medium LMM panel", second round).
ONE_FACTOR_GRADIENT_MIN_Q = 2
ONE_FACTOR_GRADIENT_MAX_LEVELS = 500
ONE_FACTOR_GRADIENT_Q2_MAX_LEVELS = 100


def one_factor_gradient_available(problem) -> bool:
    """Whether the one-factor value + gradient of this module applies (and "auto" fits with it).

    Parameters
    ----------
    problem : PLSProblem
        An in-memory problem without group weights.

    Returns
    -------
    bool
        True for one grouping factor with ``q_1 >= ONE_FACTOR_GRADIENT_MIN_Q`` and at most
        ``ONE_FACTOR_GRADIENT_MAX_LEVELS`` levels (``ONE_FACTOR_GRADIENT_Q2_MAX_LEVELS`` for q_1 = 2;
        :func:`one_factor_deviance_and_gradient` itself takes any one-factor problem without group weights).

    Examples
    --------
    >>> import memoe
    >>> sleep = memoe.datasets.load("sleepstudy")
    >>> one_factor_gradient_available(memoe.lmm("Reaction ~ Days + (1 | Subject)", sleep).problem)
    False
    >>> one_factor_gradient_available(memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).problem)
    True
    """
    if problem.multi or problem.q[0] < ONE_FACTOR_GRADIENT_MIN_Q:
        return False
    limit = ONE_FACTOR_GRADIENT_Q2_MAX_LEVELS if problem.q[0] == 2 else ONE_FACTOR_GRADIENT_MAX_LEVELS
    return problem.nlevels[0] <= limit


def _fwd_levels(L: np.ndarray, B: np.ndarray) -> None:
    """In place ``B_j <- L_j^-1 B_j`` for all levels: ``L`` (l1, q1, q1) lower, ``B`` (q1, l1, k)."""
    q1 = L.shape[1]
    for a in range(q1):
        Ba = B[a]
        for b in range(a):
            Ba -= L[:, a, b][:, None] * B[b]
        Ba /= L[:, a, a][:, None]


def _bwd_levels(L: np.ndarray, B: np.ndarray) -> None:
    """In place ``B_j <- L_j^-T B_j`` for all levels (same layout as :func:`_fwd_levels`)."""
    q1 = L.shape[1]
    for a in range(q1 - 1, -1, -1):
        Ba = B[a]
        for b in range(a + 1, q1):
            Ba -= L[:, b, a][:, None] * B[b]
        Ba /= L[:, a, a][:, None]


def small_deviance_and_gradient(pb, theta: np.ndarray, reml: bool) -> tuple[float, np.ndarray]:
    """Profiled deviance (ML) or REML criterion and its gradient in theta on the dense small path.

    Parameters
    ----------
    pb : PLSProblem
        A problem for which :func:`small_gradient_available` is True.
    theta : numpy.ndarray, shape (ntheta,)
    reml : bool

    Returns
    -------
    deviance : float
        ``pb.deviance(theta, reml)`` up to rounding (``inf`` where a factor fails).
    gradient : numpy.ndarray, shape (ntheta,)
        NaN where the deviance is not finite.

    Examples
    --------
    >>> import memoe
    >>> from memoe.lmm.gradient_small import small_deviance_and_gradient
    >>> pen = memoe.datasets.load("Penicillin")
    >>> pb = memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).problem
    >>> pb.solver
    'dense_small'
    >>> d, g = small_deviance_and_gradient(pb, [1.5, 3.0], reml=True)
    >>> round(d, 6) == round(pb.deviance([1.5, 3.0], True), 6)
    True
    """
    theta = np.asarray(theta, dtype=float)
    ds = pb.dense_small
    if ds is None:
        return one_factor_deviance_and_gradient(pb, theta, reml)
    tm = pb.theta_map
    lambdas = tm.lambdas(theta)
    logdet_1, c, info = ds.factor(lambdas)
    ok, logdet_Z, logdet_X, pwrss = ds._summaries(logdet_1, c, info)
    nan = np.full(theta.shape, np.nan)
    if not ok:
        return math.inf, nan
    n, p = pb._n_eff, pb.p
    dev = profiled_deviance(logdet_Z - pb.log_weights, logdet_X, pwrss, n, p, reml)
    if pb.scaling is not None:
        dev += pb.scaling.deviance_shift(n, p, reml)
    if not math.isfinite(dev):
        return math.inf, nan
    grad = _gradient(ds, lambdas, c, pwrss, n, p, reml, tm)
    if grad is None:
        return math.inf, nan
    return dev, grad


def _gradient(ds, lambdas, c, pwrss, n, p, reml, tm) -> np.ndarray | None:
    mz, q1, l1, nr, m = ds.mz, ds.q[0], ds.nlevels[0], ds.nr, ds.m
    n1 = ds.n1
    lam1, lam_r = lambdas[0], lambdas[1:]
    q_r, offs = ds.q[1:], ds._offsets_r
    L = ds._L  # (l1, q1, q1) factors of D_j
    R3 = ds._R.reshape(q1, l1, nr)  # Z_1'[Z_r X y], rows (a, j)
    G3 = ds._B.reshape(q1, l1, nr)  # L^-1 lambda_1' [A_1r Lambda_r, Z_1'X, Z_1'y]
    Gz, C = G3[:, :, :mz], G3[:, :, mz:]
    # profiled beta and R_X^-1 ((R_X'R_X)^-1 = RXi RXi') from the border of the factor (LAPACK directly:
    # scipy's wrappers cost more than these solves at this size)
    if p:
        LXX = c[mz : mz + p, mz : mz + p]
        beta, _ = lapack.dtrtrs(LXX, c[mz + p, mz : mz + p], lower=1, trans=1)
        Li, _ = lapack.dtrtrs(LXX, np.eye(p), lower=1)
        RXi = Li.T  # R_X = L_XX' (upper), R_X^-1 = L_XX^-T
    else:
        beta, RXi = np.zeros(0), np.zeros((0, 0))
    bvec = np.append(-beta, 1.0)
    # x = M^-1 Lambda'Z'[X y] = L_Z^-T [C; L32']: later part x2, then the first part level by level
    if mz:
        Ls = c[:mz, :mz]
        x2, info = lapack.dtrtrs(Ls, c[mz:, :mz].T, lower=1, trans=1)
        if info != 0:
            return None
        x1 = C - Gz @ x2  # (q1, l1, m)
    else:
        x2 = np.zeros((0, m))
        x1 = C.copy()
    _bwd_levels(L, x1)
    w1 = (lam1 @ x1.reshape(q1, l1 * m)).reshape(q1, l1, m)  # Lambda_1 x1
    # scalar later blocks (the common case): Lambda_r = diag(dcol), products become scalings
    dcol = np.repeat([lk[0, 0] for lk in lam_r], ds._rest_counts) if ds._rest_scalar and mz else None
    if dcol is not None:
        w2 = x2 * dcol[:, None]
    else:
        w2 = np.empty((m, mz))
        _rmul_lambda(np.ascontiguousarray(x2.T), offs, q_r, [lk.T for lk in lam_r], w2)  # (Lambda_r x2)'
        w2 = w2.T
    A11 = ds._zz  # (l1, q1, q1)
    A1r = R3[:, :, :mz]
    # Y = Z'[X y] - A Lambda x
    if q1 == 1:
        Y1 = R3[:, :, mz:] - A11[:, 0, 0][None, :, None] * w1 - A1r @ w2
    else:
        Y1 = R3[:, :, mz:] - np.einsum("jab,bjm->ajm", A11, w1) - A1r @ w2
    Y2 = ds._XYtZr.T - ds._R[:, :mz].T @ w1.reshape(n1, m) - ds._ZrtZr @ w2
    zr1 = Y1 @ bvec  # (q1, l1)
    zr2 = Y2 @ bvec
    c_r = (n - p if reml else n) / pwrss
    # the RSS and log|R_X'R_X| parts: lambda_k' (c_r S_r + c_X S_U) per block
    P1 = c_r * (zr1 @ zr1.T)
    if reml:
        U1 = (Y1.reshape(n1, m)[:, :p] @ RXi).reshape(q1, l1 * p)
        P1 += U1 @ U1.T
        U2 = Y2[:, :p] @ RXi
    # d log|M|, first block: T_j (A_jj - Q_j + Q_j T_j' lambda_1' A_jj), T_j = D_j^-1 lambda_1'
    if mz:
        # S^-1 (full symmetric) from the Schur factor; Q_j = F_j S^-1 F_j' = Y_j Y_j' with Y = F Ls^-T
        Sinv, info = lapack.dpotri(Ls, lower=1)
        if info != 0:
            return None
        iu = ds._triu
        Sinv[iu] = Sinv.T[iu]
        Yf = blas.dtrsm(1.0, Ls, ds._Rl[:, :mz], side=1, lower=1, trans_a=1)  # F = A_1r Lambda_r (rows (a, j))
    if q1 == 1:
        # scalar first factor: every per-level quantity is a vector over levels (no 1 x 1 matrix stacks)
        l1v = lam1[0, 0]
        d1 = L[:, 0, 0]
        a11 = A11[:, 0, 0]
        t1 = l1v / (d1 * d1)
        if mz:
            q = np.einsum("jc,jc->j", Yf, Yf)
            inner = a11 - q + q * t1 * (l1v * a11)
        else:
            inner = a11
        K1 = np.array([[t1 @ inner - l1v * P1[0, 0]]])
    else:
        Linv = np.linalg.inv(L)
        T = (np.swapaxes(Linv, 1, 2) @ Linv) @ lam1.T  # (l1, q1, q1)
        if mz:
            Y3 = Yf.reshape(q1, l1, mz)
            Q = np.einsum("ajc,bjc->jab", Y3, Y3)  # (l1, q1, q1)
            inner = A11 - Q + Q @ np.swapaxes(T, 1, 2) @ lam1.T @ A11
        else:
            inner = A11
        K1 = (T @ inner).sum(axis=0) - lam1.T @ P1
    Ks = [K1]
    if mz:
        # later blocks: diagonal blocks of S^-1 Lambda_r' H, H = A_rr - Hg'Hg, Hg = L^-1 lambda_1' A_1r
        if q1 == 1:
            Hg = A1r[0] * (l1v / d1)[:, None]
        else:
            Hg = np.matmul(lam1.T, A1r.reshape(q1, l1 * mz)).reshape(q1, l1, mz)
            _fwd_levels(L, Hg)
            Hg = Hg.reshape(n1, mz)
        # the full product (no triangle to mirror): at these sizes the GEMM costs less than the index copy
        H = ds._ZrtZr - Hg.T @ Hg
        if dcol is not None:
            # every later block scalar: its d log|M| is sum_{c in k} sum_d S^-1_cd H_cd lambda_d (per column,
            # summed by block), and lambda_k (c_r S_r + c_X S_U) are sums of squares by block
            cb, nb = ds._col_block, len(q_r)
            dk = np.bincount(cb, (Sinv * H) @ dcol, nb)
            Pk = c_r * np.bincount(cb, zr2 * zr2, nb)
            if reml:
                Pk += np.bincount(cb, np.einsum("ik,ik->i", U2, U2), nb)
            lr = dcol[ds._block_first]
            Ks.extend((dk - lr * Pk).reshape(nb, 1, 1))
        else:
            HL = np.empty((mz, mz))
            _rmul_lambda(H, offs, q_r, lam_r, HL)
        for k, qk in enumerate(q_r if dcol is None else ()):
            o0, o1 = offs[k], offs[k + 1]
            lk = (o1 - o0) // qk
            zk = zr2[o0:o1].reshape(lk, qk)
            Pk = c_r * (zk.T @ zk)
            if reml:
                Uk = U2[o0:o1].reshape(lk, qk * p)
                Pk += (Uk.reshape(lk, qk, p).transpose(1, 0, 2).reshape(qk, lk * p)
                       @ Uk.reshape(lk, qk, p).transpose(1, 0, 2).reshape(qk, lk * p).T)
            if qk == 1:
                dk = np.einsum("ic,ic->", Sinv[o0:o1], HL[o0:o1]).reshape(1, 1)
            else:
                dk = np.einsum("lbc,lac->ba", Sinv[o0:o1].reshape(lk, qk, mz), HL[o0:o1].reshape(lk, qk, mz))
            Ks.append(dk - lam_r[k].T @ Pk)
    grad = np.empty(len(tm.block))
    for t, (b, i, j) in enumerate(zip(tm.block, tm.row, tm.col, strict=True)):
        grad[t] = 2.0 * Ks[b][j, i]
    return grad


# theta-free arrays of the one-factor gradient, per problem (the problem's statistics do not change)
_ONE_SETUP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _one_setup(pb) -> tuple:
    got = _ONE_SETUP.get(pb)
    if got is None:
        q1, m = pb.q[0], pb.m
        A = np.ascontiguousarray(np.moveaxis(pb._zz, -1, 0))  # (l1, q1, q1): Z_j'Z_j
        B = np.ascontiguousarray(np.moveaxis(pb._zxy, -1, 0))  # (l1, q1, m): Z_j'[X_j y_j]
        flat = (np.asarray(pb.theta_map.row) * q1 + np.asarray(pb.theta_map.col)).astype(np.intp)
        A2 = A3 = None
        if q1 == 2:
            # entries as vectors over levels (the closed-form 2 x 2 path)
            A3 = np.stack([A[:, 0, 0], A[:, 1, 0], A[:, 1, 1]])
            A2 = (A[:, 0, 0], A[:, 1, 0], A[:, 1, 1], np.ascontiguousarray(B[:, 0, :]),
                  np.ascontiguousarray(B[:, 1, :]))
        got = _ONE_SETUP[pb] = (A, B, flat, B.reshape(-1, m), A2, A3)
    return got


def one_factor_deviance_and_gradient(pb, theta: np.ndarray, reml: bool) -> tuple[float, np.ndarray]:
    """Profiled deviance (ML) or REML criterion and its gradient in theta for one grouping factor.

    Per level ``S_j = lambda' A_j lambda + I`` (``A_j = Z_j'Z_j``, order ``q_1``), ``K_j = lambda S_j^-1
    lambda'`` and ``B_j = Z_j'[X_j y_j]``; the ``[X y]`` corner ``[X y]'[X y] - sum_j B_j'K_j B_j`` gives
    ``log|R_X'R_X|``, beta and the penalised RSS (its Cholesky factor), ``log|M| = sum_j log|S_j|``. With
    ``Y_j = Z_j'V_j^-1[X y] = B_j - A_j K_j B_j`` (Woodbury), ``r_j = Y_j [-beta; 1]`` and ``U_j = Y_jX R_X^-1``
    the gradient in the entry ``(a, b)`` of ``lambda`` is ``[2 sum_j A_j lambda S_j^-1 - 2 P lambda]_ab`` with
    ``P = c_r sum_j r_j r_j' + c_X sum_j U_j U_j'`` (the terms of :mod:`memoe.lmm.gradient`). Batched over
    levels: a dozen NumPy calls on ``(l_1, q_1, q_1)`` and ``(l_1, q_1, m)`` arrays, no loop over levels.

    Parameters
    ----------
    pb : PLSProblem
        One grouping factor, no group weights (:func:`one_factor_gradient_available`).
    theta : numpy.ndarray, shape (ntheta,)
    reml : bool

    Returns
    -------
    deviance : float
        ``pb.deviance(theta, reml)`` up to rounding (``inf`` where a factor fails).
    gradient : numpy.ndarray, shape (ntheta,)
        NaN where the deviance is not finite.

    Examples
    --------
    >>> import memoe
    >>> sleep = memoe.datasets.load("sleepstudy")
    >>> pb = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).problem
    >>> d, g = one_factor_deviance_and_gradient(pb, [1.0, 0.1, 0.2], reml=True)
    >>> round(d, 6) == round(pb.deviance([1.0, 0.1, 0.2], True), 6)
    True
    """
    theta = np.asarray(theta, dtype=float)
    nan = np.full(theta.shape, np.nan)
    A, B, flat, B2, A2, A3 = _one_setup(pb)
    l1, q1, m = B.shape
    p = pb.p
    lamf = np.zeros(q1 * q1)
    lamf[flat] = theta
    if not math.isfinite(math.fsum(lamf.tolist())):
        return math.inf, nan
    lam = lamf.reshape(q1, q1)
    if q1 == 1:
        # scalar blocks as vectors: S_j = l^2 a_j + 1, K_j = l^2 / S_j
        lv = float(lam[0, 0])
        a = A[:, 0, 0]
        S = a * (lv * lv)
        S += 1.0
        if not S.min() > 0.0:
            return math.inf, nan
        logdet_Z = float(np.log(S).sum())
        Sinv = 1.0 / S
        k = Sinv * (lv * lv)
        KB = B[:, 0, :] * k[:, None]  # (l1, m)
        CtC = B[:, 0, :].T @ KB
        Y = B[:, 0, :] - a[:, None] * KB  # (l1, m)
    elif q1 == 2:
        # closed forms on the entries (vectors over levels): batched 2 x 2 LAPACK/matmul calls cost ~10x more
        a00, a10, a11, b0, b1 = A2
        l00, l10, l11 = float(lam[0, 0]), float(lam[1, 0]), float(lam[1, 1])
        al = np.array([[l00, l10, 0.0], [0.0, l11, 0.0], [0.0, l00, l10], [0.0, 0.0, l11]]) @ A3  # A lambda
        al00, al01, al10, al11 = al
        s00 = l00 * al00 + l10 * al10 + 1.0
        s01 = l00 * al01 + l10 * al11
        s11 = l11 * al11 + 1.0
        det = s00 * s11 - s01 * s01
        if not (det.min() > 0.0 and s00.min() > 0.0):
            return math.inf, nan
        logdet_Z = float(np.log(det).sum())
        i00, i01, i11 = s11 / det, -s01 / det, s00 / det  # S_j^-1
        # K_j = lambda S_j^-1 lambda'
        u = l10 * i00 + l11 * i01
        v = l10 * i01 + l11 * i11
        k00 = (l00 * l00) * i00
        k01 = l00 * u
        k11 = u * l10 + v * l11
        KB = np.empty((l1, 2, m))
        KB0, KB1 = KB[:, 0, :], KB[:, 1, :]
        np.multiply(b0, k00[:, None], out=KB0)
        KB0 += b1 * k01[:, None]
        np.multiply(b0, k01[:, None], out=KB1)
        KB1 += b1 * k11[:, None]
        CtC = B2.T @ KB.reshape(-1, m)
        Y = np.empty((l1, 2, m))
        Y[:, 0, :] = b0 - a00[:, None] * KB0 - a10[:, None] * KB1
        Y[:, 1, :] = b1 - a10[:, None] * KB0 - a11[:, None] * KB1
    else:
        AL = A @ lam  # (l1, q1, q1)
        S = lam.T @ AL
        S[:, range(q1), range(q1)] += 1.0
        try:
            Lc = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return math.inf, nan
        dg = Lc[:, range(q1), range(q1)]
        if not dg.min() > 0.0:
            return math.inf, nan
        logdet_Z = 2.0 * float(np.log(dg).sum())
        Li = np.linalg.inv(Lc)  # (l1, q1, q1) lower: S_j^-1 = Li' Li
        LiLt = Li @ lam.T  # L_j^-1 lambda'
        KB = np.swapaxes(LiLt, 1, 2) @ (LiLt @ B)  # K_j B_j, K_j = lambda S_j^-1 lambda'
        CtC = B2.T @ KB.reshape(-1, m)
        Y = B - A @ KB  # (l1, q1, m)
    if not math.isfinite(logdet_Z):
        return math.inf, nan
    Mc = pb._wXYtXY - CtC
    Lm, info = lapack.dpotrf(Mc, lower=1)
    if info != 0:
        return math.inf, nan
    d = np.diag(Lm)
    if not d.min() > 0.0:
        return math.inf, nan
    logdet_X = 2.0 * float(np.log(d[:p]).sum())
    pwrss = float(d[p]) ** 2
    n = pb._n_eff
    dev = profiled_deviance(logdet_Z - pb.log_weights, logdet_X, pwrss, n, p, reml)
    if pb.scaling is not None:
        dev += pb.scaling.deviance_shift(n, p, reml)
    if not math.isfinite(dev):
        return math.inf, nan
    # profiled beta from the corner's factor: L_XX' beta = l_yX
    if p:
        LXX = np.ascontiguousarray(Lm[:p, :p])
        beta, _ = lapack.dtrtrs(LXX, Lm[p, :p], lower=1, trans=1)
    else:
        beta = np.zeros(0)
    bvec = np.append(-beta, 1.0)
    c_r = (n - p if reml else n) / pwrss
    if q1 == 1:
        r = Y @ bvec  # (l1,)
        P = c_r * float(r @ r)
        if reml and p:
            # U_j = Y_jX R_X^-1 = (L_XX^-1 Y_jX')'
            U, _ = lapack.dtrtrs(LXX, np.ascontiguousarray(Y[:, :p].T), lower=1)
            P += float(np.einsum("ij,ij->", U, U))
        D = 2.0 * float(a @ Sinv) * lv - 2.0 * P * lv
        return dev, np.array([D])
    r = Y @ bvec  # (l1, q1)
    P = c_r * (r.T @ r)
    if reml and p:
        U, _ = lapack.dtrtrs(LXX, np.ascontiguousarray(Y[:, :, :p].reshape(-1, p).T), lower=1)  # (p, l1 q1)
        U = U.reshape(p, l1, q1)
        P += np.einsum("pja,pjb->ab", U, U)
    if q1 == 2:
        # d log|M| = 2 sum_j A_j lambda S_j^-1: four dot products over levels
        Si = np.stack([i00, i01, i01, i11])  # rows (00, 01, 10, 11) of S_j^-1
        G1 = np.array([[al00 @ Si[0] + al01 @ Si[2], al00 @ Si[1] + al01 @ Si[3]],
                       [al10 @ Si[0] + al11 @ Si[2], al10 @ Si[1] + al11 @ Si[3]]])
    else:
        # d log|M| = 2 sum_j A_j lambda S_j^-1 = 2 sum_j (A_j lambda L_j^-T) L_j^-1
        G1 = (AL @ np.swapaxes(Li, 1, 2) @ Li).sum(axis=0)
    D = 2.0 * (G1 - P @ lam)
    return dev, D.ravel()[flat]
