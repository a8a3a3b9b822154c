"""Covariances of a GEE fit: geepack's sandwich (``vbeta``), naive (``vbeta.naiv``) and the joint sandwich
over (beta, phi, alpha) that gives the standard errors of the scale and the correlation (``gee_var``).

The robust covariance is ``A^-1 (sum U_i U_i') A^-1`` with ``A = sum D' V^-1 D``, ``V = phi R`` and
``U_i = D_i' V_i^-1 r_i`` (no small-sample correction, i.e. CR0); the naive one is ``A^-1``. geepack's
jackknife variances (``std.err = "jack"``, ``"j1s"``, ``"fij"``) are not implemented.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memoe.errors import ConvergenceError
from memoe.gee.families import linkinv, pearson_pieces, variance_mu

__all__ = ["gee_variance", "solve_or_raise"]


def solve_or_raise(H: np.ndarray, G: np.ndarray, what: str) -> np.ndarray:
    """``H^-1 G``, or a :class:`~memoe.errors.ConvergenceError` naming the equations when H is singular."""
    try:
        return np.linalg.solve(H, G)
    except np.linalg.LinAlgError:
        raise ConvergenceError(f"singular estimating equations for {what}") from None


def _inv(H: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.inv(H)
    except np.linalg.LinAlgError:
        raise ConvergenceError(f"singular information matrix for {what}") from None


def gee_variance(model: Any, beta: np.ndarray, phi: float, alpha: np.ndarray) -> dict[str, np.ndarray]:
    """geepack's ``gee_var``: the joint sandwich over (beta, phi, alpha), blocks as ``HiandGi``.

    ``model`` is the :class:`~memoe.gee.model.GEE` being fitted (typed ``Any``: the model module imports
    this one, so importing it back, even for the annotation, would make a cycle).

    Returns
    -------
    dict
        ``vbeta`` (sandwich), ``vbeta_naive``, ``vgamma`` (1 x 1, of phi; NaN when the scale is fixed)
        and ``valpha`` (q x q).
    """
    family, corr = model.family, model._corr
    p, q = len(beta), corr.q
    est_phi, est_alpha = not model.scale_fix, q > 0
    A = np.zeros((p, p))
    B = np.zeros((1, p))
    C = np.zeros((1, 1))
    Dm = np.zeros((q, p))
    Em = np.zeros((q, 1))
    F = np.zeros((q, q))
    U1s, U2s, U3s = [], [], []
    for b in model._batches:  # one pass per distinct cluster size, not per cluster
        _, v, D, pr = pearson_pieces(family, b.X, b.y, beta)
        v_mu = variance_mu(family, linkinv(family, b.X @ beta))
        R = corr.matrix(b, alpha)
        ViD = np.linalg.solve(R, D) / phi
        A += np.einsum("gsa,gsb->ab", D, ViD)
        U1s.append(np.einsum("gsa,gs->ga", ViD, pr))
        G = len(pr)
        if est_phi:
            C += b.s / (2.0 * phi) * G
            f = -2.0 * pr / np.sqrt(v) - pr**2 / v * v_mu
            B += np.einsum("gs,gsa->a", -1.0 / (2.0 * phi) * f, D)[None, :]
            U2s.append(np.sum(pr**2 - phi, axis=1, keepdims=True) / (2.0 * phi))
        else:
            U2s.append(np.zeros((G, 1)))
        if est_alpha and b.s > 1:
            pj, pk = b.pj, b.pk
            z = pr[:, pj] * pr[:, pk] / phi
            E = corr.E(b, alpha)
            F += np.einsum("gma,gmb->ab", E, E)
            # geepack's getZ_Beta, verbatim: -r_j D_j - r_k D_k - r_j r_k (v'_j/sqrt(v_j) D_j + ...)/2,
            # scaled by 1/phi (it uses each residual with its own row of D)
            w = v_mu / np.sqrt(v)
            foo = w[:, pj, None] * D[:, pj] + w[:, pk, None] * D[:, pk]
            bar = (
                -pr[:, pj, None] * D[:, pj]
                - pr[:, pk, None] * D[:, pk]
                - 0.5 * (pr[:, pj] * pr[:, pk])[..., None] * foo
            )
            Dm += np.einsum("gma,gmb->ab", E, -bar / phi)
            U3s.append(np.einsum("gma,gm->ga", E, z - corr.pair_rho(b, alpha)))
            if est_phi:
                # getZ_Gamma: -z/2 (1/phi + 1/phi) with the identity scale link
                Em += np.einsum("gma,gm->a", E, z / phi)[:, None]
        else:
            U3s.append(np.zeros((G, q)))
    U1 = np.concatenate(U1s)
    U2 = np.concatenate(U2s)
    U3 = np.concatenate(U3s)
    Ai = _inv(A, "the naive covariance of beta")
    vbeta = Ai @ (U1.T @ U1) @ Ai
    out = {"vbeta": vbeta, "vbeta_naive": Ai, "vgamma": np.full((1, 1), np.nan), "valpha": np.zeros((q, q))}
    Bi = np.zeros((1, p))
    Ci = np.zeros((1, 1))
    L11, L12, L22 = U1.T @ U1, U1.T @ U2, U2.T @ U2
    if est_phi:
        Ci = np.linalg.inv(C)
        Bi = -Ci @ B @ Ai
        out["vgamma"] = (Bi @ L11 + Ci @ L12.T) @ Bi.T + (Bi @ L12 + Ci @ L22) @ Ci.T
    if est_alpha:
        Fi = _inv(F, "the covariance of alpha")
        Ei = -Fi @ Em @ Ci if est_phi else np.zeros((q, 1))
        Di = -Fi @ (Dm @ Ai + Em @ Bi) if est_phi else -Fi @ Dm @ Ai
        L13, L23, L33 = U1.T @ U3, U2.T @ U3, U3.T @ U3
        out["valpha"] = (
            (Di @ L11 + Ei @ L12.T + Fi @ L13.T) @ Di.T
            + (Di @ L12 + Ei @ L22 + Fi @ L23.T) @ Ei.T
            + (Di @ L13 + Ei @ L23 + Fi @ L33) @ Fi.T
        )
    return out
