"""Confidence intervals for the parameters of a linear mixed model (lme4's ``confint.merMod``).

Rows are named as lme4's ``confint(..., oldNames = FALSE)``: ``sd_(Intercept)|Subject``,
``cor_Days.(Intercept)|Subject``, ``sd_Days|Subject``, ``sigma``, then the fixed effects; columns are the
percentages of the limits (``"2.5 %"``, ``"97.5 %"``).

* ``"wald"``: ``beta_hat -/+ z se`` for the fixed effects; the variance parameters get NaN, as in lme4
  (a Wald interval on the sd scale is poor and lme4 does not give one).
* ``"profile"``: likelihood-profile intervals (:mod:`memoe.inference.profile`).
* ``"bootstrap"``: parametric-bootstrap percentile intervals (:mod:`memoe.inference.bootstrap`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from memoe.core.arguments import check_level
from memoe.core.rformat import percent_labels
from memoe.errors import ArgumentError, ArgumentTypeError
from memoe.inference.bootstrap import bootstrap
from memoe.inference.profile import profile_confint
from memoe.inference.varpar import VarParSpace

__all__ = ["confint", "select_parameters"]

METHODS = ("wald", "profile", "bootstrap")


def select_parameters(all_names: list[str], parm) -> list[str]:
    """Names chosen by ``parm``: None (all), ``"theta_"`` (variance parameters incl. sigma), ``"beta_"``
    (fixed effects), a name, a list of names, or integer positions."""
    n_var = sum(1 for n in all_names if n.startswith(("sd_", "cor_")) or n == "sigma")
    if parm is None:
        return list(all_names)
    if isinstance(parm, str):
        if parm == "theta_":
            return all_names[:n_var]
        if parm == "beta_":
            return all_names[n_var:]
        parm = [parm]
    out = []
    for p in parm:
        if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
            if not -len(all_names) <= int(p) < len(all_names):
                raise ArgumentError(f"parameter position {int(p)} out of range: there are {len(all_names)} parameters")
            out.append(all_names[int(p)])
        elif p in all_names:
            out.append(p)
        else:
            raise ArgumentError(f"unknown parameter {p!r}; choose from {', '.join(all_names)}")
    return out


def _wald(fit, level: float, names: list[str]) -> pd.DataFrame:
    space = VarParSpace.from_design(fit.design)
    z = stats.norm.ppf(0.5 + level / 2)
    lo, hi = percent_labels(level)
    table = pd.DataFrame(np.nan, index=pd.Index(space.names + list(fit.design.fixef_names)), columns=[lo, hi])
    beta, se = fit.fixef.to_numpy(), fit.bse.to_numpy()
    table.loc[list(fit.design.fixef_names), lo] = beta - z * se
    table.loc[list(fit.design.fixef_names), hi] = beta + z * se
    return table.loc[names]


def _all_names(fit) -> list[str]:
    return VarParSpace.from_design(fit.design).names + list(fit.design.fixef_names)


def confint(fit, method: str = "wald", level: float = 0.95, parm=None, **kwargs) -> pd.DataFrame:
    """Confidence intervals for the variance parameters (sd/cor scale), sigma and the fixed effects.

    Parameters
    ----------
    fit : LmmResult
    method : {"wald", "profile", "bootstrap"}, default "wald"
        ``"boot"`` is accepted for ``"bootstrap"``.
    level : float, default 0.95
    parm : str, list or None
        Parameters to report: names, positions, ``"theta_"`` (variance parameters) or ``"beta_"`` (fixed
        effects); default all.
    **kwargs
        For ``"bootstrap"``: ``nsim`` (default 500), ``seed``, ``n_jobs`` (default 2), ``progress``
        (default: when stderr is a terminal); see :func:`memoe.inference.bootstrap.bootstrap`. For
        ``"profile"``: ``progress``.

    Returns
    -------
    pandas.DataFrame
        Rows named as lme4's ``confint(oldNames = FALSE)``, columns e.g. ``"2.5 %"`` and ``"97.5 %"``.

    R equivalent
    ------------
    ``lme4::confint.merMod(fit, method = "Wald" | "profile" | "boot", level, parm)``.

    Notes
    -----
    Profile intervals of REML fits are computed on the ML deviance, as lme4 does. Bootstrap intervals
    resample from the fit as estimated (REML or ML) and refit with the same criterion.

    Examples
    --------
    >>> fit.confint(method="profile")  # doctest: +SKIP
                                       2.5 %      97.5 %
    sd_(Intercept)|Subject         14.381...   37.716...
    """
    level = check_level(level)
    if not isinstance(method, str):
        raise ArgumentTypeError(f"method must be one of {', '.join(METHODS)} (a string), got {method!r}")
    m = method.lower()
    if m == "boot":
        m = "bootstrap"
    if m not in METHODS:
        raise ArgumentError(f"unknown confint method {method!r}; choose one of {', '.join(METHODS)}")
    names = select_parameters(_all_names(fit), parm)
    allowed = {"bootstrap": None, "profile": {"progress"}, "wald": set()}[m]
    extra = [] if allowed is None else [k for k in kwargs if k not in allowed]
    if extra:
        raise ArgumentTypeError(
            f"unexpected arguments for method {m!r}: {', '.join(extra)} "
            f"(accepted: {', '.join(sorted(allowed)) or 'none'})"
        )
    if m == "wald":
        return _wald(fit, level, names)
    if m == "profile":
        return profile_confint(fit, level=level, parm=names, **kwargs)

    boot = bootstrap(fit, **kwargs)
    return boot.confint(level=level).loc[names]
