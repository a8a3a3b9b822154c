"""Exception and warning hierarchy for memoe.

Every error raised on bad user input derives from :class:`MemoeError`, so a caller can catch
one class; the subclasses say which stage rejected the input. Messages name the column, term,
row count or level at fault.
"""

from __future__ import annotations

import sys
import warnings

#: the top-level package name: frames whose module is this package or below it are memoe's own
_PACKAGE = __name__.split(".", 1)[0]


class MemoeError(Exception):
    """Base class of every memoe error."""


class FormulaError(MemoeError, ValueError):
    """The model formula cannot be parsed; the message quotes the offending term."""


class DataError(MemoeError, ValueError):
    """The data do not fit the formula (missing column, wrong type, nothing left after NA removal)."""


class IdentifiabilityError(MemoeError, ValueError):
    """The random-effects structure cannot be identified from the data (lme4's checks)."""


class ConvergenceError(MemoeError, RuntimeError):
    """An optimiser or EM run failed outright (not merely a convergence warning)."""


class ModelComparisonError(MemoeError, ValueError):
    """Models cannot be compared (different data, not nested, ...)."""


class HypothesisError(MemoeError, ValueError):
    """A hypothesis or contrast cannot be interpreted (unknown coefficient, wrong shape)."""


class FamilyError(MemoeError, ValueError):
    """Unknown response family, or a link the family does not support."""


class QuadratureError(MemoeError, ValueError):
    """``nAGQ`` is invalid or not available for the model's random-effects structure."""


class PersistenceError(MemoeError, ValueError):
    """A fit cannot be saved (unsupported content) or a file cannot be loaded (wrong type or version)."""


class PersistenceTypeError(PersistenceError, TypeError):
    """``memoe.persist.save`` / ``load`` got an object that is neither a path nor a binary file (or bytes)."""


class MemoeWarning(UserWarning):
    """Base class of memoe warnings."""


class ConvergenceWarning(MemoeWarning):
    """The optimiser stopped but the convergence checks (gradient, Hessian) are not satisfied."""


class SingularFitWarning(MemoeWarning):
    """Boundary (singular) fit: a random-effects covariance matrix is not of full rank."""


class RankDeficiencyWarning(MemoeWarning):
    """Aliased fixed-effects columns were dropped."""


class EmptyExpertWarning(MemoeWarning):
    """An expert of a mixture lost (almost) all of its posterior mass during EM."""


class NonIntegerResponseWarning(MemoeWarning):
    """Counts (Poisson) or numbers of successes (binomial) are not whole numbers, as R warns."""


class ArgumentError(MemoeError, ValueError):
    """A function argument has a value outside what it accepts (the message names the argument)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A function argument has the wrong type (e.g. ``reml="no"``); the message names the argument."""


class DataTypeError(DataError, ArgumentTypeError):
    """``data`` is not a data frame (a dict, list or array was given)."""


class FormulaTypeError(FormulaError, ArgumentTypeError):
    """The formula is not a string."""


class UnknownColumnError(FormulaError, DataError):
    """The formula names a column the data do not have (both a formula and a data problem)."""


class PredictorScaleWarning(MemoeWarning):
    """A predictor is on a scale (offset, units) that makes the fit numerically fragile; centre or rescale it."""


class SeparationWarning(MemoeWarning):
    """Complete or quasi-complete separation: some fixed effects diverge (R: "fitted probabilities 0 or 1")."""


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside the memoe package.

    Counted from the caller of this function (level 1 is the function that calls :func:`warnings.warn`),
    so ``warnings.warn(msg, cat, stacklevel=caller_stacklevel())`` written anywhere inside memoe reports the
    user's line, however deep the call (``fit()``, ``memoe.compare(...)``, a bootstrap refit, EM iterations).

    Returns
    -------
    int
        At least 1: the number of frames from the warning function to the first non-memoe frame.

    Examples
    --------
    >>> import warnings
    >>> from memoe.errors import MemoeWarning, caller_stacklevel
    >>> def check(x):  # inside memoe, so the warning names the caller's line
    ...     warnings.warn("x is small", MemoeWarning, stacklevel=caller_stacklevel())
    """
    # frames are recognised by module name, not file path, so symlinked or zipped installs behave the same
    frame = sys._getframe(1)  # the function that wants to warn: stacklevel 1
    level = 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != _PACKAGE and not module.startswith(_PACKAGE + "."):
            return level
        frame = frame.f_back
        level += 1
    return max(level - 1, 1)


def warn(message: str, category: type[Warning] = MemoeWarning, *, stacklevel: int | None = None) -> None:
    """``warnings.warn`` pointing at the user's line (the first frame outside memoe) unless ``stacklevel`` is given.

    Parameters
    ----------
    message : str
    category : type of Warning, default MemoeWarning
    stacklevel : int, optional
        Passed to :func:`warnings.warn` as is; default: :func:`caller_stacklevel`.

    Examples
    --------
    >>> import warnings
    >>> from memoe.errors import SingularFitWarning, warn
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("boundary (singular) fit", SingularFitWarning)
    >>> caught[0].category.__name__
    'SingularFitWarning'
    """

    if stacklevel is None:
        # counted from this function, which is the one calling warnings.warn
        stacklevel = caller_stacklevel()
    warnings.warn(message, category, stacklevel=stacklevel)


class UnknownDatasetError(ArgumentError, KeyError):
    """``memoe.datasets.load`` / ``describe`` got a name that is not a bundled data set (also a KeyError)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0]) if self.args else ""
