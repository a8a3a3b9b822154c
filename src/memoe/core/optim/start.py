"""Starting values for theta from moment estimates of variance components (MIVQUE0).

lme4 starts every fit at identity relative factors. For models whose random effects are all scalar
(random intercepts, crossed or nested: ``(1 | s) + (1 | d)``) each evaluation of the objective costs a
dense Cholesky factorisation of the later factors' block, and a start near the optimum saves
15-30% of BOBYQA's evaluations (48 -> 41 on the InstEval-sized benchmark, 67 -> 46 on Penicillin).
MIVQUE0 (Rao's MINQUE with the identity as prior covariance) gives unbiased estimates of the
variance components from sums over the rows and the sparse cross-products of the factors, at the
cost of about one evaluation; on balanced designs it equals the ANOVA estimates and hence the REML
optimum when that is interior.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp

from memoe.errors import DataError

__all__ = ["best_start", "block_cross_products", "minque_blocks", "mivque0", "variance_component_start"]

# Level pairs of two factors up to which their cross-tabulation is built dense (8 MB at the limit)
DENSE_CROSS_MAX = 1_000_000
# Blocks with several columns: the moment start works with the dense cross-products of F = [Z X] (m columns,
# O(m^3): 0.3 ms at m = 43 (Pixel), 1.3 ms at m = 162 (60 x 40 crossed with a slope)); above this many columns
# it is skipped (identity start)
BLOCKS_MAX_COLUMNS = 600
# the vector-block start keeps room to move towards a singular fit: each relative standard deviation at least
# MIN_SD, the eigenvalues of each block's correlation matrix at least MIN_EIG
MIN_SD = 1e-2
MIN_EIG = 1e-2
# up to this many columns of [Z X] the MIVQUE0 start is refined by REFINE_STEPS steps of iterated MINQUE (REML
# Fisher scoring, O(m^3) each), stopping once theta moves by less than REFINE_TOL relative. Pixel (m = 43): 0.35
# ms a step, 57 -> 13 / 8 / 6 evaluations after 1 / 2 / 3 steps (fit 16 -> 4.4 ms); 60 x 40 crossed with a
# slope (m = 162): 2.4 ms a step for 8 -> 6 evaluations of ~1 ms (not worth it)
REFINE_MAX_COLUMNS = 100
REFINE_STEPS = 3
REFINE_TOL = 1e-3


def best_start(candidates: Iterable[np.ndarray], objective: Callable[[np.ndarray], float], what: str) -> np.ndarray:
    """The candidate with the lowest finite objective (nlme's way of starting a correlation structure).

    Parameters
    ----------
    candidates : iterable of numpy.ndarray
        Full parameter vectors.
    objective : callable
        Deviance of a parameter vector (inf where the covariance is not positive definite).
    what : str
        Names the covariance in the error.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    DataError
        No candidate gives a finite objective.

    Examples
    --------
    >>> best_start([np.array([0.0]), np.array([1.0])], lambda x: float((x[0] - 1) ** 2), "a test")
    array([1.])
    """
    best, best_f = None, np.inf
    for x in candidates:
        f = objective(x)
        if f < best_f:
            best, best_f = x, f
    if best is None:
        raise DataError(f"no starting value gives {what}")
    return best


def mivque0(
    y: np.ndarray, X: np.ndarray, codes: list[np.ndarray], nlevels: list[int], z: list[np.ndarray]
) -> np.ndarray | None:
    """MIVQUE0 estimates ``(sigma_e^2, sigma_1^2, ..., sigma_K^2)`` of ``V = sigma_e^2 I + sum_k sigma_k^2 Z_k Z_k'``.

    Parameters
    ----------
    y : numpy.ndarray, shape (n,)
    X : numpy.ndarray, shape (n, p)
    codes : list of numpy.ndarray of int, each shape (n,)
        Level of each row for each factor k.
    nlevels : list of int
    z : list of numpy.ndarray, each shape (n,)
        The single random-effects column of each factor (``Z_k`` has ``z_k[i]`` at (i, codes_k[i])).

    Returns
    -------
    numpy.ndarray, shape (K + 1,), or None when the equations are singular or not finite.

    Notes
    -----
    With ``V_0 = I``, ``V_k = Z_k Z_k'``, ``H = X G^-1 X'``, ``G = X'X``, ``M = I - H`` and the OLS
    residuals ``r = M y``, the estimates solve ``sum_l tr(M V_k M V_l) sigma_l^2 = r' V_k r`` for
    k = 0..K. With ``A_k = Z_k'X`` and ``C_kl = Z_k'Z_l``:
    ``tr(M V_k M V_l) = ||C_kl||_F^2 - 2 tr(G^-1 A_k' C_kl A_l) + tr(G^-1 A_k'A_k G^-1 A_l'A_l)``,
    ``tr(M V_k) = ||z_k||^2 - tr(G^-1 A_k'A_k)``, ``tr(M) = n - p`` and ``r'V_k r = ||Z_k' r||^2``.
    """
    n, p = X.shape
    K = len(codes)
    # G^-1 once (p is small): every ginv is then one product instead of two LAPACK solves (~10 us each)
    try:
        Gi = np.linalg.inv(np.linalg.cholesky(X.T @ X)) if p else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        return None
    Gi = Gi.T @ Gi

    def ginv(B: np.ndarray) -> np.ndarray:
        return Gi @ B if p else B[:0]

    r = y - X @ ginv(X.T @ y) if p else y.copy()
    A, d, rhs = [], [], [float(r @ r)]
    for c, lk, zk in zip(codes, nlevels, z, strict=True):
        A.append(np.column_stack([np.bincount(c, zk * X[:, j], lk) for j in range(p)]) if p else np.zeros((lk, 0)))
        d.append(np.bincount(c, zk * zk, lk))
        s = np.bincount(c, zk * r, lk)
        rhs.append(float(s @ s))
    GF = [ginv(a.T @ a) for a in A]  # G^-1 A_k'A_k
    T = np.zeros((K + 1, K + 1))
    T[0, 0] = n - p
    for k in range(K):
        T[0, k + 1] = T[k + 1, 0] = d[k].sum() - np.trace(GF[k])
        for m in range(k, K):
            if m == k:
                tvv = float(d[k] @ d[k])
                CA = d[k][:, None] * A[k]
            elif nlevels[k] * nlevels[m] <= DENSE_CROSS_MAX:
                # few level pairs: the cross-tabulation dense by one bincount (a sparse build costs ~100 us)
                C = np.bincount(codes[k] * nlevels[m] + codes[m], z[k] * z[m], nlevels[k] * nlevels[m])
                tvv = float(C @ C)
                CA = C.reshape(nlevels[k], nlevels[m]) @ A[m]
            else:
                C = sp.csr_matrix((z[k] * z[m], (codes[k], codes[m])), shape=(nlevels[k], nlevels[m]))
                C.sum_duplicates()
                tvv = float(C.data @ C.data)
                CA = C @ A[m]
            thvv = np.trace(ginv(A[k].T @ CA)) if p else 0.0
            T[k + 1, m + 1] = T[m + 1, k + 1] = tvv - 2.0 * thvv + np.trace(GF[k] @ GF[m])
    try:
        sig = np.linalg.solve(T, np.array(rhs))
    except np.linalg.LinAlgError:
        return None
    return sig if np.all(np.isfinite(sig)) else None


def block_cross_products(
    y: np.ndarray, X: np.ndarray, codes: list[np.ndarray], nlevels: list[int], Z: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``F'F``, ``F'y`` and ``y'y`` for ``F = [E_1 ... E_J X]``, ``E_j`` the indicator columns of one random effect.

    Parameters
    ----------
    y, X : numpy.ndarray, shapes (n,) and (n, p)
    codes, nlevels : per factor block, the level of each row and the number of levels
    Z : list of numpy.ndarray, each shape (n, q_k)
        The random-effects columns of each block; ``E_j`` for ``j = (k, a)`` has ``Z[k][i, a]`` at
        ``(i, codes_k[i])``; the ``E_j`` are ordered by block, then column.

    Returns
    -------
    (FtF, Fty, yty) or None
        None when ``F`` has more than ``BLOCKS_MAX_COLUMNS`` columns (the dense products would not pay).
    """
    p = X.shape[1]
    elem = [(k, a) for k, zk in enumerate(Z) for a in range(zk.shape[1])]
    lev = [nlevels[k] for k, _ in elem]
    Q = sum(lev)
    if Q + p > BLOCKS_MAX_COLUMNS:
        return None
    off = np.concatenate([[0], np.cumsum(lev)])
    W = np.zeros((Q + p, Q + p))
    Fy = np.zeros(Q + p)
    zc = [Z[k][:, a] for k, a in elem]
    cod = [codes[k] for k, _ in elem]
    for b in range(len(elem)):
        sb = slice(off[b], off[b + 1])
        for e in range(b, len(elem)):
            se = slice(off[e], off[e + 1])
            if elem[b][0] == elem[e][0]:
                # same factor: E_b'E_e is diagonal
                W[sb, se][np.diag_indices(lev[b])] = np.bincount(cod[b], zc[b] * zc[e], lev[b])
            else:
                cell = np.bincount(cod[b] * lev[e] + cod[e], zc[b] * zc[e], lev[b] * lev[e])
                W[sb, se] = cell.reshape(lev[b], lev[e])
            W[se, sb] = W[sb, se].T
        for i in range(p):
            W[sb, Q + i] = W[Q + i, sb] = np.bincount(cod[b], zc[b] * X[:, i], lev[b])
        Fy[sb] = np.bincount(cod[b], zc[b] * y, lev[b])
    W[Q:, Q:] = X.T @ X
    Fy[Q:] = X.T @ y
    return W, Fy, float(y @ y)


def minque_blocks(
    cross: tuple[np.ndarray, np.ndarray, float],
    n: int,
    p: int,
    sizes: list[tuple[int, int]],
    pairs: list[list[tuple[int, int]]],
    prior: list[np.ndarray] | None = None,
) -> tuple[float, list[np.ndarray]] | None:
    """MINQUE estimates of the residual variance and each random-effects block's covariance.

    Parameters
    ----------
    cross : (FtF, Fty, yty)
        From :func:`block_cross_products`.
    n, p : int
        Rows and fixed-effects columns.
    sizes : list of (q_k, l_k)
        Columns and levels of each factor block.
    pairs : list of list of (int, int)
        The covariance entries ``(a, b)``, ``a >= b``, each block has (the others are 0: separate terms).
    prior : list of numpy.ndarray, optional
        Each block's prior covariance relative to the residual variance; None (default) for MIVQUE0 (the
        identity prior, ``V_0 = I``). With the previous estimate as prior this is one REML Fisher scoring
        step (iterated MINQUE converges to the REML estimate when that is interior).

    Returns
    -------
    (sigma_e^2, [G_k]) or None
        Symmetric, not necessarily positive definite estimates; None when the equations are singular or the
        estimates are not finite.

    Notes
    -----
    ``V = sigma_e^2 I + sum_c s_c V_c``, ``V_c = E_a E_b' + E_b E_a'`` (``E_a E_a'`` on the diagonal) for the
    entry ``c = (a, b)`` of block k. The estimates solve ``sum_d tr(P V_c P V_d) s_d = y'P V_c P y`` with
    ``P = V_0^-1 - V_0^-1 X (X'V_0^-1 X)^-1 X'V_0^-1`` at the prior ``V_0 = I + F_Z D F_Z'``. Everything is
    computed in the space of ``F = [F_Z X]`` (``m = Q + p`` columns, never ``n``): with ``H = (I + D W_Z)^-1 D``
    (Woodbury, ``W_Z = F_Z'F_Z``), ``V_0^-1 = I - F_Z H F_Z'`` and ``P = I - F K F'`` for the (m, m)
    ``K = [[H, 0], [0, 0]] + Gam R^-1 Gam'``, ``Gam = [-H U; I]``, ``U = F_Z'X``, ``R = X'V_0^-1 X = X'F Gam``. Then
    ``F'PF = W - W K W``, ``F'P^2F = (I - W K) W (I - K W)``, ``tr P = n - tr(K W)``,
    ``tr P^2 = n - 2 tr(K W) + tr(K W K W)``, and ``tr(P E_a E_b' P E_e E_f') = <(F'PF)_be, (F'PF)_af>_F``.
    """
    W, Fy, yy = cross
    m = W.shape[0]
    Q = m - p
    lev = [lk for qk, lk in sizes for _ in range(qk)]
    off = np.concatenate([[0], np.cumsum(lev)]).astype(int)
    K = np.zeros((m, m))
    if prior is None:
        H = None
        Gam = np.zeros((m, p))
    else:
        D = np.zeros((Q, Q))
        j = 0
        for (qk, lk), g in zip(sizes, prior, strict=True):
            # elementary columns (k, a) by column a, then level: D = G_k kron I_l within the block
            for a in range(qk):
                for b in range(qk):
                    if g[a, b] != 0.0:
                        ia, ib = off[j + a], off[j + b]
                        D[ia : ia + lk, ib : ib + lk][np.diag_indices(lk)] = g[a, b]
            j += qk
        H = np.linalg.solve(np.eye(Q) + D @ W[:Q, :Q], D)
        H = 0.5 * (H + H.T)
        K[:Q, :Q] = H
        Gam = np.zeros((m, p))
        Gam[:Q] = -H @ W[:Q, Q:]
    Gam[Q:] = np.eye(p)
    if p:
        R = W[Q:] @ Gam  # X'V_0^-1 X = X'F Gam
        R = 0.5 * (R + R.T)
        K += Gam @ np.linalg.solve(R, Gam.T)
    KW = K @ W
    IKW = np.eye(m) - KW
    FPF = W @ IKW
    FP2F = IKW.T @ W @ IKW
    FPy = Fy - W @ (K @ Fy)
    trKW = float(np.trace(KW))
    trP = n - trKW
    trP2 = n - 2.0 * trKW + float(np.vdot(KW, KW.T))
    Ky = K @ Fy
    yP2y = yy - 2.0 * float(Fy @ Ky) + float(Ky @ W @ Ky)
    elem = [(k, a) for k, (qk, _) in enumerate(sizes) for a in range(qk)]
    index = {ka: j for j, ka in enumerate(elem)}

    def blk(A: np.ndarray, b: int, e: int) -> np.ndarray:
        return A[off[b] : off[b + 1], off[e] : off[e + 1]]

    comps = [[(index[k, a], index[k, b])] + ([(index[k, b], index[k, a])] if a != b else [])
             for k, pk in enumerate(pairs) for a, b in pk]
    C1 = len(comps) + 1
    T = np.zeros((C1, C1))
    rhs = np.zeros(C1)
    T[0, 0] = trP2 if prior is not None else trP  # P^2 = P when V_0 = I
    rhs[0] = yP2y
    for c, tc in enumerate(comps, start=1):
        T[0, c] = T[c, 0] = sum(float(np.trace(blk(FP2F, a, b))) for a, b in tc)
        rhs[c] = sum(float(FPy[off[a] : off[a + 1]] @ FPy[off[b] : off[b + 1]]) for a, b in tc)
        for d in range(c, C1):
            T[c, d] = T[d, c] = sum(float(np.vdot(blk(FPF, b, e), blk(FPF, a, f)))
                                    for a, b in tc for e, f in comps[d - 1])
    try:
        sig = np.linalg.solve(T, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(sig)):
        return None
    G, c = [], 1
    for (qk, _), pk in zip(sizes, pairs, strict=True):
        g = np.zeros((qk, qk))
        for a, b in pk:
            g[a, b] = g[b, a] = sig[c]
            c += 1
        G.append(g)
    return float(sig[0]), G


def _relative_factors(s2: float, G: list[np.ndarray], pairs) -> list[np.ndarray] | None:
    """Cholesky factors of ``G_k / s2`` made positive definite with room to move.

    Scale-free (a slope's variance is often 1e-3 of the intercept's): each variance at least ``MIN_SD^2``,
    and the eigenvalues of the correlation matrix at least ``MIN_EIG``.
    """
    lambdas = []
    for g, pk in zip(G, pairs, strict=True):
        g = g / s2
        pattern = np.zeros(g.shape, dtype=bool)
        for a, b in pk:
            pattern[a, b] = pattern[b, a] = True
        sd = np.sqrt(np.maximum(np.diag(g), MIN_SD**2))
        w, V = np.linalg.eigh(g / np.outer(sd, sd))
        # the entries the model does not have (separate terms in one block) stay 0
        g = np.where(pattern, np.outer(sd, sd) * ((V * np.maximum(w, MIN_EIG)) @ V.T), 0.0)
        try:
            lambdas.append(np.linalg.cholesky(g))
        except np.linalg.LinAlgError:
            return None
    return lambdas


def _block_start(design) -> tuple[np.ndarray, np.ndarray] | None:
    """The moment start of :func:`variance_component_start` for blocks with several columns."""
    blocks = design.blocks
    tmap = design.theta_map
    pairs = []
    for k in range(len(blocks)):
        sel = tmap.block == k
        pairs.append([(int(a), int(b)) for a, b in zip(tmap.row[sel], tmap.col[sel], strict=True)])
    sizes = [(b.q, b.nlevels) for b in blocks]
    n, p = design.X.shape
    with np.errstate(all="ignore"):
        cross = block_cross_products(design.y, design.X, [b.factor.codes for b in blocks],
                                     [b.nlevels for b in blocks], [b.Z for b in blocks])
        if cross is None:
            return None
        out = minque_blocks(cross, n, p, sizes, pairs)
        if out is None or not out[0] > 0:
            return None
        lambdas = _relative_factors(*out, pairs)
        if lambdas is None:
            return None
        theta0 = tmap.theta_of(lambdas)
        if cross[0].shape[0] <= REFINE_MAX_COLUMNS:
            for _ in range(REFINE_STEPS):
                out = minque_blocks(cross, n, p, sizes, pairs, [lam @ lam.T for lam in lambdas])
                if out is None or not out[0] > 0:
                    break
                new = _relative_factors(*out, pairs)
                if new is None:
                    break
                lambdas = new
                prev, theta0 = theta0, tmap.theta_of(lambdas)
                if np.max(np.abs(theta0 - prev)) <= REFINE_TOL * max(1.0, float(np.max(np.abs(theta0)))):
                    break
    if not np.all(np.isfinite(theta0)):
        return None
    scale = np.maximum(np.abs(theta0), 0.2)
    return theta0, 0.25 * scale


def variance_component_start(design) -> tuple[np.ndarray, np.ndarray] | None:
    """Start and initial step for the optimiser of a model with several random-effects blocks.

    Parameters
    ----------
    design : memoe.core.design.Design

    Returns
    -------
    (theta0, step) or None
        Every block a single column: ``theta0[k] = sqrt(max(sigma_k^2, 0) / sigma_e^2)`` in the theta
        order, and per-parameter initial steps ``max(0.25 theta0, 0.05)`` (measured fewest evaluations on
        the reference and benchmark cases). A block with several columns (``(day | Dog) + (1 | Side:Dog)``):
        each block's MIVQUE0 covariance (:func:`mivque0_blocks`) relative to the residual variance, its
        eigenvalues floored at ``MIN_EIG`` of the largest, mapped to its Cholesky factor; steps ``0.25
        max(|theta0|, 0.2)``. None if the estimates are unusable.

    Examples
    --------
    >>> import memoe
    >>> from memoe.core.optim.start import variance_component_start
    >>> m = memoe.lmm("pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)", memoe.datasets.load("Pixel"))
    >>> theta0, step = variance_component_start(m.design)
    >>> len(theta0)
    4

    R equivalent
    ------------
    None in lme4 (its start is the identity); MIVQUE0 is Rao's (1971) MINQUE with the identity prior,
    the start of SAS PROC MIXED.
    """
    blocks = design.blocks
    tmap = design.theta_map
    if any(b.q != 1 for b in blocks):
        return _block_start(design)
    if tmap.size != len(blocks):
        return None
    sig = mivque0(
        design.y, design.X, [b.factor.codes for b in blocks], [b.nlevels for b in blocks], [b.Z[:, 0] for b in blocks]
    )
    if sig is None or not sig[0] > 0:
        return None
    by_block = np.sqrt(np.maximum(sig[1:], 0.0) / sig[0])
    theta0 = by_block[tmap.block]
    return theta0, np.maximum(0.25 * theta0, 0.05)
