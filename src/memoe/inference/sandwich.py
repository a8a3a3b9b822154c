"""Cluster-robust (sandwich) covariance of the fixed effects of a linear mixed model.

The estimators are those of R's clubSandwich (``vcovCR`` for an ``lmerMod``; Pustejovsky & Tipton
2018, JBES 36(4), 672-683): the working model is the fitted marginal covariance, the weights are its
inverse, and CR2 adjusts each cluster's residuals so that the estimator is exactly unbiased when the
working model is right.

Every per-cluster quantity is computed on arrays padded to the largest cluster: cluster ``j``
occupies ``[j, :n_j]`` and the padding behaves as independent unit-variance rows with zero design
and zero residual, so it drops out of every sum and batched ``cholesky``/``eigh`` apply to all
clusters at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import MemoeError

__all__ = ["CR_TYPES", "ClusterArrays", "cluster_arrays", "sandwich_from_clusters", "vcov_cr"]

CR_TYPES = ("CR0", "CR1", "CR1S", "CR2", "CR3")
# clubSandwich's matrix_power() treats eigenvalues below 1e-12 as zero (a pseudo-inverse root)
_EIG_TOL = 1e-12


@dataclass(frozen=True)
class ClusterArrays:
    """Rows of a fit regrouped by cluster and padded to the largest cluster.

    Attributes
    ----------
    codes : numpy.ndarray of int, shape (n,)
        Cluster of each row.
    labels : pandas.Index
        Cluster labels, length J.
    pos : numpy.ndarray of int, shape (n,)
        Position of each row within its cluster.
    sizes : numpy.ndarray of int, shape (J,)
    V : numpy.ndarray, shape (J, m, m)
        Relative marginal covariance ``I + Z_j Lambda Lambda' Z_j'`` (``sigma^2`` factored out),
        identity on padded rows.
    X : numpy.ndarray, shape (J, m, p)
        Fixed-effects rows, zero on padding.
    r : numpy.ndarray, shape (J, m)
        Marginal residuals ``y - X beta``, zero on padding.
    """

    codes: np.ndarray
    labels: pd.Index
    pos: np.ndarray
    sizes: np.ndarray
    V: np.ndarray
    X: np.ndarray
    r: np.ndarray

    @property
    def J(self) -> int:
        return len(self.labels)


def _resolve_cluster(fit, cluster) -> tuple[np.ndarray, pd.Index, str]:
    """Integer cluster codes for the rows used in the fit.

    ``None`` picks the grouping factor with the fewest levels (clubSandwich's ``get_outer_group``).
    """
    d = fit.design
    if cluster is None:
        blk = min(d.blocks, key=lambda b: b.nlevels)
        return blk.factor.codes, pd.Index(blk.factor.levels), blk.factor.name
    if isinstance(cluster, str):
        names = {b.factor.name: b for b in d.blocks}
        if cluster in names:
            f = names[cluster].factor
            return f.codes, pd.Index(f.levels), cluster
        if cluster not in d.frame.data.columns:
            raise MemoeError(
                f"cluster {cluster!r} is neither a grouping factor ({', '.join(names)}) nor a column of the "
                "model frame; pass the values as an array"
            )
        values = d.frame.data[cluster].to_numpy()
        name = cluster
    else:
        values = np.asarray(cluster)
        name = "cluster"
        n_input = len(d.frame.row_mask)
        if values.shape[0] == n_input and n_input != d.n:
            values = values[d.frame.row_mask]
        if values.shape[0] != d.n:
            raise MemoeError(
                f"cluster has {values.shape[0]} values; the fit used {d.n} rows (of {n_input} in the data)"
            )
    codes, uniques = pd.factorize(values, sort=True)
    if np.any(codes < 0):
        raise MemoeError("cluster has missing values in rows used by the fit")
    return codes.astype(np.int64), pd.Index(uniques), name


def _check_nested(fit, codes: np.ndarray, name: str) -> None:
    """Every grouping factor must be nested in the clusters, or V is not block diagonal by cluster."""
    for blk in fit.design.blocks:
        f = blk.factor
        # the number of distinct clusters met by each level of the factor
        pairs = np.unique(np.stack([f.codes, codes]), axis=1)
        per_level = np.bincount(pairs[0], minlength=f.nlevels)
        if np.any(per_level > 1):
            bad = f.levels[int(np.argmax(per_level > 1))]
            raise MemoeError(
                f"grouping factor {f.name!r} is not nested within the clusters {name!r} (level {bad!r} occurs in "
                f"{int(per_level.max())} clusters); cluster-robust covariances need every random effect inside "
                "one cluster (clubSandwich refuses such models too)"
            )


def cluster_arrays(fit, cluster=None, theta: np.ndarray | None = None) -> ClusterArrays:
    """Per-cluster padded design, residuals and relative marginal covariance of a fit.

    Parameters
    ----------
    fit : LmmResult
    cluster : str, array-like or None
        Grouping factor name, model-frame column, or one value per row; default the grouping factor
        with the fewest levels.
    theta : numpy.ndarray, optional
        Evaluate at another theta (sensitivity analysis); default the fit's.

    Returns
    -------
    ClusterArrays
    """
    d = fit.design
    codes, labels, name = _resolve_cluster(fit, cluster)
    _check_nested(fit, codes, name)
    J = len(labels)
    sizes = np.bincount(codes, minlength=J)
    if np.any(sizes == 0):
        raise MemoeError(f"cluster {name!r} has levels without rows")
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.empty(d.n, dtype=np.int64)
    pos[order] = np.arange(d.n) - np.repeat(starts, sizes)
    m = int(sizes.max())

    if theta is None:
        theta = fit.state.theta
        beta = fit.state.beta
    else:
        beta = fit.model.problem.solve(np.asarray(theta, float), fit.reml).beta
    lambdas = d.theta_map.lambdas(np.asarray(theta, float))

    V = np.zeros((J, m, m))
    idx = np.arange(m)
    V[:, idx, idx] = 1.0
    for blk, lam in zip(d.blocks, lambdas, strict=True):
        ZL = np.zeros((J, m, blk.q))
        ZL[codes, pos] = blk.Z @ lam
        lev = np.full((J, m), -1, dtype=np.int64)
        lev[codes, pos] = blk.factor.codes
        same = lev[:, :, None] == lev[:, None, :]
        # padded rows have zero ZL, so their (spurious) level matches add nothing
        V += np.einsum("jak,jbk->jab", ZL, ZL) * same
    X = np.zeros((J, m, d.p))
    X[codes, pos] = d.X
    r = np.zeros((J, m))
    r[codes, pos] = d.y - d.X @ beta
    return ClusterArrays(codes=codes, labels=labels, pos=pos, sizes=sizes, V=V, X=X, r=r)


def _sym_power(G: np.ndarray, power: float) -> np.ndarray:
    """Batched symmetric matrix power; eigenvalues below the tolerance count as zero (pseudo-inverse)."""
    w, Q = np.linalg.eigh(G)
    keep = w > _EIG_TOL
    wp = np.where(keep, np.where(keep, w, 1.0) ** power, 0.0)
    return np.einsum("jab,jb,jcb->jac", Q, wp, Q)


def sandwich_from_clusters(ca: ClusterArrays, M: np.ndarray, type: str) -> np.ndarray:
    """``M (sum_j E_j r_j r_j' E_j') M`` for the requested adjustment.

    Parameters
    ----------
    ca : ClusterArrays
    M : numpy.ndarray, shape (p, p)
        ``(X' V^-1 X)^-1`` with the relative V (the unscaled model-based covariance).
    type : str

    Notes
    -----
    With ``W_j = V_j^-1`` and ``H_jj = X_j M X_j' W_j``:

    * CR0: ``E_j = X_j' W_j``; CR1 and CR1S rescale by ``J/(J-1)`` and ``J(N-1)/((J-1)(N-p))``.
    * CR2: ``E_j = X_j' W_j A_j`` with ``A_j = R_j' G_j^{-1/2} R_j``, ``R_j`` the upper Cholesky factor of
      ``V_j`` (``R_j' R_j = V_j``) and ``G_j = R_j (I - H_jj) V_j R_j' = R_j (V_j - X_j M X_j') R_j'``
      (Pustejovsky & Tipton 2018, eq. 7, with the working model equal to the weights' inverse: clubSandwich's
      ``inverse_var = TRUE``).
    * CR3: ``A_j = (I - H_jj)^-1`` (the jackknife).
    """
    W = np.linalg.inv(ca.V)
    XtW = np.einsum("jap,jab->jpb", ca.X, W)  # (J, p, m)
    if type in ("CR0", "CR1", "CR1S"):
        ar = ca.r
    elif type == "CR2":
        R = np.swapaxes(np.linalg.cholesky(ca.V), 1, 2)
        XMX = np.einsum("jap,pq,jbq->jab", ca.X, M, ca.X)
        G = np.einsum("jab,jbc,jdc->jad", R, ca.V - XMX, R)
        G = 0.5 * (G + np.swapaxes(G, 1, 2))
        A = np.einsum("jba,jbc,jcd->jad", R, _sym_power(G, -0.5), R)
        ar = np.einsum("jab,jb->ja", A, ca.r)
    elif type == "CR3":
        m = ca.V.shape[1]
        IH = np.eye(m)[None] - np.einsum("jap,pq,jqb->jab", ca.X, M, XtW)
        ar = np.linalg.solve(IH, ca.r[:, :, None])[:, :, 0]
    else:
        raise MemoeError(f"unknown cluster-robust type {type!r}; choose one of {', '.join(CR_TYPES)}")
    u = np.einsum("jpb,jb->jp", XtW, ar)  # adjusted score of each cluster, (J, p)
    v = M @ (u.T @ u) @ M
    J = ca.J
    N = int(ca.sizes.sum())
    p = M.shape[0]
    if type == "CR1":
        v *= J / (J - 1)
    elif type == "CR1S":
        v *= J * (N - 1) / ((J - 1) * (N - p))
    return 0.5 * (v + v.T)


def vcov_cr(fit, type: str = "CR2", cluster=None, theta: np.ndarray | None = None) -> pd.DataFrame:
    """Cluster-robust covariance of the fixed effects, as clubSandwich's ``vcovCR`` for an lmerMod.

    Parameters
    ----------
    fit : LmmResult
    type : {"CR0", "CR1", "CR1S", "CR2", "CR3"}, default "CR2"
        CR0 is the plain sandwich; CR1 scales it by ``J/(J-1)`` (clubSandwich's CR1), CR1S by
        ``J(N-1)/((J-1)(N-p))`` (Stata); CR2 is the bias-reduced linearisation of Bell & McCaffrey
        (2002) in the form of Pustejovsky & Tipton (2018); CR3 the jackknife-type adjustment.
    cluster : str, array-like or None
        Clusters of independent observations: a grouping factor's name, a model-frame column, or one
        value per row (rows of the input data or of the fit). Default: the grouping factor with the fewest
        levels. Every grouping factor must be nested within the clusters (crossed factors are refused).
    theta : numpy.ndarray, optional
        Evaluate at another theta (used to quantify sensitivity to the variance parameters).

    Returns
    -------
    pandas.DataFrame, shape (p, p)
        Rows and columns named by the fixed effects.

    R equivalent
    ------------
    ``clubSandwich::vcovCR(fit, type = "CR2")`` (CR0, CR1, CR1S, CR2, CR3).

    Notes
    -----
    The working covariance is the fitted one on the relative scale, ``V_j = I + Z_j Lambda Lambda' Z_j'``
    (``sigma^2`` cancels between bread and meat), the bread is ``M = (X' V^-1 X)^-1`` (lme4's unscaled
    ``vcov``) and the residuals are marginal, ``y - X beta``. The estimator is
    ``M [sum_j X_j' W_j A_j r_j r_j' A_j' W_j X_j] M``; see :func:`sandwich_from_clusters` for ``A_j``.

    Examples
    --------
    >>> fit.vcov(robust="CR2")  # doctest: +SKIP
    """
    type = str(type).upper()
    if type not in CR_TYPES:
        raise MemoeError(f"unknown cluster-robust type {type!r}; choose one of {', '.join(CR_TYPES)}")
    ca = cluster_arrays(fit, cluster, theta)
    if ca.J < 2:
        raise MemoeError("cluster-robust covariances need at least 2 clusters")
    if theta is None:
        M = fit.state.vcov_unscaled
    else:
        M = fit.model.problem.solve(np.asarray(theta, float), fit.reml).vcov_unscaled
    v = sandwich_from_clusters(ca, M, type)
    names = fit.design.fixef_names
    return pd.DataFrame(v, index=names, columns=names)
