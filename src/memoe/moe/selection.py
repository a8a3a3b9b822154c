"""Choosing the number of experts: fit K = 1, 2, ... and tabulate the criteria."""

from __future__ import annotations

import inspect

import pandas as pd

from memoe.core.arguments import check_bool, check_int, check_int_list, check_optional_bool, check_seed
from memoe.errors import ArgumentError, ArgumentTypeError
from memoe.moe.model import MEMoE
from memoe.moe.multistart import _bar

__all__ = ["select_k"]

# MEMoE options select_k passes on (its own arguments k, formula, gating and data are not among them)
_MODEL_OPTIONS = tuple(
    n for n, p in inspect.signature(MEMoE.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)


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
        Numbers of experts (distinct, >= 1; fitted in increasing order). Each fit after the first
        also starts from splits of the previous fit's classes when the previous K is one less. Every
        K must be smaller than the number of subjects.
    n_starts : int
        Starts per K (>= 1).
    seed : int >= 0, numpy.random.SeedSequence or Generator, optional
    return_fits : bool
        Also return the fits, a dict K -> MEMoEResult.
    progress : bool, optional
        tqdm progress bars (over the K values, and over each fit's starts); None (default): shown
        when stderr is a terminal.
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

    R equivalent
    ------------
    lcmm's ``gridsearch`` over ``ng`` followed by ``summarytable(m1, m2, m3)``.

    Raises
    ------
    ArgumentError, ArgumentTypeError
        A bad ``ks``, ``n_starts``, ``seed``, ``progress`` or an unknown option; a K not smaller
        than the number of subjects (checked before any fit).

    Examples
    --------
    >>> import memoe
    >>> sim = memoe.datasets.load("memoe_sim2")
    >>> table = memoe.select_k("y ~ time + (time | id)", gating="~ w1", data=sim, ks=[1, 2], n_starts=2, seed=1)
    >>> table.index.tolist()
    [1, 2]
    """
    ks_l = check_int_list(ks, "ks", minimum=1)
    n_starts = check_int(n_starts, "n_starts", minimum=1)
    seed = check_seed(seed)
    return_fits = check_bool(return_fits, "return_fits")
    progress = check_optional_bool(progress, "progress")
    if "k" in model_kw:
        raise ArgumentError("select_k takes the numbers of experts as ks=..., not k=")
    unknown = sorted(set(model_kw) - set(_MODEL_OPTIONS))
    if unknown:
        raise ArgumentTypeError(f"select_k got unknown option(s) {unknown}; MEMoE options are {list(_MODEL_OPTIONS)}")
    # build every model before fitting any: a bad K or option fails at once, not after minutes of fitting
    models = {k: MEMoE(formula, gating=gating, k=k, data=data, **model_kw) for k in ks_l}
    rows, fits = {}, {}
    previous = None
    bar = _bar(len(ks_l), progress, "select_k")
    for k, model in models.items():
        prev = previous if previous is not None and previous.k == k - 1 else None
        fit = model.fit(n_starts=n_starts, seed=seed, previous=prev, progress=progress, se=False)
        rows[k] = {**fit.criteria().to_dict(), "n_at_best": fit.n_at_best, "n_same_partition": fit.n_same_partition,
                   "converged": fit.converged}
        fits[k] = fit
        previous = fit
        bar.update(1)
    bar.close()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "k"
    table = table.astype({"npar": int, "n_at_best": int, "n_same_partition": int, "converged": bool})
    return (table, fits) if return_fits else table
