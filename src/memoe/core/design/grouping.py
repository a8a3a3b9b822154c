"""Grouping factors: integer codes and level labels in R's order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["GroupingFactor", "make_grouping_factor"]


@dataclass(frozen=True)
class GroupingFactor:
    """A grouping factor with its used levels.

    Attributes
    ----------
    name : str
        lme4's name (``"Subject"``, ``"cask:batch"``).
    codes : numpy.ndarray of int64, shape (n,)
        Level index of each row.
    levels : pandas.Index
        Level labels in R's order (categories order, else sorted; interactions ``a:b`` with the
        first factor varying slowest), unused levels dropped.
    """

    name: str
    codes: np.ndarray
    levels: pd.Index

    @property
    def nlevels(self) -> int:
        return len(self.levels)


def _codes_of(col: pd.Series, memo: dict | None = None) -> tuple[np.ndarray, pd.Index]:
    """Integer codes (int64) and the used levels in R's order (categories order, else sorted)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        # remove_unused_categories without pandas' machinery: keep the used categories in their order
        codes = np.asarray(col.array.codes, dtype=np.int64)
        cats = col.dtype.categories
        used = np.bincount(codes, minlength=len(cats)) > 0 if len(codes) else np.zeros(len(cats), dtype=bool)
        if used.all():
            return codes, cats  # an immutable Index, shared with the dtype
        remap = np.cumsum(used, dtype=np.int64) - 1
        return remap[codes], pd.Index(cats[used])
    values = col.to_numpy()
    if values.dtype.kind in "iu" and len(values):
        # integer ids (the usual subject column): a counting pass replaces factorize's hashing and
        # sort, with the same sorted levels; only when the id range is not much wider than n
        lo, hi = int(values.min()), int(values.max())
        if hi - lo <= 4 * len(values) + 1024:
            shifted = (values - lo if lo else values).astype(np.intp, copy=False)
            present = np.bincount(shifted, minlength=hi - lo + 1) > 0
            remap = np.cumsum(present, dtype=np.int64) - 1
            # int64 labels, as pandas infers them from the level values
            return remap[shifted], pd.Index(np.flatnonzero(present).astype(np.int64) + lo)
    if memo is not None:
        # a text column the design's fixed or random part already factorised (same sorted levels)
        from memoe.core.design.native import text_codes

        found = text_codes(col, memo)
        if found is not None and (len(found[0]) == 0 or found[0].min() >= 0):
            return found[0].astype(np.int64), pd.Index(found[1], dtype=col.dtype)
    codes, uniques = pd.factorize(col, sort=True)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


def _label_strings(labels: pd.Index) -> np.ndarray:
    """The labels as an object array of ``str`` (text labels without a Python loop)."""
    if isinstance(labels.dtype, pd.StringDtype) or (labels.dtype == object and pd.api.types.is_string_dtype(labels)):
        return labels.to_numpy(dtype=object)
    return np.asarray(list(map(str, labels)), dtype=object)


def make_grouping_factor(data: pd.DataFrame, factors: tuple[str, ...], memo: dict | None = None) -> GroupingFactor:
    """Codes and labels of the interaction of ``factors`` (a single column when one name).

    ``memo`` is a design's column cache (text columns factorised once per design).
    """
    from memoe.core.design.native import column

    codes, labels = _codes_of(column(data, factors[0], memo), memo)
    if len(factors) == 1:
        return GroupingFactor(name=factors[0], codes=codes, levels=labels)
    label_parts = [_label_strings(labels)]
    combined = codes
    sizes = [len(labels)]
    for name in factors[1:]:
        c, lab = _codes_of(column(data, name, memo), memo)
        combined = combined * len(lab) + c
        sizes.append(len(lab))
        label_parts.append(_label_strings(lab))
    total = int(np.prod(sizes, dtype=np.float64))
    if total <= 4 * len(combined) + 1024:
        # few level combinations (nested designs): a counting pass instead of unique's sort, same order
        present = np.bincount(combined, minlength=total) > 0
        used = np.flatnonzero(present)
        inverse = (np.cumsum(present, dtype=np.int64) - 1)[combined]
    else:
        used, inverse = np.unique(combined, return_inverse=True)
    # decode the used combined codes into per-factor indices for labels
    parts = []
    rem = used.copy()
    for size in reversed(sizes):
        parts.append(rem % size)
        rem = rem // size
    parts.reverse()
    # object-array concatenation: one C loop per factor instead of a join per used level
    labels_out = label_parts[0][parts[0]]
    for k in range(1, len(factors)):
        labels_out = labels_out + ":" + label_parts[k][parts[k]]
    return GroupingFactor(name=":".join(factors), codes=inverse.astype(np.int64), levels=pd.Index(labels_out))
