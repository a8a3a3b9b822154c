"""Analytic gradient in theta of the profiled ML deviance and REML criterion (PLS path).

With ``M = Lambda'Z'Z Lambda + I``, ``V = I + Z Lambda Lambda'Z'`` (so that ``log|V| = log|M|``),
``Y = Z'V^-1 [X y]`` and ``r = V^-1 (y - X beta)`` at the profiled beta (``Z'r = Y [-beta; 1]``,
``u = Lambda'Z'r``, ``pwrss = r'(y - X beta)``), a theta entry ``t`` moves one entry ``(a, b)`` of the
relative factor ``lambda_k`` of block k (``dLambda = I_{l_k} kron E_ab``) and

* ``d log|M| = 2 tr(M^-1 Lambda'Z'Z dLambda)``,
* ``d pwrss = -2 (Z'r)' dLambda u`` (envelope theorem: beta and u are minimisers),
* ``d log|X'V^-1 X| = -2 tr((X'V^-1 X)^-1 Y_X' dLambda Lambda' Y_X)``,

so that the ML deviance ``log|M| + n log pwrss + c`` and the REML criterion
``log|M| + log|R_X'R_X| + (n - p) log pwrss + c`` have the gradient
``d log|M| - 2 [lambda_k' (c_r S_r + c_X S_U)]_ba`` with ``S_r = sum_l (Z'r)_l (Z'r)_l'`` and
``S_U = sum_l U_l U_l'`` over the levels of block k (``U = Y_X R_X^-1``), ``c_r = n / pwrss`` (ML) or
``(n - p) / pwrss`` (REML) and ``c_X = 1`` for REML only. ``Y`` costs ``p + 1`` solves with the blocked
factor the deviance computes anyway.

``d log|M|`` on the dense crossed path (first factor block-diagonal ``D``, the later scalar blocks the
dense Schur complement ``S = I + Lambda_r' H Lambda_r``, ``H = Z_r'Z_r - Z_r'Z_1 W Z_1'Z_r``,
``W_j = lambda_1 D_j^-1 lambda_1'``): for a later block, ``2 sum_{c in k} sum_d S^-1_cd lambda_d H_dc``;
for the first, ``2 sum_j [T_j (A_j - G_j + G_j T_j' lambda_1' A_j)]_ba`` with ``T_j = D_j^-1 lambda_1'``,
``A_j = Z_1j'Z_1j`` and ``G_j`` the diagonal blocks of ``Z_1'Z_r Lambda_r S^-1 Lambda_r' Z_r'Z_1``. Both
need ``S^-1`` only where ``H`` is non-zero: the positions of the scatter map of
:class:`memoe.core.linalg.crossed.RestSchur` (a gather, and ``G_j`` is one product with the map's
transpose). ``S^-1`` comes from LAPACK ``potri`` on the leading block of the bordered factor in place
(that block is the factor of ``S``), on two threads when a core is idle
(:func:`memoe.core.linalg.split_inverse.potri_lower`).

The centring/scaling of ``[X y]`` (``PLSProblem.scaling``) and lme4's prior weights only add a constant
to the criterion, so the gradient is that of the scaled problem; group weights (one grouping factor)
weight every level's terms.

lme4 has no counterpart (its ``devfun`` is derivative-free); this is the gradient of
``lme4::mkLmerDevfun(...)`` (REML or ML) checked against finite differences in the tests.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import scipy.linalg as sla
from scipy.linalg import lapack

from memoe.core.linalg.soa import soa_backward_solve_t, soa_forward_solve, soa_lincomb
from memoe.core.linalg.split_inverse import helper_pool, potrf_lower, potri_lower, split_workers
from memoe.core.linalg.threads import blas_threads, idle_cores, pooled_active, usable_cores
from memoe.errors import MemoeError
from memoe.lmm.gradient_small import small_deviance_and_gradient, small_gradient_available

__all__ = [
    "GRADIENT_MODEL_FTOL_REL", "dense_value", "deviance_and_gradient", "gradient_available", "gradient_preferred",
    "stencil_workers",
]

# the gradient optimiser stops once its validated quasi-Newton model predicts a decrease below this times |f|
# (memoe.core.optim.quasi_newton, model_ftol_rel): ~1e-14 relative is what the skipped last step gained
GRADIENT_MODEL_FTOL_REL = 1e-12


def gradient_available(problem) -> bool:
    """Whether :func:`deviance_and_gradient` supports the problem's path.

    One grouping factor (group weights allowed), or crossed/nested factors on the dense Schur path
    with scalar random effects after the first factor and the precomputed scatter map. The small dense
    path has its own test (:func:`memoe.lmm.gradient_small.small_gradient_available`), to which
    :func:`deviance_and_gradient` dispatches. Elsewhere (sparse, matrix-free, vector-valued later factors
    on the blocked path, a Dask problem) the fit keeps the derivative-free BOBYQA.
    """
    from memoe.lmm.objective import PLSProblem

    if type(problem) is not PLSProblem or problem.dense_small is not None:
        return False
    if not problem.multi:
        return True
    rest = problem.rest
    return problem.sparse is None and rest is not None and rest.diag_lambda and rest.P is not None


def gradient_preferred(problem) -> bool:
    """Whether ``FitControl(optimizer="auto")`` fits with the gradient: the dense crossed/nested path only.

    With one grouping factor the gradient exists but does not pay: an evaluation there is a few cheap
    passes over the levels (8 ms at 10^5 levels), the gradient costs 8x that in this implementation
    (``long_1m``: 14 + 3 gradient evaluations in 1.7 s against BOBYQA's 32 + 12 values in 0.5 s;
    sleepstudy: equal), so BOBYQA stays. On the dense path the value is dominated by ``potrf`` of the
    Schur complement and the gradient adds one ``potri`` (about 2.5x the value) for 4-5x fewer evaluations.
    """
    return gradient_available(problem) and problem.multi


def stencil_workers(problem) -> int:
    """Threads for the ``k`` independent gradients of a gradient-difference Hessian (start and check).

    2 on the dense crossed path when a second usable core is idle at the call: an evaluation there is ~80%
    LAPACK (``potrf``/``potri`` of the Schur complement) and large NumPy passes, which release the GIL, and
    each thread keeps one BLAS thread. 1 otherwise: one grouping factor (evaluations of a few ms, where the
    hand-off does not pay), one core, or the other core busy (then two threads of ours share one core and
    the stencil gets slower than serial; :func:`memoe.core.linalg.threads.idle_cores`).

    Examples
    --------
    >>> import memoe
    >>> pen = memoe.datasets.load("Penicillin")
    >>> stencil_workers(memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).problem) in (1, 2)
    True
    """
    return 2 if gradient_preferred(problem) and usable_cores() >= 2 and idle_cores() >= 1 else 1


def deviance_and_gradient(problem, theta: np.ndarray, reml: bool, keep: str | None = None) -> tuple[float, np.ndarray]:
    """Profiled deviance (ML) or REML criterion and its gradient in theta.

    Parameters
    ----------
    problem : PLSProblem
        A problem for which :func:`gradient_available` is True.
    theta : numpy.ndarray, shape (ntheta,)
    reml : bool
    keep : {None, "best", "always"}
        On the dense crossed path, offer this evaluation's factor to the problem
        (:meth:`memoe.lmm.objective.PLSProblem.offer_factor`): "best" keeps it when its criterion is the lowest
        offered since :meth:`~memoe.lmm.objective.PLSProblem.forget_factor`, "always" keeps it. The fit's result
        at the same theta then reuses it instead of factoring again (one ~10 MB copy instead of a ~30 ms
        refactorisation on the InstEval shape). Only the main thread outside a pooled stencil keeps.

    Raises
    ------
    MemoeError
        The problem's path has no gradient here (:func:`gradient_available` is False).

    Returns
    -------
    deviance : float
        Equal to ``problem.deviance(theta, reml)`` up to rounding (``inf`` where the factor fails).
    gradient : numpy.ndarray, shape (ntheta,)
        NaN where the deviance is not finite.

    Examples
    --------
    >>> import memoe
    >>> from memoe.lmm.gradient import deviance_and_gradient
    >>> pen = memoe.datasets.load("Penicillin")
    >>> pb = memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).problem
    >>> pb.set_solver("dense")
    >>> d, g = deviance_and_gradient(pb, [1.5, 3.0], reml=True)
    >>> round(d, 4) == round(pb.deviance([1.5, 3.0], True), 4)
    True
    """
    if small_gradient_available(problem):
        # the dense small path (memoe.lmm.gradient_small); fit() holds the BLAS thread cap already
        if getattr(problem, "threads_held", False):
            return small_deviance_and_gradient(problem, theta, reml)
        with blas_threads(problem.blas_threads):
            return small_deviance_and_gradient(problem, theta, reml)
    if not gradient_available(problem):
        raise MemoeError(
            "deviance_and_gradient needs an in-memory PLSProblem with one grouping factor, or crossed/nested factors "
            "on the blocked dense path (solver 'dense') with scalar random effects after the first factor; "
            f"this problem's path is {getattr(problem, 'solver', type(problem).__name__)!r}"
            + ("" if getattr(getattr(problem, "rest", None), "diag_lambda", True)
               else " with vector-valued random effects after the first factor"))
    theta = np.asarray(theta, dtype=float)
    with blas_threads(problem.blas_threads):
        if problem.multi:
            return _dense(problem, theta, reml, keep)
        return _one(problem, theta, reml)


def dense_value(problem, theta: np.ndarray, reml: bool) -> float:
    """The criterion alone on the dense crossed path, safe on several threads at once (a pooled stencil).

    :meth:`memoe.lmm.objective.PLSProblem.deviance` fills the problem's one buffer; this takes the thread's own
    (as :func:`deviance_and_gradient` does) and stops after ``potrf``: about 0.4 of a value + gradient (no
    ``potri``). For the value-difference start Hessian of :meth:`memoe.lmm.model.LMM.fit`.

    Examples
    --------
    >>> import memoe
    >>> pen = memoe.datasets.load("Penicillin")
    >>> pb = memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).problem
    >>> pb.set_solver("dense")
    >>> round(dense_value(pb, [1.5, 3.0], True), 6) == round(pb.deviance([1.5, 3.0], True), 6)
    True
    """
    if not (gradient_available(problem) and problem.multi):
        raise MemoeError("dense_value needs crossed/nested factors on the blocked dense path (solver 'dense') with "
                         f"scalar random effects after the first factor; this problem's path is "
                         f"{getattr(problem, 'solver', type(problem).__name__)!r}")
    with blas_threads(problem.blas_threads):
        return _dense(problem, np.asarray(theta, dtype=float), reml, value_only=True)[0]


_local = threading.local()
_cache_lock = threading.Lock()
# entries of the lambda_1 cache kept per problem (the most recent ones): a stencil steps from one point
FIRST_CACHE_SIZE = 2


def _first_cached(pb, key: bytes):
    """The cached ``(logdet_Z, CtC, L, C, logdet_level, W, TtC, H)`` for ``lambda_1`` bytes ``key``, or None."""
    with _cache_lock:
        cache = pb.__dict__.get("_first_cache")
        return None if cache is None else cache.get(key)


def _first_store(pb, key: bytes, pieces: tuple) -> None:
    """Cache an evaluation's lambda_1 pieces (read-only from here on) on the problem, the oldest entry dropped."""
    with _cache_lock:
        cache = pb.__dict__.setdefault("_first_cache", {})
        cache[key] = pieces
        while len(cache) > FIRST_CACHE_SIZE:
            del cache[next(iter(cache))]


def _thread_buffer(nb: int) -> np.ndarray:
    """A C-ordered (nb, nb) work array owned by the calling thread (kept while the thread lives)."""
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.shape != (nb, nb):
        buf = _local.buffer = np.zeros((nb, nb))
    return buf


def _failed(theta: np.ndarray) -> tuple[float, np.ndarray]:
    return math.inf, np.full(theta.shape, np.nan)


def _beta_rx(c: np.ndarray, mz: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Profiled beta and ``R_X^-1`` (with ``(R_X'R_X)^-1 = RXi RXi'``) from the bordered factor."""
    if not p:
        return np.zeros(0), np.zeros((0, 0))
    LXX = c[mz : mz + p, mz : mz + p]
    lyX = c[mz + p, mz : mz + p]
    beta = sla.solve_triangular(LXX, lyX, trans="T", lower=True, check_finite=False)
    RXi = sla.solve_triangular(LXX, np.eye(p), lower=True, check_finite=False).T
    return beta, RXi


def _first_terms(pb, lam: np.ndarray, L: np.ndarray, Y1: np.ndarray, G: np.ndarray | None):
    """Level sums of the first block: ``sum_j X_j`` (the log|M| part), ``S_r`` and ``S_U`` inputs.

    ``X_j = T_j (A_j - G_j + G_j T_j' lambda' A_j)`` with ``T_j = D_j^-1 lambda'``; shapes SoA (q1, ., l1).
    """
    q1, l1 = pb.q[0], pb.nlevels[0]
    A = pb._zz
    lamT = np.ascontiguousarray(np.broadcast_to(lam.T[:, :, None], (q1, q1, l1)))
    T = soa_backward_solve_t(L, soa_forward_solve(L, lamT))
    if G is None:
        inner = A
    else:
        # G_j T_j' lambda' A_j: T_j' lambda' = (lambda T_j)'
        lT = soa_lincomb(lam, T)  # lambda T_j
        inner = A - G + np.einsum("abl,cbl,cdl->adl", G, lT, A, optimize=True)
    return np.einsum("abl,bcl->acl", T, inner, optimize=True)


def _assemble(pb, theta, reml, pwrss, Xsum, S1, dlogM_rest, Sr_rest, SU_rest, lam1):
    """The gradient from the per-block pieces."""
    tm = pb.theta_map
    n, p = pb._n_eff, pb.p
    c_r = (n - p if reml else n) / pwrss
    grad = np.empty(len(theta))
    Sr1, SU1 = S1
    K1 = Xsum - lam1.T @ (c_r * Sr1 + (SU1 if reml else 0.0))
    for t, (b, i, j) in enumerate(zip(tm.block, tm.row, tm.col, strict=True)):
        if b == 0:
            grad[t] = 2.0 * K1[j, i]
        else:
            lk = theta[t]
            grad[t] = dlogM_rest[b - 1] - 2.0 * lk * (c_r * Sr_rest[b - 1] + (SU_rest[b - 1] if reml else 0.0))
    return grad


def _level_sums(pb, Y1: np.ndarray, bvec: np.ndarray, RXi: np.ndarray):
    """``S_r = sum_j w_j (Z_j'r)(Z_j'r)'`` and ``S_U = sum_j w_j U_j U_j'`` of the first block."""
    p = pb.p
    zr = np.einsum("aml,m->al", Y1, bvec)
    U = np.einsum("aml,mk->akl", Y1[:, :p], RXi)
    w = pb.weights
    if w is None:
        return zr @ zr.T, np.einsum("akl,bkl->ab", U, U)
    return (zr * w) @ zr.T, np.einsum("akl,bkl,l->ab", U, U, w)


def _one(pb, theta: np.ndarray, reml: bool) -> tuple[float, np.ndarray]:
    """One grouping factor: everything is per level (group weights allowed)."""
    lam = pb.theta_map.lambdas(theta)[0]
    logdet_Z, CtC, (L, C, _) = pb._first_block(lam, True)
    c, info = lapack.dpotrf(pb._wXYtXY - CtC, lower=1, clean=0, overwrite_a=1)
    ok, logdet_Z, logdet_X, pwrss = pb._finish(logdet_Z, c, info)
    dev = pb._criterion(ok, logdet_Z, logdet_X, pwrss, reml)
    if not math.isfinite(dev):
        return _failed(theta)
    beta, RXi = _beta_rx(c, 0, pb.p)
    bvec = np.append(-beta, 1.0)
    # Y_j = Z_j'[X y] - A_j lambda M_j^-1 lambda' Z_j'[X y], M_j^-1 lambda' Z_j'[X y] = L_j^-T C_j
    w1 = soa_lincomb(lam, soa_backward_solve_t(L, C))
    Y1 = pb._zxy - np.einsum("abl,bml->aml", pb._zz, w1, optimize=True)
    X = _first_terms(pb, lam, L, Y1, None)
    w = pb.weights
    Xsum = X.sum(axis=-1) if w is None else X @ w
    grad = _assemble(pb, theta, reml, pwrss, Xsum, _level_sums(pb, Y1, bvec, RXi), None, None, None, lam)
    return dev, grad


def _dense(pb, theta: np.ndarray, reml: bool, keep: str | None = None,
           value_only: bool = False) -> tuple[float, np.ndarray | None]:
    """Crossed/nested factors on the dense Schur path with scalar later blocks."""
    rest = pb.rest
    lambdas = pb.theta_map.lambdas(theta)
    lam1 = lambdas[0]
    q1, l1, mz, p, m, nb = pb.q[0], pb.nlevels[0], pb.mz, pb.p, pb.m, rest.nb
    # the first block's pieces and H depend on lambda_1 only: difference points along a later factor's theta
    # (start and check stencils) reuse those of the point they step from (~5 ms of a ~20 ms value)
    key = lam1.tobytes()
    hit = _first_cached(pb, key)
    if hit is None:
        logdet_Z, CtC, (L, C, ld_level) = pb._first_block(lam1, True)
        W, TtC = pb._schur_inputs(lam1, L, C)
        H0 = None
    else:
        logdet_Z, CtC, L, C, ld_level, W, TtC, H0 = hit
    logdet_Z0 = logdet_Z
    # the problem's buffer is the main thread's; a worker of a thread-pooled stencil
    # (memoe.core.optim.checks.gradient_difference_hessian) fills a buffer of its own
    main = threading.current_thread() is threading.main_thread()
    if main:
        if pb._buffer is None:
            pb._buffer = np.zeros((nb, nb))
        buffer = pb._buffer
    else:
        buffer = _thread_buffer(nb)
    # whether a second core is idle, sampled once: the map products and both LAPACK calls then split
    # over two threads
    workers = split_workers()
    pool = helper_pool() if workers > 1 else None
    M, H = rest.bordered_unscaled(lambdas[1:], W, TtC, pb._wXYtXY - CtC, out=buffer, keep=True, pool=pool,
                                  unscaled=H0)
    if hit is None:
        _first_store(pb, key, (logdet_Z0, CtC, L, C, ld_level, W, TtC, H))
    c, info = potrf_lower(M.T, workers=workers)
    ok, logdet_Z, logdet_X, pwrss = pb._finish(logdet_Z, c, info)
    dev = pb._criterion(ok, logdet_Z, logdet_X, pwrss, reml)
    if value_only:
        return dev, None
    if not math.isfinite(dev):
        return _failed(theta)
    offered = None
    if keep is not None and main and not pooled_active():
        # before potri overwrites the factor: a copy for the result at this theta (PLSProblem._factorize),
        # on the helper thread while this one solves for Y when a core is idle (a ~10 MB memcpy)
        args = (theta, dev, keep == "always", (lambdas, L, C, ld_level, logdet_Z0, c, info))
        if pool is not None:
            offered = pool.submit(pb.offer_factor, *args)
        else:
            pb.offer_factor(*args)
    beta, RXi = _beta_rx(c, mz, p)
    bvec = np.append(-beta, 1.0)
    dvec = np.array([lam[0, 0] for lam in lambdas[1:]])
    dcol = dvec[rest.col_block]
    # x = M^-1 Lambda'Z'[X y] = L_Z^-T [C; L32']: the later part by one triangular solve with the whole
    # bordered factor (its last m rows solve to zero), then the first part level by level
    B = np.zeros((nb, m), order="F")
    B[:mz] = c[mz:, :mz].T
    x2 = sla.solve_triangular(c, B, lower=True, trans="T", check_finite=False, overwrite_b=True)[:mz]
    w2 = x2 * dcol[:, None]
    Z1tZr = rest.Z1tZr
    v = np.ascontiguousarray((Z1tZr @ w2).reshape(l1, q1, m).transpose(1, 2, 0))
    Gx2 = soa_forward_solve(L, soa_lincomb(lam1.T, v))
    w1 = soa_lincomb(lam1, soa_backward_solve_t(L, C - Gx2))
    # Y = Z'[X y] - Z'Z Lambda x
    Y1 = pb._zxy - np.einsum("abl,bml->aml", pb._zz, w1, optimize=True) - v
    Y2 = rest.ZrtXY - Z1tZr.T @ w1.transpose(2, 0, 1).reshape(l1 * q1, m) - rest.ZrtZr @ w2
    # S^-1 from the leading block of the bordered factor (the factor of S itself): no border correction
    if offered is not None:
        offered.result()
    inv, info = potri_lower(c, workers=workers, order=mz)
    if info != 0:
        return _failed(theta)
    s = inv.ravel(order="F")[rest.pos]
    # each off-diagonal position stands for (r, c) and (c, r): halve the diagonal instead of doubling the rest
    s[rest.pos_diagonal()] *= 0.5
    nblk = len(dvec)
    # sums of s * H per block pair (one pass): contrib_k = sum_{cb = k} y d_rb + sum_{rb = k} y d_cb
    pair = rest.pos_pair()
    Bsum = np.bincount(pair, s * H, nblk * nblk).reshape(nblk, nblk)
    dlogM_rest = 2.0 * (Bsum.T @ dvec + Bsum @ dvec)
    # G_j (first-factor diagonal blocks of Z_1'Z_r Lambda_r S^-1 Lambda_r' Z_r'Z_1) through the map's transpose
    nw = l1 * q1 * q1
    g = rest.map_transpose_product(s * np.outer(dvec, dvec).ravel()[pair], pool)[:nw].reshape(l1, q1, q1)
    G = -(g + g.transpose(0, 2, 1)).transpose(1, 2, 0)
    Xsum = _first_terms(pb, lam1, L, Y1, np.ascontiguousarray(G)).sum(axis=-1)
    zr2 = Y2 @ bvec
    U2 = Y2[:, :p] @ RXi
    Sr_rest = np.bincount(rest.col_block, zr2 * zr2, nblk)
    SU_rest = np.bincount(rest.col_block, np.einsum("ij,ij->i", U2, U2), nblk)
    grad = _assemble(pb, theta, reml, pwrss, Xsum, _level_sums(pb, Y1, bvec, RXi), dlogM_rest, Sr_rest, SU_rest,
                     lam1)
    return dev, grad
