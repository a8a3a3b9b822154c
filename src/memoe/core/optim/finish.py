"""The one "finish the fit" stage shared by every optimising family.

After its optimiser stops, a family (LMM, GLMM; gls/lme and MEMoE can adopt it) has a
:class:`~memoe.core.optim.checks.ConvergenceReport` (from :func:`~memoe.core.optim.check_convergence`
or built by hand) and knows whether the estimates sit on the boundary of the parameter space. This
module turns that into what lme4 records and says:

* :func:`is_boundary` -- lme4's ``isSingular``: some bounded variance parameter (a diagonal entry of a
  relative covariance factor) is below a tolerance;
* :func:`finish_fit` -- the list of messages stored on the result (convergence messages, then
  ``"boundary (singular) fit: see help('isSingular')"``), and the warnings: a
  :class:`~memoe.errors.ConvergenceWarning` per convergence message and one
  :class:`~memoe.errors.SingularFitWarning` naming the variance parameters at fault, each pointing at
  the user's line (:func:`memoe.errors.caller_stacklevel`), whatever the depth of the call inside memoe.

How a family uses it (after optimising, before or after building its result)::

    report = check_convergence(grad, hess, free)            # or ConvergenceReport(converged=True)
    singular = is_boundary(theta, lower, control.singular_tol)
    messages = finish_fit(report, singular=singular, names=tmap.names, values=theta, warn=warn)
    result = MyResult(..., convergence=report, singular=singular, messages=messages)

Messages that a family finds later (e.g. the GLMM's PIRLS notes) are appended by the family; they are
recorded, not warned, as lme4 does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from memoe.core.optim.checks import ConvergenceReport
from memoe.errors import ConvergenceWarning, SingularFitWarning, caller_stacklevel

__all__ = ["SINGULAR_MESSAGE", "finish_fit", "is_boundary"]

#: lme4's message for a boundary fit (the text ``summary`` prints)
SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"

def is_boundary(values: np.ndarray, lower: np.ndarray, tol: float) -> bool:
    """lme4's ``isSingular``: a parameter bounded below at zero is within ``tol`` of the bound.

    Parameters
    ----------
    values : numpy.ndarray, shape (k,)
        Variance parameters (e.g. theta, the relative covariance factor entries in lme4's order).
    lower : numpy.ndarray, shape (k,)
        Their lower bounds: 0 for the diagonal entries of the factors, ``-inf`` for the others.
    tol : float
        lme4's tolerance (1e-4).
    """
    values = np.asarray(values, dtype=float)
    lower = np.asarray(lower, dtype=float)
    return bool(np.any(values[lower == 0] < tol))


def finish_fit(
    report: ConvergenceReport,
    *,
    singular: bool,
    names: Sequence[str] = (),
    values: Iterable[float] = (),
    warn: bool = True,
    what: str = "a random-effects covariance",
) -> list[str]:
    """Messages to record on a fit and the warnings to emit, from its convergence report and boundary check.

    Parameters
    ----------
    report : ConvergenceReport
        The optimiser's convergence checks (its ``messages`` are empty when they pass).
    singular : bool
        The estimates are on the boundary (see :func:`is_boundary`).
    names, values : sequences
        Names and values of the variance parameters, quoted in the singular-fit warning so that the
        user sees which one is at zero.
    warn : bool
        Emit the warnings (the messages are returned either way, for the result to keep).
    what : str
        What is singular, for the warning (``"a random-effects covariance"``).

    Returns
    -------
    list of str
        The convergence messages, then lme4's boundary message when ``singular``.

    Warns
    -----
    ConvergenceWarning
        One per convergence message.
    SingularFitWarning
        Once for a boundary fit, with the parameter values.
    """
    messages = list(report.messages)
    if singular:
        messages.append(SINGULAR_MESSAGE)
    if warn:
        level = caller_stacklevel()
        for msg in report.messages:
            warnings.warn(msg, ConvergenceWarning, stacklevel=level)
        if singular:
            shown = ", ".join(f"{n}={float(v):.3g}" for n, v in zip(names, values, strict=False))
            warnings.warn(
                f"boundary (singular) fit: {what} is (nearly) singular" + (f"; theta = {shown}" if shown else ""),
                SingularFitWarning,
                stacklevel=level,
            )
    return messages
