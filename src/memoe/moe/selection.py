"""Choosing the number of experts: fit K = 1, 2, ... and tabulate the criteria."""

from __future__ import annotations

import pandas as pd

from memoe.moe.model import MEMoE

__all__ = ["select_k"]


def select_k(
    formula: str,
    gating: str | None = None,
    data: pd.DataFrame | None = None,
    ks=range(1, 6),
    *,
    n_starts: int = 20,
    seed: int | None = None,
    return_fits: bool = False,
    progress: bool | None = None,
    **model_kw,
):
    """Fit a MEMoE for each K and tabulate loglik, AIC, BIC, ICL, entropy and the smallest class share.

    Parameters
    ----------
    formula, gating, data
        As for :class:`~memoe.moe.model.MEMoE`.
    ks : iterable of int
        Numbers of experts, increasing. Each fit after the first also starts from splits of the
        previous fit's classes when the previous K is one less.
    n_starts : int
    seed : int, optional
    return_fits : bool
        Also return the fits, a dict K -> MEMoEResult.
    progress : bool, optional
    **model_kw
        Further :class:`MEMoE` options (``mixture``, ``random_cov``, ``sigma``, ``group``, ...).

    Returns
    -------
    pandas.DataFrame
        Indexed by K: ``loglik, npar, AIC, BIC, ICL, entropy, min_class_share, n_at_best, n_same_partition,
        converged``.
        Smaller AIC / BIC / ICL is better; BIC uses log(number of subjects).
    dict, optional
        The fits (with ``return_fits=True``).
    """
    rows, fits = {}, {}
    previous = None
    for k in sorted(ks):
        model = MEMoE(formula, gating=gating, k=k, data=data, **model_kw)
        prev = previous if previous is not None and previous.k == k - 1 else None
        fit = model.fit(n_starts=n_starts, seed=seed, previous=prev, progress=progress, se=False)
        rows[k] = {**fit.criteria().to_dict(), "n_at_best": fit.n_at_best, "n_same_partition": fit.n_same_partition,
                   "converged": fit.converged}
        fits[k] = fit
        previous = fit
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "k"
    table = table.astype({"npar": int, "n_at_best": int, "n_same_partition": int, "converged": bool})
    return (table, fits) if return_fits else table
