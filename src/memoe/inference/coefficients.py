"""Subject-specific coefficients (fixed effects + BLUPs), as lme4's ``coef.merMod`` / nlme's ``coef.lme``."""

from __future__ import annotations

import pandas as pd

from memoe.errors import MemoeError

__all__ = ["subject_coefficients"]


def subject_coefficients(fixef: pd.Series, ranef: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """{grouping factor: DataFrame levels x fixed-effect names}: every fixed effect, plus the BLUP where
    the coefficient also varies by the factor.

    Parameters
    ----------
    fixef : pandas.Series
        Fixed-effects estimates, indexed by coefficient name.
    ranef : dict of pandas.DataFrame
        BLUPs per grouping factor, levels x random-effect columns.

    Raises
    ------
    MemoeError
        A random-effect column without a fixed-effect counterpart (lme4: "unable to align random and
        fixed effects"); use ``ranef`` for those.
    """
    out: dict[str, pd.DataFrame] = {}
    names = list(fixef.index)
    for group, re in ranef.items():
        missing = [c for c in re.columns if c not in names]
        if missing:
            raise MemoeError(
                f"coef(): random-effect column(s) {missing} of grouping factor {group!r} have no fixed-effect "
                f"counterpart (fixed effects: {names}); subject-specific coefficients add the BLUP to a fixed "
                "effect, so read these from ranef instead"
            )
        frame = pd.DataFrame({n: float(fixef[n]) for n in names}, index=re.index, columns=names)
        for c in re.columns:
            frame[c] = frame[c].to_numpy() + re[c].to_numpy(dtype=float)
        out[group] = frame
    return out
