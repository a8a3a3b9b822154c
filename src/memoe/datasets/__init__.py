"""Bundled example data sets (copies of the R reference data in ``../shared/reference``).

``memoe.datasets.load("sleepstudy")`` returns a DataFrame whose factor columns are pandas
Categoricals with R's level order, so coefficient names and reference levels match R.
``memoe.datasets.load("pbcseq")`` is real longitudinal data for the MEMoE application (R's
``survival::pbcseq``; provenance in ``describe("pbcseq")["source"]``).
"""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd

from memoe.errors import ArgumentTypeError, UnknownDatasetError

__all__ = ["describe", "load", "names"]

_FACTORS = json.loads((resources.files(__package__) / "factors.json").read_text())


def names() -> list[str]:
    """Names of the bundled data sets.

    Returns
    -------
    list of str
        Sorted names, each accepted by :func:`load`.

    Examples
    --------
    >>> import memoe
    >>> "sleepstudy" in memoe.datasets.names()
    True
    """
    return sorted(_FACTORS)


def describe(name: str) -> dict:
    """Source, description and factor levels of a bundled data set.

    Parameters
    ----------
    name : str
        One of :func:`names`.

    Returns
    -------
    dict
        ``file`` (the CSV inside the package), ``source`` (the R object it copies), ``nrow`` and
        ``factors`` (column -> levels in R's order).

    Examples
    --------
    >>> import memoe
    >>> memoe.datasets.describe("sleepstudy")["source"]
    'lme4::sleepstudy'
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"name must be a str (one of {names()}), got {type(name).__name__}")
    try:
        return _FACTORS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown data set {name!r}; available: {names()}") from None


def load(name: str) -> pd.DataFrame:
    """Load a bundled data set.

    Parameters
    ----------
    name : str
        One of :func:`names` (``sleepstudy``, ``Dyestuff``, ``Dyestuff2``, ``Penicillin``, ``Pastes``,
        ``Orthodont``, ``Ovary``, ``BodyWeight``, ``cbpp``, ``grouseticks``, ``memoe_sim2``, ``Pixel``, ``Oats``,
        ``Wheat2``, ``glmm_gamma_sim``, ``glmm_nb_sim``, ``pbcseq``; see ``names()``).

    Returns
    -------
    pandas.DataFrame
        Factor columns as Categoricals with R's level order; ``df.attrs["name"]`` holds the name.
        ``pbcseq`` (Mayo Clinic primary biliary cirrhosis, 312 patients, 1,945 visits): ``id``, ``years``
        since entry, ``bili`` / ``logbili`` serum bilirubin (mg/dl) and its log, ``albumin``, ``protime``,
        ``platelet`` and ``stage`` (NaN where missing), baseline ``age``, ``sex`` (m, f), ``trt``
        (placebo, D-penicillamine), ``futime_years`` and ``status`` (censored, transplant, dead).

    Examples
    --------
    >>> import memoe
    >>> pbc = memoe.datasets.load("pbcseq")
    >>> pbc.shape, pbc["id"].nunique()
    ((1945, 13), 312)

    Replicates R's ``data(name)`` for the reference packages (lme4, nlme, survival).
    """

    meta = describe(name)
    path = resources.files(__package__) / "data" / meta["file"]
    factors = meta.get("factors", {})
    with resources.as_file(path) as p:
        df = pd.read_csv(p, dtype={f: str for f in factors})
    for col, levels in factors.items():
        df[col] = pd.Categorical(df[col], categories=[str(v) for v in levels])
    df.attrs["name"] = name
    return df
