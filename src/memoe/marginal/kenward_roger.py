"""Kenward-Roger for ``gls`` / ``lme`` fits with residual structures (MMRM included), as R's mmrm.

Group i has ``V_i(phi) = Z_i G Z_i' + sigma^2 S_i C_i S_i`` (G the random-effects covariance,
C_i the correlation structure, S_i the variance function's SD ratios). The variance parameters are

    phi = (G entries, psi, sigma^2)

* ``G`` entries on the natural (variance-covariance) scale, lower triangle column by column in
  lme4's theta order (``var(<col>)``, ``cov(<row>, <col>)``), as pbkrtest;
* ``psi`` = the optimiser's unconstrained correlation and variance-function parameters (see
  :mod:`memoe.marginal.correlation`: AR(1) ``Phi = tanh(psi / 2)``, ``Symm`` canonical partial
  correlations ``tanh(psi)``, compound symmetry ``Rho = lo + (1 - lo) logistic(psi)``, ``VarIdent``
  log SD ratios);
* ``sigma^2`` the residual variance (of the reference stratum).

V is linear in the G entries and in sigma^2, so an ``lme`` fit without residual structure is exactly
pbkrtest's linear model and both variants below equal :meth:`memoe.lmm.LmmResult` 's Kenward-Roger.
With ``Phi = (sum_i X_i' V_i^-1 X_i)^-1`` and ``V_r = dV / dphi_r`` (Kenward & Roger 1997)::

    P_r  = -sum_i X_i' V_i^-1 V_r V_i^-1 X_i
    Q_rs =  sum_i X_i' V_i^-1 V_r V_i^-1 V_s V_i^-1 X_i
    R_rs =  sum_i X_i' V_i^-1 (d^2 V_i / dphi_r dphi_s) V_i^-1 X_i
    W    =  2 IE2^-1,  IE2_rs = sum_i tr(V_i^-1 V_r V_i^-1 V_s) - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s)
    Phi_A = Phi + 2 Phi [sum_rs W_rs (Q_rs - P_r Phi P_s - R_rs / 4)] Phi

``W`` is by default the inverse of the *expected* REML information (pbkrtest's ``vcovAdj``, and
:mod:`memoe.inference.kenward_roger` for ``memoe.lmm``); ``information="observed"`` uses the observed
Hessian of the REML criterion instead, as R's mmrm (``theta_vcov``) and SAS; the two differ by O(1/n).
Two variants, as mmrm's ``method``:

* ``"kenward-roger"``: with ``R_rs``. For a covariance nonlinear in its parameters (correlation
  structures, variance functions) ``R_rs`` and hence ``Phi_A`` depend on the parameterisation; the
  one used here is ``phi`` above (mmrm's own parameterisations differ, e.g. a log-Cholesky factor of
  the unstructured matrix), so the adjusted SEs agree with mmrm's ``"Kenward-Roger"`` only to the
  order of the approximation.
* ``"kenward-roger-linear"``: ``R_rs`` dropped, i.e. Kenward-Roger for the covariance written as
  linear in its parameters (mmrm's ``"Kenward-Roger-Linear"``, SAS's ``DDFM=KR`` for unstructured
  covariances). ``P``, ``Q`` and ``W`` transform together, so this variant does not depend on the
  parameterisation.

The denominator df and the F scaling use ``Phi``, ``P`` and ``W`` only (pbkrtest's and mmrm's
``h_kr_df``; :func:`memoe.inference.kenward_roger.kr_df_1d`, :func:`~memoe.inference.kenward_roger.kr_ftest`).

Derivatives: analytic for the G entries and sigma^2 (``Z_i E_r Z_i'`` and ``S_i C_i S_i``), central
differences of the residual structure ``S_i C_i S_i`` in ``psi`` (step 1e-5 of ``max(|psi|, 1)``).
``sum_rs W_rs R_rs`` needs only directional second derivatives: with the eigen-decomposition of the
``psi`` block of W in scaled coordinates, ``sum_jk W_jk d^2 / dpsi_j dpsi_k = sum_m lambda_m
d^2 / dt^2`` along eigenvector m, a three-point difference per eigenvector. Everything is batched
over the groups of one size (no loop over groups); the loops run over size buckets and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memoe.core.linalg.batched import batched_cholesky, batched_forward_solve
from memoe.errors import HypothesisError
from memoe.inference.kenward_roger import KenwardRoger, kr_adjust, kr_information, kr_weights

__all__ = ["KR_VARIANTS", "MarginalKRPieces", "kenward_roger_marginal", "kr_pieces"]

#: canonical ddf names of the two variants
KR_VARIANTS = ("kenward-roger", "kenward-roger-linear")

# central-difference steps relative to max(|psi|, 1): first derivatives (error ~ h^2 + eps / h) and
# the directional second derivatives (error ~ h^2 + eps / h^2)
_H1 = 1e-5
_H2 = 3e-4


@dataclass(frozen=True)
class MarginalKRPieces:
    """Everything both variants need, computed once per fit.

    Attributes
    ----------
    Phi : numpy.ndarray, shape (p, p)
        ``(X' V^-1 X)^-1``.
    P : numpy.ndarray, shape (K, p, p)
    Q : numpy.ndarray, shape (K, K, p, p)
    W : numpy.ndarray, shape (K, K)
        ``2 IE2^-1`` (inverse expected REML information).
    WR : numpy.ndarray, shape (p, p)
        ``sum_rs W_rs R_rs``.
    names : list of str
        The K variance parameters phi.
    phi : numpy.ndarray, shape (K,)
        Their values.
    information : str
        ``"expected"`` or ``"observed"``: the information matrix behind ``W``.
    """

    Phi: np.ndarray
    P: np.ndarray
    Q: np.ndarray
    W: np.ndarray
    WR: np.ndarray
    names: list[str]
    phi: np.ndarray
    information: str = "expected"


def _names(fit, tmap) -> list[str]:
    out: list[str] = []
    if tmap is not None:
        cols = list(fit.design.blocks[0].columns)
        for r, c in zip(tmap.row, tmap.col, strict=True):
            out.append(f"var({cols[r]})" if r == c else f"cov({cols[r]}, {cols[c]})")
    problem = fit.model.problem
    if problem.cor is not None:
        out += [f"cor: {k}" for k in fit.cor_params.index]
    if problem.var is not None:
        out += [f"var: log ratio {k}" for k in problem.var.names]
    return [*out, "residual"]


def kr_pieces(fit, information: str = "expected") -> MarginalKRPieces:
    """``Phi``, ``P_r``, ``Q_rs``, ``W`` and ``sum W_rs R_rs`` of a REML ``gls`` / ``lme`` fit.

    Parameters
    ----------
    fit : MarginalResult
        Fitted by REML.
    information : {"expected", "observed"}
        ``W = 2 H^-1`` with ``H`` the expected (pbkrtest) or the observed (R's mmrm, SAS) Hessian of
        the REML criterion ``-2 l_R`` in ``phi``. Observed (Notes)::

            H_rs = tr(Pm V_rs) - y' Pm V_rs Pm y - tr(Pm V_r Pm V_s) + 2 y' Pm V_r Pm V_s Pm y

        ``Pm y = V^-1 (y - X beta)``; the first two terms, linear in the second derivatives ``V_rs``,
        are ``sum_i <V_rs,i, V_i^-1 - r_i r_i' - B_i Phi B_i'>`` (``B_i = V_i^-1 X_i``), a scalar whose
        ``psi`` Hessian is taken by central differences. At an interior optimum the observed Hessian
        transforms with the parameterisation, so the linear variant then equals mmrm's
        ``"Kenward-Roger-Linear"`` whatever mmrm's parameterisation.

    Returns
    -------
    MarginalKRPieces

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import Symm, VarIdent
    >>> orth = memoe.datasets.load("Orthodont")
    >>> fit = memoe.gls("distance ~ age * Sex", orth, correlation=Symm(group="Subject"),
    ...                 weights=VarIdent("age")).fit()
    >>> kr_pieces(fit).P.shape  # 6 correlation, 3 variance parameters, sigma^2; 4 fixed effects
    (10, 4, 4)
    """
    if information not in ("expected", "observed"):
        raise HypothesisError(f"information={information!r}: choose 'expected' (pbkrtest) or 'observed' (mmrm, SAS)")
    if not fit.reml:
        raise HypothesisError(
            "Kenward-Roger's method is only available for REML fits (as in pbkrtest and R's mmrm); "
            "refit with reml=True"
        )
    problem = fit.model.problem
    layout = fit.model.layout
    theta, u, v = problem.split(fit.params_unconstrained)
    s2 = fit.sigma**2
    p = problem.p
    tmap = problem.theta_map
    n_theta = problem.n_theta
    psi = np.concatenate([u, v])
    n_psi = psi.size
    zeros_theta = np.zeros(n_theta)

    def resid_cov(psi_: np.ndarray) -> list[np.ndarray]:
        # S_i C_i S_i per bucket: the relative covariance with the random effects switched off
        return problem.covariances(np.concatenate([zeros_theta, psi_]))

    G = s2 * problem.relative_covariance(theta)
    K = n_theta + n_psi + 1
    Xb = layout.gather(problem.X)
    Zb = None if problem.Z is None else layout.gather(problem.Z)
    if tmap is not None:
        q = G.shape[0]
        E = np.zeros((n_theta, q, q))
        idx = np.arange(n_theta)
        E[idx, tmap.row, tmap.col] = 1.0
        E[idx, tmap.col, tmap.row] = 1.0
        g_values = G[tmap.row, tmap.col]
    else:
        E = np.zeros((0, 0, 0))
        g_values = np.zeros(0)

    R0 = resid_cov(psi)
    sc = np.maximum(np.abs(psi), 1.0)
    dR = []  # per psi_j: list over buckets of d(S C S) / dpsi_j
    for j in range(n_psi):
        step = np.zeros(n_psi)
        step[j] = _H1 * sc[j]
        plus, minus = resid_cov(psi + step), resid_cov(psi - step)
        dR.append([(a - b) / (2.0 * step[j]) for a, b in zip(plus, minus, strict=True)])

    XVX = np.zeros((p, p))
    P = np.zeros((K, p, p))
    Q = np.zeros((K, K, p, p))
    Ktrace = np.zeros((K, K))
    ZZ = np.zeros((K, K))  # r' V_r V^-1 V_s r
    XtZ = np.zeros((p, K))  # X' V^-1 V_r r
    Bs, Vinvs, rs = [], [], []
    eb = layout.gather(problem.y - problem.X @ fit.fixef.to_numpy())
    for k in range(len(layout.buckets)):
        Vk = s2 * R0[k]
        if Zb is not None:
            Vk = Vk + Zb[k] @ G @ np.swapaxes(Zb[k], 1, 2)
        # whitened form: V_i = L_i L_i', Xt = L_i^-1 X_i, M_r = L_i^-1 V_r L_i^-T (symmetric), so
        # P_r = -Xt' M_r Xt, Q_rs = (M_r Xt)' (M_s Xt), tr(V^-1 V_r V^-1 V_s) = <M_r, M_s>: the sums over
        # the groups become two GEMMs over the flattened stacks
        Lk = batched_cholesky(Vk)
        Linv = batched_forward_solve(Lk, np.ascontiguousarray(np.broadcast_to(np.eye(Vk.shape[1]), Vk.shape)))
        Xt = Linv @ Xb[k]  # (Gk, n, p)
        XVX += np.einsum("gnp,gnq->pq", Xt, Xt)
        parts = []
        if Zb is not None:
            ZtL = Linv @ Zb[k]  # L_i^-1 Z_i
            parts.append(np.einsum("gaq,rqs,gbs->rgab", ZtL, E, ZtL, optimize=True))
        LinvT = np.swapaxes(Linv, 1, 2)
        if n_psi:
            parts.append(s2 * (Linv[None] @ np.stack([dR[j][k] for j in range(n_psi)]) @ LinvT[None]))
        parts.append((Linv @ R0[k] @ LinvT)[None])
        M = np.concatenate(parts)  # (K, Gk, n, n)
        T = M @ Xt[None]  # (K, Gk, n, p)
        P -= np.einsum("gap,rgaq->rpq", Xt, T, optimize=True)
        Tm = T.transpose(0, 3, 1, 2).reshape(K * p, -1)
        Q += (Tm @ Tm.T).reshape(K, p, K, p).transpose(0, 2, 1, 3)
        Mm = M.reshape(K, -1)
        Ktrace += Mm @ Mm.T
        Bs.append(LinvT @ Xt)  # V_i^-1 X_i
        et = (Linv @ eb[k][:, :, None])[:, :, 0]  # L_i^-1 e_i
        z = np.einsum("rgab,gb->rga", M, et).reshape(K, -1)  # L_i^-1 V_r V_i^-1 e_i
        ZZ += z @ z.T
        XtZ += Xt.reshape(-1, p).T @ z.T
        if information == "observed":
            Vinvs.append(LinvT @ Linv)
            rs.append((LinvT @ et[:, :, None])[:, :, 0])  # V_i^-1 e_i
    Phi = np.linalg.inv(XVX)
    Phi = 0.5 * (Phi + Phi.T)
    Q = 0.5 * (Q + Q.transpose(1, 0, 2, 3).transpose(0, 1, 3, 2))
    IE2 = kr_information(Phi, P, Q, Ktrace)
    if information == "observed":
        H = _observed_hessian(IE2, ZZ, XtZ, Phi, Bs, Vinvs, rs, dR, resid_cov, psi, sc, s2, n_theta)
        W = kr_weights(H)
    else:
        W = kr_weights(IE2)

    # sum_rs W_rs R_rs: only the (sigma^2, psi_j) and (psi_j, psi_k) second derivatives are non-zero
    WR = np.zeros((p, p))
    if n_psi:
        ip = slice(n_theta, n_theta + n_psi)
        w_sp = W[-1, ip]
        Wx = W[ip, ip] / np.outer(sc, sc)
        lam, vec = np.linalg.eigh(0.5 * (Wx + Wx.T))
        curv = [np.zeros_like(R0[k]) for k in range(len(R0))]
        for m in range(n_psi):
            if lam[m] == 0.0:
                continue
            d = _H2 * sc * vec[:, m]
            plus, minus = resid_cov(psi + d), resid_cov(psi - d)
            for k in range(len(R0)):
                curv[k] += lam[m] * (plus[k] - 2.0 * R0[k] + minus[k]) / _H2**2
        for k, B in enumerate(Bs):
            S = s2 * curv[k]
            for j in range(n_psi):
                S = S + 2.0 * w_sp[j] * dR[j][k]
            WR += np.einsum("gap,gab,gbq->pq", B, S, B, optimize=True)
    phi = np.concatenate([g_values, psi, [s2]])
    return MarginalKRPieces(
        Phi=Phi, P=P, Q=Q, W=W, WR=0.5 * (WR + WR.T), names=_names(fit, tmap), phi=phi, information=information
    )


def _observed_hessian(IE2, ZZ, XtZ, Phi, Bs, Vinvs, rs, dR, resid_cov, psi, sc, s2, n_theta) -> np.ndarray:
    """Observed Hessian of ``-2 l_R`` in phi (see :func:`kr_pieces`), shape (K, K)."""
    K = IE2.shape[0]
    Y = ZZ - XtZ.T @ Phi @ XtZ  # y' Pm V_r Pm V_s Pm y
    H = 2.0 * Y - IE2
    n_psi = psi.size
    if n_psi:
        # S_i = V_i^-1 - r_i r_i' - B_i Phi B_i': <d^2 V_i, S_i> summed is the second-derivative term
        S = [Vi - r[:, :, None] * r[:, None, :] - B @ Phi @ np.swapaxes(B, 1, 2)
             for Vi, r, B in zip(Vinvs, rs, Bs, strict=True)]

        def f(x: np.ndarray) -> float:  # sum_i <S_i C_i S_i (psi), S_i>
            return float(sum(np.sum(R * Sk) for R, Sk in zip(resid_cov(psi + sc * x), S, strict=True)))

        h = _H2
        f0 = f(np.zeros(n_psi))
        T = np.empty((n_psi, n_psi))
        eye = np.eye(n_psi) * h
        for i in range(n_psi):
            T[i, i] = (f(eye[i]) - 2.0 * f0 + f(-eye[i])) / h**2
            for j in range(i):
                T[i, j] = T[j, i] = (
                    f(eye[i] + eye[j]) - f(eye[i] - eye[j]) - f(-eye[i] + eye[j]) + f(-eye[i] - eye[j])
                ) / (4.0 * h * h)
        ip = slice(n_theta, n_theta + n_psi)
        H[ip, ip] += s2 * T / np.outer(sc, sc)
        # d^2 V / dsigma^2 dpsi_j = d(S C S) / dpsi_j
        g = np.array([sum(float(np.sum(dR[j][k] * Sk)) for k, Sk in enumerate(S)) for j in range(n_psi)])
        H[K - 1, ip] += g
        H[ip, K - 1] += g
    return 0.5 * (H + H.T)


def kenward_roger_marginal(pieces: MarginalKRPieces, variant: str) -> KenwardRoger:
    """The adjusted covariance of one variant (``"kenward-roger"`` or ``"kenward-roger-linear"``).

    Parameters
    ----------
    pieces : MarginalKRPieces
    variant : {"kenward-roger", "kenward-roger-linear"}

    Returns
    -------
    KenwardRoger
        Read by :func:`memoe.inference.kenward_roger.kr_df_1d` and :func:`~memoe.inference.kenward_roger.kr_ftest`.
    """
    if variant not in KR_VARIANTS:  # pragma: no cover - the result normalises the name
        raise HypothesisError(f"unknown Kenward-Roger variant {variant!r}; choose one of {list(KR_VARIANTS)}")
    WR = None if variant == "kenward-roger-linear" else pieces.WR
    return kr_adjust(pieces.Phi, pieces.P, pieces.Q, pieces.W, WR=WR, names=pieces.names)
