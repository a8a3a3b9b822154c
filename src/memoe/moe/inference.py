"""Standard errors of a fitted mixture: observed information, robust sandwich, delta method, Wald tables.

All derivatives are taken on the unconstrained vector psi (see :mod:`memoe.moe.structure`):

* per-subject observed-data scores ``s_i`` are analytic (posterior-weighted complete-data scores,
  Louis/Oakes), see :meth:`MoEProblem.subject_scores`;
* the observed information ``A = -d^2 l / d psi d psi'`` is the central difference of the analytic
  total score (symmetrised);
* model-based ``vcov = A^-1``; robust ``vcov = A^-1 B A^-1`` with ``B = sum_i s_i s_i'``;
* natural-scale quantities (SDs, correlations, sigma) get ``J V J'`` with J the Jacobian of the
  map psi -> natural parameters (central differences of a closed-form map).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ConvergenceWarning, caller_stacklevel
from memoe.moe.params import MoEParams
from memoe.moe.problem import MoEProblem
from memoe.moe.structure import Structure

__all__ = ["MoEInference", "compute_inference", "natural_names", "natural_values"]


def natural_names(st: Structure, fixef: list[str], z_names: list[str], gate: list[str]) -> pd.MultiIndex:
    """Labels ``(part, expert, term)`` of the natural-scale parameters, in :func:`natural_values` order."""
    rows: list[tuple[str, int, str]] = [("gating", k + 1, g) for k in range(1, st.K) for g in gate]
    off = [(i, j) for i, j in zip(st.rows, st.cols, strict=True) if i != j]
    for k in range(st.K):
        rows += [("fixed", k + 1, n) for n in fixef]
        rows += [("sd", k + 1, z) for z in z_names]
        rows += [("corr", k + 1, f"{z_names[j]}:{z_names[i]}") for i, j in off]
        if st.dispersion:  # binomial / Poisson experts have no residual SD
            rows += [("sigma", k + 1, "Residual")]
        if hasattr(st, "natural_rows"):  # class-specific residual structures (memoe.moe.structured)
            rows += st.natural_rows(k)
    return pd.MultiIndex.from_tuples(rows, names=["part", "expert", "term"])


def natural_values(st: Structure, params: MoEParams) -> np.ndarray:
    """Gating coefficients, then per expert: fixed effects, random-effect SDs, correlations, sigma."""
    out = [params.gamma[1:].ravel()]
    off = [(i, j) for i, j in zip(st.rows, st.cols, strict=True) if i != j]
    G = params.G
    for k in range(st.K):
        sd = np.sqrt(np.diag(G[k])) if st.q else np.zeros(0)
        corr = [G[k][i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan for i, j in off]
        out += [params.beta[k], sd, np.asarray(corr, dtype=float)]
        if st.dispersion:
            out.append(np.array([params.sigma[k]]))
        if hasattr(st, "natural_values"):
            out.append(st.natural_values(params, k))
    return np.concatenate(out)


def _jacobian(f, x: np.ndarray, rel: float) -> np.ndarray:
    """Central-difference Jacobian of a vector function, shape (len(f(x)), len(x))."""
    cols = []
    for j in range(len(x)):
        h = rel * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        cols.append((f(xp) - f(xm)) / (2.0 * h))
    return np.column_stack(cols) if cols else np.zeros((len(f(x)), 0))


@dataclass(frozen=True)
class MoEInference:
    """Covariance matrices of psi and of the natural parameters.

    Attributes
    ----------
    psi : numpy.ndarray, shape (d,)
    psi_names : list of str
    information : numpy.ndarray, shape (d, d)
        Observed information A.
    meat : numpy.ndarray, shape (d, d)
        ``B = sum_i s_i s_i'``.
    vcov_model, vcov_robust : numpy.ndarray, shape (d, d)
    natural : pandas.Series
        Natural-scale estimates, MultiIndex ``(part, expert, term)``.
    jacobian : numpy.ndarray, shape (m, d)
    score_norm : float
        Largest absolute total score (about 0 at a maximum).
    """

    psi: np.ndarray
    psi_names: list[str]
    information: np.ndarray
    meat: np.ndarray
    vcov_model: np.ndarray
    vcov_robust: np.ndarray
    natural: pd.Series
    jacobian: np.ndarray
    score_norm: float

    def vcov_natural(self, robust: bool = True) -> pd.DataFrame:
        """Delta-method covariance of the natural-scale parameters."""
        V = self.vcov_robust if robust else self.vcov_model
        J = self.jacobian
        idx = self.natural.index
        return pd.DataFrame(J @ V @ J.T, index=idx, columns=idx)

    def standard_errors(self) -> pd.DataFrame:
        """Estimates with model-based and sandwich standard errors (columns ``estimate, se_model,
        se_robust``), indexed like :attr:`natural`. Tests and intervals: ``MEMoEResult.coef_table``."""
        se_m = np.sqrt(np.clip(np.diag(self.vcov_natural(False).to_numpy()), 0, None))
        se_r = np.sqrt(np.clip(np.diag(self.vcov_natural(True).to_numpy()), 0, None))
        return pd.DataFrame(
            {"estimate": self.natural.to_numpy(), "se_model": se_m, "se_robust": se_r}, index=self.natural.index
        )


def compute_inference(
    problem: MoEProblem,
    params: MoEParams,
    names: pd.MultiIndex,
    psi_names: list[str],
    step: float = 1e-5,
) -> MoEInference:
    """Observed information (central differences of the analytic score), sandwich and delta method.

    Parameters
    ----------
    problem : MoEProblem
    params : MoEParams
        The estimates (a maximum of the observed log-likelihood).
    names : pandas.MultiIndex
        Natural-parameter labels (:func:`natural_names`).
    psi_names : list of str
    step : float
        Relative step of the central differences.
    """
    st = problem.structure
    psi = st.pack(params)
    S = problem.subject_scores(params)
    B = S.T @ S
    H = _jacobian(problem.score_psi, psi, step)
    A = -(H + H.T) / 2.0
    try:
        Ainv = np.linalg.inv(A)
        ok = bool(np.all(np.linalg.eigvalsh(A) > 0))
    except np.linalg.LinAlgError:
        Ainv, ok = np.full_like(A, np.nan), False
    if not ok:
        warnings.warn(
            "the observed information is not positive definite (a boundary estimate, an empty expert or "
            "a saddle point): standard errors are unreliable",
            ConvergenceWarning,
            stacklevel=caller_stacklevel(),
        )
    Vr = Ainv @ B @ Ainv
    J = _jacobian(lambda x: natural_values(st, st.unpack(x)), psi, 1e-7)
    return MoEInference(
        psi=psi,
        psi_names=psi_names,
        information=A,
        meat=B,
        vcov_model=Ainv,
        vcov_robust=Vr,
        natural=pd.Series(natural_values(st, params), index=names, name="estimate"),
        jacobian=J,
        score_norm=float(np.max(np.abs(S.sum(axis=0)))) if S.size else 0.0,
    )
