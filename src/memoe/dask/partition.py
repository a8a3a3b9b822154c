"""Each subject in one partition: check the partitions' id ranges, shuffle once when they overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["align_by_subject", "partitions_aligned"]


def _id_range(pdf: pd.DataFrame, group: str) -> pd.DataFrame:
    g = pdf[group].dropna()
    if len(g) == 0:
        return pd.DataFrame({"lo": [None], "hi": [None], "n": [0]}, dtype=object)
    return pd.DataFrame({"lo": [g.min()], "hi": [g.max()], "n": [len(g)]}, dtype=object)


def partitions_aligned(ddf, group: str) -> bool:
    """Whether no subject spans two partitions, from each partition's min and max id (one tiny pass).

    Non-empty partitions whose ``[min, max]`` id intervals do not overlap hold disjoint subjects.
    The check is sufficient, not necessary: interleaved but disjoint ids are shuffled anyway (harmless).
    Ids that cannot be ordered (mixed types) count as not aligned.
    """
    meta = pd.DataFrame({"lo": pd.Series(dtype=object), "hi": pd.Series(dtype=object), "n": pd.Series(dtype=object)})
    ranges = ddf.map_partitions(_id_range, group, meta=meta).compute()
    ranges = ranges[ranges["n"].astype(int) > 0]
    if len(ranges) <= 1:
        return True
    try:
        ranges = ranges.sort_values("lo", kind="stable")
        lo, hi = ranges["lo"].to_numpy(), ranges["hi"].to_numpy()
        return bool(np.all(lo[1:] > hi[:-1]))
    except TypeError:
        return False


def align_by_subject(ddf, group: str):
    """``ddf`` itself when aligned, else one hash shuffle on ``group`` (same number of partitions).

    Returns
    -------
    ddf : dask.dataframe.DataFrame
    shuffled : bool
    """
    if partitions_aligned(ddf, group):
        return ddf, False
    return ddf.shuffle(on=group, npartitions=ddf.npartitions), True
