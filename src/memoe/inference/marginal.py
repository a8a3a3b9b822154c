"""Moments of the marginal covariance of a fitted LMM, for Satterthwaite and Kenward-Roger.

The marginal covariance is written as pbkrtest writes it, linear in the natural variance parameters::

    V = sum_r phi_r G_r + phi_res I,      G_r = Z (I_l kron E_r) Z'

with ``phi_r`` the entries (lower triangle, column by column, lme4's term order) of each term's
covariance matrix ``sigma^2 lambda lambda'`` and ``E_r`` the symmetric unit matrix of that entry
(``e_a e_b' + e_b e_a'`` off the diagonal). Kenward-Roger needs traces and quadratic forms such as
``tr(V^-1 G_r V^-1 G_s)`` and ``X' V^-1 G_r V^-1 G_s V^-1 X``; Satterthwaite needs the same pieces for
the derivatives of the (RE)ML deviance.

No n x n matrix is ever formed. With ``V = sigma^2 (I + Z Lambda Lambda' Z')`` Woodbury gives

    V^-k = sigma^(-2k) (I - Z R_k Z'),  R_1 = K = Lambda (I + Lambda' Z'Z Lambda)^-1 Lambda',
                                        R_(k+1) = R_k + K - K (Z'Z) R_k,

so every product ``B' V^-k B`` with ``B = [Z X e]`` (``e = y - X beta``) follows from the
cross-products ``B'B`` and the q x q matrices ``R_k``. Two layouts use the same formulas:

* **blocked** (one grouping factor): V is block diagonal over the levels; the per-level
  cross-products are computed once (``np.bincount`` per pair of columns) and every per-level
  quantity is a batched (levels, q, q) array, so 1,000 subjects cost a few vectorised operations.
* **dense** (several grouping factors, crossed or nested): one "group" holding all rows, with the
  full random-effects dimension ``Q`` (sum of levels x columns); costs ``O(Q^3)`` time and
  ``O(R Q^2)`` memory, fine for moderate ``Q`` (Penicillin: 30, Pastes: 40) and refused above
  :data:`MAX_DENSE_Q`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from memoe.errors import MemoeError

__all__ = ["MAX_DENSE_Q", "MarginalMoments", "marginal_moments", "natural_parameters"]

# Above this many random effects in all, the dense (several grouping factors) layout is refused.
MAX_DENSE_Q = 4000


@dataclass(frozen=True)
class NaturalParameters:
    """The natural-scale variance parameters of pbkrtest, in lme4's theta order plus the residual.

    Attributes
    ----------
    names : list of str
        ``"<term>: var(<col>)"``, ``"<term>: cov(<row col>, <col>)"``, then ``"residual"``.
    values : numpy.ndarray, shape (R,)
        ``sigma^2 (lambda lambda')[row, col]`` per theta entry, then ``sigma^2``.
    block, row, col : numpy.ndarray of int, shape (R - 1,)
        Factor block and position (row >= col, block coordinates) of each random-effects entry.
    """

    names: list[str]
    values: np.ndarray
    block: np.ndarray
    row: np.ndarray
    col: np.ndarray


def natural_parameters(fit) -> NaturalParameters:
    """Variance/covariance components on the natural scale (pbkrtest's ``ggamma``)."""
    d = fit.design
    tmap = d.theta_map
    lambdas = fit.relative_factors()
    s2 = fit.sigma**2
    names: list[str] = []
    for t in d.terms:
        q = t.q
        for c in range(q):
            for r in range(c, q):
                if r == c:
                    names.append(f"{t.name}: var({t.columns[r]})")
                else:
                    names.append(f"{t.name}: cov({t.columns[r]}, {t.columns[c]})")
    vals = [s2 * (lambdas[b] @ lambdas[b].T)[i, j] for b, i, j in zip(tmap.block, tmap.row, tmap.col, strict=True)]
    # theta entries are stored term by term in lme4's order, as are the names above
    return NaturalParameters(
        names=[*names, "residual"],
        values=np.array([*vals, s2]),
        block=np.asarray(tmap.block),
        row=np.asarray(tmap.row),
        col=np.asarray(tmap.col),
    )


@dataclass(frozen=True)
class MarginalMoments:
    """Traces and quadratic forms of the marginal covariance at the fitted parameters.

    ``R`` natural parameters (random-effects entries then the residual variance), ``p`` fixed
    effects. ``r = V^-1 (y - X beta)``. Signs follow pbkrtest (``P_r`` is negative semi-definite).

    Attributes
    ----------
    params : NaturalParameters
    layout : str
        ``"blocked"`` (one grouping factor, batched over its levels) or ``"dense"``.
    Phi : numpy.ndarray, shape (p, p)
        ``(X' V^-1 X)^-1``, the model-based covariance of beta.
    Ktrace : numpy.ndarray, shape (R, R)
        ``tr(V^-1 G_r V^-1 G_s)``.
    P : numpy.ndarray, shape (R, p, p)
        ``-X' V^-1 G_r V^-1 X``.
    Q : numpy.ndarray, shape (R, R, p, p)
        ``X' V^-1 G_r V^-1 G_s V^-1 X``.
    trVG : numpy.ndarray, shape (R,)
        ``tr(V^-1 G_r)``.
    rGr : numpy.ndarray, shape (R,)
        ``r' G_r r``.
    rGVGr : numpy.ndarray, shape (R, R)
        ``r' G_r V^-1 G_s r``.
    XVGr : numpy.ndarray, shape (R, p)
        ``X' V^-1 G_r r``.
    XVe : numpy.ndarray, shape (p,)
        ``X' V^-1 (y - X beta)``; zero at the GLS estimate (a check of the inputs).
    """

    params: NaturalParameters
    layout: str
    Phi: np.ndarray
    Ktrace: np.ndarray
    P: np.ndarray
    Q: np.ndarray
    trVG: np.ndarray
    rGr: np.ndarray
    rGVGr: np.ndarray
    XVGr: np.ndarray
    XVe: np.ndarray

    def reml_information(self) -> np.ndarray:
        """``tr(P G_r P G_s)`` with ``P = V^-1 - V^-1 X Phi X' V^-1`` (pbkrtest's ``IE2``), shape (R, R)."""
        PhiP = np.einsum("ab,rbc->rac", self.Phi, self.P)
        t2 = np.einsum("rab,sba->rs", PhiP, PhiP)
        tQ = np.einsum("ab,rsba->rs", self.Phi, self.Q)
        return self.Ktrace - 2.0 * tQ + t2


# ---------------------------------------------------------------------------------------------
# per-group sufficient statistics


def _pair_sums(codes: np.ndarray, G: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``out[g, a, b] = sum over rows of group g of left[:, a] * right[:, b]``; shape (G, a, b).

    One ``np.bincount`` per pair keeps the temporary memory at one n-vector.
    """
    out = np.empty((G, left.shape[1], right.shape[1]))
    for a in range(left.shape[1]):
        for b in range(right.shape[1]):
            out[:, a, b] = np.bincount(codes, weights=left[:, a] * right[:, b], minlength=G)
    return out


@dataclass(frozen=True)
class _Layout:
    """Cross-products of ``[Z X e]`` grouped so that V is block diagonal over the groups.

    ``SZ[g] = Z_g' [Z_g X_g e_g]`` (G, q, m); ``S_xe = [X e]'[X e]`` summed (p+1, p+1);
    ``n_g`` rows per group; ``lam`` the relative factor in the group's Z coordinates; ``E`` applies
    the symmetric unit matrices of the random-effects parameters.
    """

    SZ: np.ndarray
    S_xe: np.ndarray
    n_g: np.ndarray
    lam: np.ndarray
    E_dense: np.ndarray | None
    E_sparse: list[sp.csr_matrix] | None

    def apply_E(self, M: np.ndarray) -> np.ndarray:
        """``E_r M[g]`` for every parameter r: (G, q, c) -> (G, R_re, q, c)."""
        if self.E_dense is not None:
            return np.einsum("rab,gbc->grac", self.E_dense, M, optimize=True)
        assert self.E_sparse is not None
        return np.stack([np.asarray(E @ M[0]) for E in self.E_sparse])[None]


def _unit_sym(q: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Stack of symmetric unit matrices, shape (len(rows), q, q)."""
    E = np.zeros((len(rows), q, q))
    k = np.arange(len(rows))
    E[k, rows, cols] = 1.0
    E[k, cols, rows] = 1.0
    return E


def _blocked_layout(fit, e: np.ndarray) -> _Layout:
    d = fit.design
    blk = d.blocks[0]
    codes = blk.factor.codes
    G = blk.nlevels
    Z = blk.Z
    B = np.column_stack([Z, d.X, e])
    SZ = _pair_sums(codes, G, Z, B)
    XE = np.column_stack([d.X, e])
    n_g = np.bincount(codes, minlength=G).astype(float)
    lam = fit.relative_factors()[0]
    tmap = d.theta_map
    return _Layout(
        SZ=SZ,
        S_xe=XE.T @ XE,
        n_g=n_g,
        lam=lam,
        E_dense=_unit_sym(blk.q, np.asarray(tmap.row), np.asarray(tmap.col)),
        E_sparse=None,
    )


def _dense_layout(fit, e: np.ndarray) -> _Layout:
    d = fit.design
    n = d.n
    sizes = [b.nlevels * b.q for b in d.blocks]
    Qtot = int(sum(sizes))
    if Qtot > MAX_DENSE_Q:
        raise MemoeError(
            f"Satterthwaite / Kenward-Roger with several grouping factors use a dense layout of all "
            f"{Qtot} random effects; it is limited to {MAX_DENSE_Q}"
        )
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    rows, cols, vals = [], [], []
    for k, b in enumerate(d.blocks):
        q = b.q
        rows.append(np.repeat(np.arange(n), q))
        cols.append((offsets[k] + b.factor.codes[:, None] * q + np.arange(q)[None, :]).ravel())
        vals.append(b.Z.ravel())
    Zs = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, Qtot))
    XE = np.column_stack([d.X, e])
    SZ = np.hstack([(Zs.T @ Zs).toarray(), np.asarray(Zs.T @ XE)])[None]
    lambdas = fit.relative_factors()
    lam = sp.block_diag(
        [sp.kron(sp.identity(b.nlevels), sp.csr_matrix(lambdas[k])) for k, b in enumerate(d.blocks)], format="csr"
    ).toarray()
    tmap = d.theta_map
    E_sparse = []
    for b_idx, i, j in zip(tmap.block, tmap.row, tmap.col, strict=True):
        b = d.blocks[b_idx]
        unit = _unit_sym(b.q, np.array([i]), np.array([j]))[0]
        E_k = sp.kron(sp.identity(b.nlevels), sp.csr_matrix(unit), format="csr")
        blocks = [E_k if k == b_idx else sp.csr_matrix((sizes[k], sizes[k])) for k in range(len(d.blocks))]
        E_sparse.append(sp.block_diag(blocks, format="csr"))
    return _Layout(SZ=SZ, S_xe=XE.T @ XE, n_g=np.array([float(n)]), lam=lam, E_dense=None, E_sparse=E_sparse)


def marginal_moments(fit, beta: np.ndarray | None = None) -> MarginalMoments:
    """Compute :class:`MarginalMoments` at the fit's theta, sigma and beta.

    Parameters
    ----------
    fit : LmmResult
    beta : numpy.ndarray, shape (p,), optional
        Fixed effects defining the residuals ``e = y - X beta``; default the fit's.

    Notes
    -----
    With ``W_k = Z' V^-k Z``, ``A_k = Z' V^-k X``, ``u_k = Z' V^-k e`` per group (rows of
    ``sigma^(-2k) (I - F R_k) Z'B``, ``F = Z'Z``), and ``E_r`` the unit matrices::

        Ktrace[r, s] = sum_g tr(E_r W1 E_s W1)        P[r] = -sum_g A1' E_r A1
        Q[r, s]      = sum_g (E_r A1)' W1 (E_s A1)    trVG[r] = sum_g tr(E_r W1)
        rGr[r]       = sum_g u1' E_r u1               XVGr[r] = sum_g A1' E_r u1

    and for the residual parameter (``G = I``) the same with one more power of ``V^-1``:
    ``tr(V^-2)``, ``X'V^-2X``, ``X'V^-3X``, ``e'V^-2e``, ``e'V^-3e``.
    """
    d = fit.design
    p = d.p
    beta = fit.state.beta if beta is None else np.asarray(beta, dtype=float)
    e = d.y - (d.X @ beta if p else 0.0)
    layout_name = "blocked" if len(d.blocks) == 1 else "dense"
    L = _blocked_layout(fit, e) if layout_name == "blocked" else _dense_layout(fit, e)
    params = natural_parameters(fit)
    s2 = fit.sigma**2
    q = L.SZ.shape[1]
    SZ = L.SZ
    F = SZ[:, :, :q]
    lam = L.lam
    # K = lam (I + lam' F lam)^-1 lam' per group
    M = np.einsum("ba,gbc,cd->gad", lam, F, lam, optimize=True)
    M[:, np.arange(q), np.arange(q)] += 1.0
    K = np.einsum("ab,gbc->gac", lam, np.linalg.solve(M, np.broadcast_to(lam.T, M.shape)), optimize=True)
    KF = K @ F
    R1 = K
    R2 = 2.0 * K - KF @ K
    R3 = R2 + K - KF @ R2

    def zrows(R: np.ndarray, power: int) -> np.ndarray:
        # Z' V^-k [Z X e] = sigma^-2k (I - F R_k) Z'B, shape (G, q, m)
        return (SZ - F @ (R @ SZ)) / s2**power

    def xe_block(R: np.ndarray, power: int) -> np.ndarray:
        # [X e]' V^-k [X e] summed over groups, shape (p+1, p+1)
        S = SZ[:, :, q:]
        return (L.S_xe - np.einsum("gap,gab,gbr->pr", S, R, S, optimize=True)) / s2**power

    Z1, Z2 = zrows(R1, 1), zrows(R2, 2)
    W1, A1, u1 = Z1[:, :, :q], Z1[:, :, q : q + p], Z1[:, :, -1]
    W2, A2, u2 = Z2[:, :, :q], Z2[:, :, q : q + p], Z2[:, :, -1]
    H1, H2, H3 = xe_block(R1, 1), xe_block(R2, 2), xe_block(R3, 3)
    trV1 = float(np.sum(L.n_g - np.einsum("gab,gba->g", K, F))) / s2
    trV2 = float(np.sum(L.n_g - np.einsum("gab,gba->g", R2, F))) / s2**2

    XV1X = H1[:p, :p]
    Phi = np.linalg.inv(XV1X) if p else np.zeros((0, 0))
    EW1 = L.apply_E(W1)
    EW2 = L.apply_E(W2)
    EA1 = L.apply_E(A1)
    Eu1 = L.apply_E(u1[:, :, None])[..., 0]
    R_re = EW1.shape[1]
    R = R_re + 1

    Ktrace = np.empty((R, R))
    Ktrace[:R_re, :R_re] = np.einsum("grab,gsba->rs", EW1, EW1, optimize=True)
    Ktrace[:R_re, -1] = Ktrace[-1, :R_re] = np.einsum("graa->r", EW2)
    Ktrace[-1, -1] = trV2

    P = np.empty((R, p, p))
    P[:R_re] = -np.einsum("gap,graq->rpq", A1, EA1, optimize=True)
    P[-1] = -H2[:p, :p]

    Q = np.empty((R, R, p, p))
    Q[:R_re, :R_re] = np.einsum("grbp,gbc,gscq->rspq", EA1, W1, EA1, optimize=True)
    Qx = np.einsum("grbp,gbq->rpq", EA1, A2, optimize=True)
    Q[:R_re, -1] = Qx
    Q[-1, :R_re] = np.swapaxes(Qx, 1, 2)
    Q[-1, -1] = H3[:p, :p]

    trVG = np.append(np.einsum("graa->r", EW1), trV1)
    rGr = np.append(np.einsum("ga,gra->r", u1, Eu1), H2[-1, -1])
    rGVGr = np.empty((R, R))
    rGVGr[:R_re, :R_re] = np.einsum("gra,gab,gsb->rs", Eu1, W1, Eu1, optimize=True)
    rGVGr[:R_re, -1] = rGVGr[-1, :R_re] = np.einsum("gra,ga->r", Eu1, u2)
    rGVGr[-1, -1] = H3[-1, -1]
    XVGr = np.empty((R, p))
    XVGr[:R_re] = np.einsum("gap,gra->rp", A1, Eu1, optimize=True)
    XVGr[-1] = H2[:p, -1]
    return MarginalMoments(
        params=params,
        layout=layout_name,
        Phi=Phi,
        Ktrace=Ktrace,
        P=P,
        Q=Q,
        trVG=trVG,
        rGr=rGr,
        rGVGr=rGVGr,
        XVGr=XVGr,
        XVe=H1[:p, -1],
    )
