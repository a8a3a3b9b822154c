"""Which parameters the experts share, and the unconstrained parameter vector psi.

``psi = [gating, fixed effects, covariance, residual]``:

* gating: ``gamma_k`` for experts 2..K (r each);
* fixed effects: the shared coefficients once, then each expert's class-specific ones;
* covariance (G_k = L_k L_k'): the free entries of the Cholesky factor, diagonal on the log scale,
  per expert (``"class"``), once (``"common"``), or once plus ``log omega_k`` for experts 2..K
  (``"proportional"``: ``G_k = omega_k^2 G_1``, as lcmm's ``nwg``);
* residual: ``log sigma_k`` per expert (``"class"``) or once (``"common"``).

The map psi -> :class:`MoEParams` is smooth and one-to-one off the boundary; scores and the
observed information are computed on psi and carried to the natural scale by the delta method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memoe.moe.experts import ExpertGradients
from memoe.moe.kernels import right_const
from memoe.moe.params import MoEParams

__all__ = ["COV_OPTIONS", "SIGMA_OPTIONS", "Structure"]

COV_OPTIONS = ("class", "common", "proportional")
SIGMA_OPTIONS = ("class", "common")
_TINY = 1e-10  # floor of a Cholesky diagonal before its log (boundary fits)


@dataclass(frozen=True)
class Structure:
    """Parameter sharing across K experts and the psi <-> MoEParams map.

    Attributes
    ----------
    K, p, q, r : int
        Experts, fixed effects, random effects, gating columns.
    specific : numpy.ndarray of bool, shape (p,)
        Fixed effects that are class-specific (the rest are shared).
    cov, sigma : str
        Covariance and residual options (see module docstring).
    rows, cols : numpy.ndarray of int
        Free entries of each L (lme4's theta layout; ``(x || g)`` leaves zeros fixed).
    dispersion : bool
        The experts have a residual SD (Gaussian); False for binomial / Poisson experts, whose
        ``sigma`` is fixed at 1 and has no entry in psi.
    """

    K: int
    p: int
    q: int
    r: int
    specific: np.ndarray
    cov: str
    sigma: str
    rows: np.ndarray
    cols: np.ndarray
    dispersion: bool = True

    # ------------------------------------------------------------------ layout
    @property
    def coupled(self) -> bool:
        """True when experts share parameters, so their M-steps cannot be separated."""
        if self.K == 1:
            return False
        return (not bool(np.all(self.specific))) or self.cov != "class" or self.sigma != "class"

    @property
    def n_gate(self) -> int:
        return (self.K - 1) * self.r

    @property
    def n_shared(self) -> int:
        return int((~self.specific).sum())

    @property
    def n_specific(self) -> int:
        return int(self.specific.sum())

    @property
    def nt(self) -> int:
        return len(self.rows)

    @property
    def n_cov(self) -> int:
        if self.q == 0:
            return 0
        if self.cov == "class":
            return self.K * self.nt
        return self.nt + (self.K - 1 if self.cov == "proportional" else 0)

    @property
    def n_sigma(self) -> int:
        if not self.dispersion:
            return 0
        return self.K if self.sigma == "class" else 1

    @property
    def offsets(self) -> dict[str, int]:
        o_beta = self.n_gate
        o_cov = o_beta + self.n_shared + self.K * self.n_specific
        o_sig = o_cov + self.n_cov
        return {"beta": o_beta, "cov": o_cov, "sigma": o_sig, "end": o_sig + self.n_sigma}

    @property
    def size(self) -> int:
        return self.offsets["end"]

    def beta_index(self) -> np.ndarray:
        """Position in psi of each expert's fixed effects, shape (K, p)."""
        o = self.offsets["beta"]
        idx = np.empty((self.K, self.p), dtype=int)
        shared = np.flatnonzero(~self.specific)
        spec = np.flatnonzero(self.specific)
        idx[:, shared] = o + np.arange(len(shared))[None, :]
        base = o + len(shared)
        for k in range(self.K):
            idx[k, spec] = base + k * len(spec) + np.arange(len(spec))
        return idx

    # ------------------------------------------------------------------ maps
    def _chol_entries(self, L: np.ndarray) -> np.ndarray:
        e = L[self.rows, self.cols].copy()
        diag = self.rows == self.cols
        e[diag] = np.log(np.maximum(e[diag], _TINY))
        return e

    def _chol_from(self, e: np.ndarray) -> np.ndarray:
        L = np.zeros((self.q, self.q))
        diag = self.rows == self.cols
        vals = np.where(diag, np.exp(np.where(diag, e, 0.0)), e)
        L[self.rows, self.cols] = vals
        return L

    def pack(self, params: MoEParams) -> np.ndarray:
        """psi from natural-scale parameters (which must satisfy the structure)."""
        K = self.K
        psi = np.empty(self.size)
        psi[: self.n_gate] = params.gamma[1:].ravel()
        bidx = self.beta_index()
        psi[bidx] = params.beta
        o = self.offsets["cov"]
        if self.q:
            if self.cov == "class":
                for k in range(K):
                    psi[o + k * self.nt : o + (k + 1) * self.nt] = self._chol_entries(params.L[k])
            else:
                psi[o : o + self.nt] = self._chol_entries(params.L[0])
                if self.cov == "proportional":
                    s0 = np.linalg.norm(params.L[0])
                    ratios = [np.linalg.norm(params.L[k]) / s0 if s0 > 0 else 1.0 for k in range(1, K)]
                    psi[o + self.nt : o + self.nt + K - 1] = np.log(np.maximum(ratios, _TINY))
        o = self.offsets["sigma"]
        psi[o : o + self.n_sigma] = np.log(params.sigma[: self.n_sigma])
        return psi

    def unpack(self, psi: np.ndarray) -> MoEParams:
        """Natural-scale parameters from psi."""
        K, q = self.K, self.q
        gamma = np.zeros((K, self.r))
        gamma[1:] = psi[: self.n_gate].reshape(K - 1, self.r)
        beta = psi[self.beta_index()]
        L = np.zeros((K, q, q))
        o = self.offsets["cov"]
        if q:
            if self.cov == "class":
                for k in range(K):
                    L[k] = self._chol_from(psi[o + k * self.nt : o + (k + 1) * self.nt])
            else:
                L0 = self._chol_from(psi[o : o + self.nt])
                om = self.omega(psi)
                for k in range(K):
                    L[k] = om[k] * L0
        o = self.offsets["sigma"]
        s = np.exp(psi[o : o + self.n_sigma])
        if not self.dispersion:
            sigma = np.ones(K)
        else:
            sigma = s if self.sigma == "class" else np.repeat(s, K)
        return MoEParams(gamma=gamma, beta=beta, L=L, sigma=sigma)

    def omega(self, psi: np.ndarray) -> np.ndarray:
        """Covariance scale factors omega_k (1 unless proportional), shape (K,)."""
        om = np.ones(self.K)
        if self.q and self.cov == "proportional":
            o = self.offsets["cov"] + self.nt
            om[1:] = np.exp(psi[o : o + self.K - 1])
        return om

    def project(self, params: MoEParams, mass: np.ndarray) -> MoEParams:
        """Impose the sharing on unconstrained per-expert parameters (mass-weighted averages).

        Parameters
        ----------
        params : MoEParams
        mass : numpy.ndarray, shape (K,)
            Posterior mass of each expert.
        """
        w = mass / mass.sum()
        beta = params.beta.copy()
        beta[:, ~self.specific] = w @ params.beta[:, ~self.specific]
        L = params.L.copy()
        if self.q and self.cov != "class":
            Gbar = np.einsum("k,kab->ab", w, params.G)
            Lbar = np.linalg.cholesky(Gbar + 1e-12 * np.eye(self.q))
            mask = np.zeros((self.q, self.q), dtype=bool)
            mask[self.rows, self.cols] = True
            Lbar = np.where(mask, Lbar, 0.0)
            L[:] = Lbar
        sigma = params.sigma.copy()
        if self.sigma == "common":
            sigma[:] = np.sqrt(w @ params.sigma**2)
        return params.replace(beta=beta, L=L, sigma=sigma)

    # ------------------------------------------------------------------ chain rule
    def expert_scores(self, psi: np.ndarray, tau: np.ndarray, grads: list[ExpertGradients]) -> np.ndarray:
        """Posterior-weighted per-subject scores of the expert part of psi.

        Parameters
        ----------
        psi : numpy.ndarray, shape (size,)
        tau : numpy.ndarray, shape (N, K)
            Weights (posterior probabilities).
        grads : list of ExpertGradients
            Natural-scale gradients of each expert.

        Returns
        -------
        numpy.ndarray, shape (N, size - n_gate)

        Notes
        -----
        ``G_k = omega_k^2 L L'`` gives ``d l / d L = 2 omega_k^2 (d l / d G_k) L``, times ``L_jj`` for a
        log-diagonal entry, and ``d l / d log omega_k = 2 tr((d l / d G_k) G_k)``;
        ``d l / d log sigma_k = 2 sigma_k^2 d l / d sigma_k^2``.
        """
        N, K = tau.shape
        params = self.unpack(psi)
        out = np.zeros((N, self.size))
        bidx = self.beta_index()
        for k in range(K):  # indices are distinct within an expert, so += is safe
            out[:, bidx[k]] += tau[:, k : k + 1] * grads[k].beta
        if self.q:
            o = self.offsets["cov"]
            om = self.omega(psi)
            diag = self.rows == self.cols
            for k in range(K):
                base = params.L[k] / om[k]  # L of the parameterisation (common factor for shared options)
                # d l / d base = omega_k d l / d L_k; with d l / d L_k = 2 (d l / d G_k) L_k
                full = grads[k].dL if grads[k].dL is not None else 2.0 * right_const(grads[k].G, params.L[k])
                dL = om[k] * full[:, self.rows, self.cols]
                dL[:, diag] *= base[self.rows[diag], self.cols[diag]]
                start = o + (k * self.nt if self.cov == "class" else 0)
                out[:, start : start + self.nt] += tau[:, k : k + 1] * dL
                if self.cov == "proportional" and k > 0:
                    # d l / d log omega_k = sum (d l / d L_k) * L_k = 2 tr((d l / d G_k) G_k)
                    out[:, o + self.nt + k - 1] += tau[:, k] * (full.reshape(N, -1) @ params.L[k].ravel())
        o = self.offsets["sigma"]
        for k in range(K if self.dispersion else 0):
            j = o + (k if self.sigma == "class" else 0)
            out[:, j] += tau[:, k] * 2.0 * params.sigma[k] ** 2 * grads[k].s2
        return out[:, self.n_gate :]

    # ------------------------------------------------------------------ names
    def names(self, fixef: list[str], z_names: list[str], gate: list[str]) -> list[str]:
        """Names of the psi entries."""
        out = [f"gate{k + 1}:{g}" for k in range(1, self.K) for g in gate]
        shared = [n for n, s in zip(fixef, self.specific, strict=True) if not s]
        spec = [n for n, s in zip(fixef, self.specific, strict=True) if s]
        out += [f"beta:{n}" for n in shared]
        out += [f"beta{k + 1}:{n}" for k in range(self.K) for n in spec]
        chol = [
            f"log_chol[{z_names[i]}]" if i == j else f"chol[{z_names[i]},{z_names[j]}]"
            for i, j in zip(self.rows, self.cols, strict=True)
        ]
        if self.q:
            if self.cov == "class":
                out += [f"{c}{k + 1}" for k in range(self.K) for c in chol]
            else:
                out += chol + ([f"log_omega{k + 1}" for k in range(1, self.K)] if self.cov == "proportional" else [])
        if self.dispersion:
            out += [f"log_sigma{k + 1}" for k in range(self.K)] if self.sigma == "class" else ["log_sigma"]
        return out
