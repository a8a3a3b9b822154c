"""Classification metrics of a mixture fit against a known truth (simulation studies).

A mixture's expert labels are arbitrary: expert 2 of a fit may be class 1 of the truth. Every metric
here first matches the estimated labels to the true classes by the assignment that maximises the
number of subjects on which they agree (the Hungarian algorithm on the contingency table,
:func:`scipy.optimize.linear_sum_assignment`), except :func:`adjusted_rand`, which is invariant to
relabelling.

Each function takes either a fit (a :class:`~memoe.moe.result.MEMoEResult`: its MAP classes
``fit.classify()``, one per subject) or an array of labels, and the true labels: one per subject, or
one per row of the fit's data (constant within subject; e.g. the ``true_class`` column of
:func:`memoe.simulate.memoe_data`), or a Series indexed by subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from memoe.errors import ArgumentError, ArgumentTypeError

__all__ = ["LabelMatch", "accuracy", "adjusted_rand", "confusion", "match_labels"]


@dataclass(frozen=True)
class LabelMatch:
    """The matching of estimated labels to true classes.

    Attributes
    ----------
    mapping : dict
        Estimated label -> matched true label (estimated labels left over when there are more of them
        than true classes map to None: their subjects count as misclassified).
    labels : pandas.Series
        The estimated labels translated to the true ones (None / NaN where unmatched), one per subject.
    truth : pandas.Series
        The true labels, aligned with ``labels``.
    accuracy : float
        Share of subjects whose translated label equals the true one.
    order : numpy.ndarray of int or None
        For a fit whose experts are 1..K and a truth labelled 1..K: ``order[j]`` is the 0-based expert
        matched to true class ``j + 1``, so ``fit.estimates.permute(order)`` lists the experts in the
        truth's order. None when the labels are not both 1..K with the same K.

    Examples
    --------
    >>> from memoe.metrics import match_labels
    >>> m = match_labels([2, 2, 1, 1, 1], [1, 1, 2, 2, 1])
    >>> type(m).__name__, m.accuracy
    ('LabelMatch', 0.8)
    >>> m.labels.tolist()
    [1, 1, 2, 2, 2]
    """

    mapping: dict
    labels: pd.Series
    truth: pd.Series
    accuracy: float
    order: np.ndarray | None

    def __repr__(self) -> str:
        pairs = ", ".join(f"{k!r} -> {v!r}" for k, v in self.mapping.items())
        return f"LabelMatch({pairs}; accuracy {self.accuracy:.4f} on {len(self.labels)} subjects)"


def _is_fit(obj) -> bool:
    return hasattr(obj, "classify") and hasattr(obj, "posterior")


def _as_labels(obj, name: str) -> pd.Series:
    """Labels as a Series (a fit's MAP classes indexed by subject; arrays get a 0..n-1 index)."""
    if _is_fit(obj):
        return obj.classify()
    if isinstance(obj, pd.Series):
        s = obj
    elif isinstance(obj, pd.DataFrame):
        raise ArgumentTypeError(f"{name} must be a fit or one column of labels, got a DataFrame")
    elif isinstance(obj, str | bytes) or np.ndim(obj) != 1:
        raise ArgumentTypeError(
            f"{name} must be a mixture fit (MEMoEResult) or a one-dimensional array of labels, got "
            f"{type(obj).__name__}" + (f" with {np.ndim(obj)} dimensions" if not isinstance(obj, str | bytes) else "")
        )
    else:
        s = pd.Series(np.asarray(obj))
    if s.isna().any():
        raise ArgumentError(f"{name} has {int(s.isna().sum())} missing labels; every subject needs a label")
    if len(s) == 0:
        raise ArgumentError(f"{name} is empty")
    return s


def _per_subject(fit, truth: pd.Series) -> pd.Series:
    """A per-row truth reduced to one label per subject of the fit (must be constant within subject)."""
    md = fit.model.mdesign
    n_rows, n_used = len(md.row_index), md.design.n
    if len(truth) == n_rows and n_rows != n_used:
        truth = truth[np.asarray(md.used_rows)]  # the input rows: keep those the fit used
    codes = np.asarray(md.codes)
    vals = truth.to_numpy()
    first = pd.Series(vals).groupby(codes).first()
    nunique = pd.Series(vals).groupby(codes).nunique()
    if (nunique > 1).any():
        bad = md.subjects[np.flatnonzero(nunique.to_numpy() > 1)[:3]].tolist()
        raise ArgumentError(
            f"truth varies within subject (subjects {bad}); give one true class per subject or a per-row "
            "column constant within subject"
        )
    return pd.Series(first.to_numpy(), index=md.subjects)


def _pair(est, truth) -> tuple[pd.Series, pd.Series]:
    """Estimated and true labels aligned subject by subject."""
    e = _as_labels(est, "fit_or_labels")
    t = _as_labels(truth, "truth")
    if _is_fit(est):
        n_subj = len(e)
        if isinstance(truth, pd.Series) and len(t) == n_subj and t.index.isin(e.index).all():
            return e, t.reindex(e.index)
        if len(t) == n_subj:
            return e, pd.Series(t.to_numpy(), index=e.index)
        md = est.model.mdesign
        if len(t) in (md.design.n, len(md.row_index)):
            return e, _per_subject(est, t)
        raise ArgumentError(
            f"truth has {len(t)} labels; the fit has {n_subj} subjects and {md.design.n} rows: give one true "
            "class per subject (in the order of fit.classify()) or one per row of the fit's data"
        )
    if len(e) != len(t):
        raise ArgumentError(f"fit_or_labels and truth have different lengths ({len(e)} and {len(t)})")
    return pd.Series(e.to_numpy(), index=t.index), t


def _table(e: pd.Series, t: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table (estimated x true) with the sorted distinct labels of each."""
    e_lev, e_code = np.unique(e.to_numpy(), return_inverse=True)
    t_lev, t_code = np.unique(t.to_numpy(), return_inverse=True)
    table = np.zeros((len(e_lev), len(t_lev)))
    np.add.at(table, (e_code, t_code), 1.0)
    return table, e_lev, t_lev


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def match_labels(fit_or_labels, truth) -> LabelMatch:
    """Match estimated labels to the true classes so that the most subjects agree (Hungarian algorithm).

    Parameters
    ----------
    fit_or_labels : MEMoEResult or array-like
        A mixture fit (its MAP classes) or estimated labels, one per subject.
    truth : array-like or pandas.Series
        True classes: one per subject (a Series indexed by subject is aligned by label), or one per row
        of the fit's data, constant within subject.

    Returns
    -------
    LabelMatch
        ``mapping`` (estimated -> true), translated ``labels``, ``accuracy`` and, for 1..K labels,
        the expert ``order`` that lists the fit's experts in the truth's order.

    Raises
    ------
    ArgumentError, ArgumentTypeError
        Labels of different lengths, missing labels, or a per-row truth that varies within a subject.

    Examples
    --------
    >>> from memoe.metrics import match_labels
    >>> m = match_labels([2, 2, 1, 1, 1], [1, 1, 2, 2, 1])
    >>> m.mapping, m.accuracy
    ({1: 2, 2: 1}, 0.8)

    Notes
    -----
    With C the contingency table (estimated x true), the assignment maximises the trace of the
    matched sub-table (:func:`scipy.optimize.linear_sum_assignment` on -C); tables need not be square.
    This is the label matching of the mixture literature (e.g. ``flexmix``'s ``compareModels``
    workflows, ``mclust::classError``); R has no single function for it.
    """
    e, t = _pair(fit_or_labels, truth)
    table, e_lev, t_lev = _table(e, t)
    k_fit = fit_or_labels.k if _is_fit(fit_or_labels) else None
    full = k_fit is not None and _numeric(t_lev) and set(np.asarray(t_lev, dtype=float)) <= set(range(1, k_fit + 1))
    if full:
        # a fit against a truth labelled 1..K: match on the whole K x K table, experts or classes that got no
        # subject included, so that every expert has a place in ``order``
        big = np.zeros((k_fit, k_fit))
        big[np.ix_(np.asarray(e_lev, dtype=int) - 1, np.asarray(t_lev, dtype=float).astype(int) - 1)] = table
        table, e_lev, t_lev = big, np.arange(1, k_fit + 1), np.arange(1, k_fit + 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = {_scalar(e_lev[r]): _scalar(t_lev[c]) for r, c in zip(rows, cols, strict=True)}
    for lev in e_lev:
        mapping.setdefault(_scalar(lev), None)
    mapping = dict(sorted(mapping.items(), key=lambda kv: str(kv[0])))
    labels = e.map(mapping)
    acc = float(table[rows, cols].sum() / len(e))
    order = None
    if full:
        order = np.empty(k_fit, dtype=int)
        order[cols] = rows  # true class cols[i] + 1 is expert rows[i] (0-based)
    return LabelMatch(mapping=mapping, labels=labels, truth=t, accuracy=acc, order=order)


def _numeric(levels: np.ndarray) -> bool:
    try:
        vals = np.asarray(levels, dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(np.all(vals == np.round(vals)))


def accuracy(fit_or_labels, truth) -> float:
    """Share of subjects classified into their true class after the best matching of labels.

    Parameters
    ----------
    fit_or_labels : MEMoEResult or array-like
        A mixture fit (its MAP classes) or estimated labels, one per subject.
    truth : array-like or pandas.Series
        True classes (see :func:`match_labels`).

    Returns
    -------
    float
        In [0, 1]; 1 when the two partitions are the same up to relabelling.

    Examples
    --------
    >>> from memoe.metrics import accuracy
    >>> accuracy([3, 3, 1, 1], ["a", "a", "b", "a"])
    0.75

    Notes
    -----
    ``mclust::classError(est, truth)`` returns ``1 - accuracy`` (its matching is greedy; this one is
    optimal).
    """
    return match_labels(fit_or_labels, truth).accuracy


def adjusted_rand(a, b) -> float:
    """Adjusted Rand index of two partitions (Hubert & Arabie 1985).

    Parameters
    ----------
    a, b : MEMoEResult or array-like
        Two labelings of the same subjects (a fit stands for its MAP classes; a per-row truth is reduced
        to subjects as in :func:`match_labels`).

    Returns
    -------
    float
        1 for identical partitions (up to relabelling), about 0 for independent ones (can be negative).
        1 when both partitions put everything in one class or every subject in its own class.

    Examples
    --------
    >>> from memoe.metrics import adjusted_rand
    >>> round(adjusted_rand([1, 1, 2, 2], [1, 1, 2, 3]), 6)
    0.571429

    Notes
    -----
    With n_ij the contingency table, a_i and b_j its margins and ``C(x) = x (x - 1) / 2``:
    ``ARI = (sum C(n_ij) - E) / ((sum C(a_i) + sum C(b_j)) / 2 - E)``, ``E = sum C(a_i) sum C(b_j) / C(n)``.
    Replicates ``mclust::adjustedRandIndex`` and scikit-learn's ``adjusted_rand_score``.
    """
    e, t = _pair(a, b)
    table, _, _ = _table(e, t)
    n = float(table.sum())

    def c2(x: np.ndarray) -> float:
        return float((x * (x - 1.0) / 2.0).sum())

    s_ij, s_a, s_b = c2(table), c2(table.sum(axis=1)), c2(table.sum(axis=0))
    expected = s_a * s_b / (n * (n - 1.0) / 2.0) if n > 1 else 0.0
    denom = 0.5 * (s_a + s_b) - expected
    # denom = 0 only when both partitions are trivial in the same way (one class, or all singletons)
    return float((s_ij - expected) / denom) if denom != 0 else 1.0


def confusion(fit_or_labels, truth, matched: bool = True) -> pd.DataFrame:
    """Cross-table of true classes (rows) against estimated ones (columns).

    Parameters
    ----------
    fit_or_labels : MEMoEResult or array-like
        A mixture fit (its MAP classes) or estimated labels, one per subject.
    truth : array-like or pandas.Series
        True classes (see :func:`match_labels`).
    matched : bool
        Name each estimated class by its matched true class (``"expert 2 (= 1)"``) and order the columns
        so that the diagonal holds the correctly classified subjects; False: estimated labels as given.

    Returns
    -------
    pandas.DataFrame
        Counts of subjects, rows ``true`` classes, columns ``estimated`` classes.

    Examples
    --------
    >>> from memoe.metrics import confusion
    >>> confusion([2, 2, 1, 1], [1, 1, 2, 1]).to_numpy().tolist()
    [[2, 1], [0, 1]]

    Notes
    -----
    R: ``table(truth, estimated)`` with the columns permuted by the matching.
    """
    e, t = _pair(fit_or_labels, truth)
    table, e_lev, t_lev = _table(e, t)
    out = pd.DataFrame(table.T.astype(int), index=pd.Index([_scalar(v) for v in t_lev], name="true"),
                       columns=[_scalar(v) for v in e_lev])
    if matched:
        m = match_labels(fit_or_labels, truth).mapping
        rank = {lev: i for i, lev in enumerate(out.index)}
        cols = sorted(out.columns, key=lambda c: (m.get(c) is None, rank.get(m.get(c), 0), str(c)))
        out = out[cols]
        out.columns = [f"{c} (= {m[c]})" if m.get(c) is not None else f"{c} (unmatched)" for c in cols]
    out.columns.name = "estimated"
    return out
