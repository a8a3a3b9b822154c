"""The numeric design of a mixture of experts: expert design, subject statistics and gating matrix.

Everything here is computed once per model; the EM iterations only touch the per-subject
statistics of :class:`SubjectStats` (never the rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic.model_spec import ModelSpec

from memoe.core.design import Design, build_design, make_grouping_factor
from memoe.core.design.contrasts import check_contrasts_argument
from memoe.core.design.fixed import evaluate_matrix, model_matrix_with_contrasts
from memoe.core.design.frame import formula_variables
from memoe.core.formula.parse import parse_formula
from memoe.core.linalg.sufficient import group_crossprod
from memoe.errors import DataError, FormulaError
from memoe.lmm.objective import PLSProblem

__all__ = ["MoEDesign", "SubjectStats", "build_moe_design", "check_response", "subject_stats"]


@dataclass(frozen=True)
class SubjectStats:
    """Per-subject sufficient statistics of a Gaussian expert.

    Attributes
    ----------
    n : numpy.ndarray, shape (N,)
        Visits per subject ``n_i``.
    XX : numpy.ndarray, shape (N, p, p)
        ``X_i' X_i``.
    ZX : numpy.ndarray, shape (N, q, p)
        ``Z_i' X_i``.
    ZZ : numpy.ndarray, shape (N, q, q)
        ``Z_i' Z_i``.
    Xy : numpy.ndarray, shape (N, p)
    Zy : numpy.ndarray, shape (N, q)
    yy : numpy.ndarray, shape (N,)
    """

    n: np.ndarray
    XX: np.ndarray
    ZX: np.ndarray
    ZZ: np.ndarray
    Xy: np.ndarray
    Zy: np.ndarray
    yy: np.ndarray

    @property
    def N(self) -> int:
        return len(self.n)

    @property
    def p(self) -> int:
        return self.XX.shape[1]

    @property
    def q(self) -> int:
        return self.ZZ.shape[1]


def subject_stats(y: np.ndarray, X: np.ndarray, Z: np.ndarray, codes: np.ndarray, N: int) -> SubjectStats:
    """Per-subject cross-products in one pass over the rows.

    Parameters
    ----------
    y : numpy.ndarray, shape (n,)
    X : numpy.ndarray, shape (n, p)
    Z : numpy.ndarray, shape (n, q)
    codes : numpy.ndarray of int, shape (n,)
        Subject index of each row.
    N : int
        Number of subjects.
    """
    p, q = X.shape[1], Z.shape[1]
    xcols = [X[:, j] for j in range(p)]
    zcols = [Z[:, j] for j in range(q)]
    XY = group_crossprod(codes, N, [*xcols, y])
    ZXY = group_crossprod(codes, N, zcols, [*xcols, y]) if q else np.zeros((N, 0, p + 1))
    ZZ = group_crossprod(codes, N, zcols) if q else np.zeros((N, 0, 0))
    return SubjectStats(
        n=np.bincount(codes, minlength=N).astype(float),
        XX=np.ascontiguousarray(XY[:, :p, :p]),
        ZX=np.ascontiguousarray(ZXY[:, :, :p]),
        ZZ=ZZ,
        Xy=np.ascontiguousarray(XY[:, :p, p]),
        Zy=np.ascontiguousarray(ZXY[:, :, p]),
        yy=np.ascontiguousarray(XY[:, p, p]),
    )


def _stats_from_pls(pls: PLSProblem) -> SubjectStats:
    """Reuse the statistics the LMM engine already computed (no second pass over the rows)."""
    p = pls.p
    A = pls.XYtXY_level
    return SubjectStats(
        n=np.asarray(pls.level_n, dtype=float),
        XX=np.ascontiguousarray(A[:, :p, :p]),
        ZX=np.ascontiguousarray(pls.ZtXY1[:, :, :p]),
        ZZ=np.ascontiguousarray(pls.ZtZ1),
        Xy=np.ascontiguousarray(A[:, :p, p]),
        Zy=np.ascontiguousarray(pls.ZtXY1[:, :, p]),
        yy=np.ascontiguousarray(A[:, p, p]),
    )


@dataclass(frozen=True)
class MoEDesign:
    """Numeric design of a mixture of (mixed-model or regression) experts.

    Attributes
    ----------
    design : Design
        The expert design (fixed effects, one random-effects block or none).
    group : str
        Name of the subject factor.
    subjects : pandas.Index
        Subject labels, shape (N,), in the order of the statistics.
    codes : numpy.ndarray of int, shape (n,)
        Subject index of each kept row.
    Z : numpy.ndarray, shape (n, q)
        Random-effects columns (q = 0 for regression experts).
    z_names : list of str
    W : numpy.ndarray, shape (N, r)
        Gating design, one row per subject (an intercept column only when there is no gating formula).
    gating_names : list of str
    gating_spec : formulaic ModelSpec or None
    gating_vars : list of str
    stats : SubjectStats
    pls : PLSProblem or None
        The LMM engine on the same rows (None for regression experts); the M-step reweights it.
    data : pandas.DataFrame
        The rows used (after removing missing values), original index.
    n_dropped : int
        Input rows removed because a used column (response, covariates, gating covariates, subject)
        was missing.
    input_index : pandas.Index or None
        Index of every input row (also those dropped for a missing subject id or gating covariate,
        which the expert formula never sees), so per-row outputs line up with the user's table.
        None means the same as the expert frame's index (files written before it was recorded).
    input_rows : numpy.ndarray of bool or None
        Which input rows reached the expert formula (subject id and gating covariates present).
    contrasts : dict
        The contrast of every factor of the expert and gating formulas (R's default or the argument).
    """

    design: Design
    group: str
    subjects: pd.Index
    codes: np.ndarray
    Z: np.ndarray
    z_names: list[str]
    W: np.ndarray
    gating_names: list[str]
    gating_spec: ModelSpec | None
    gating_vars: list[str]
    stats: SubjectStats
    pls: PLSProblem | None
    data: pd.DataFrame
    n_dropped: int = 0
    input_index: pd.Index | None = None
    input_rows: np.ndarray | None = None
    contrasts: dict[str, str] = field(default_factory=dict)

    @property
    def N(self) -> int:
        return len(self.subjects)

    @property
    def _has_gating_drops(self) -> bool:
        return self.input_rows is not None and not bool(np.all(self.input_rows))

    @property
    def row_index(self) -> pd.Index:
        """Index of every input row (per-row outputs are indexed by it)."""
        return self.input_index if self._has_gating_drops else self.design.frame.index

    @property
    def used_rows(self) -> np.ndarray:
        """Boolean mask over :attr:`row_index`: the rows used in the fit (the rows of :attr:`data`)."""
        used = np.asarray(self.design.frame.row_mask, dtype=bool)
        if not self._has_gating_drops:
            return used
        full = np.zeros(len(self.input_rows), dtype=bool)
        full[self.input_rows] = used
        return full

    def align(self, values: np.ndarray, name: str) -> pd.Series:
        """Per-row values of the used rows on every input row, NaN where a row was dropped (``na.exclude``)."""
        if not self._has_gating_drops:
            return self.design.frame.align(values, name)
        full = np.full(len(self.input_index), np.nan)
        full[self.used_rows] = values
        return pd.Series(full, index=self.input_index, name=name)

    @property
    def fixef_names(self) -> list[str]:
        return self.design.fixef_names


def _gating_rhs(gating: str | None) -> str | None:
    if gating is None:
        return None
    g = gating.strip()
    if "~" in g:
        lhs, _, g = g.partition("~")
        if lhs.strip():
            raise FormulaError(f"the gating formula {gating!r} must be one-sided, e.g. '~ w1 + w2'")
    return g.strip() or "1"


def check_constant_within(data: pd.DataFrame, codes: np.ndarray, labels: pd.Index, variables: list[str]) -> None:
    """Raise :class:`DataError` if a gating covariate varies within a subject.

    Parameters
    ----------
    data : pandas.DataFrame
        Kept rows.
    codes : numpy.ndarray of int, shape (n,)
    labels : pandas.Index
        Subject labels by code.
    variables : list of str
    """
    for v in variables:
        col = data[v]
        c = pd.Series(pd.factorize(col)[0] if not pd.api.types.is_numeric_dtype(col) else col.to_numpy())
        nuniq = c.groupby(codes).nunique().to_numpy()
        bad = np.flatnonzero(nuniq > 1)
        if bad.size:
            subj = labels[bad[0]]
            vals = ", ".join(str(v) for v in data.loc[codes == bad[0], v].unique()[:4])
            raise DataError(
                f"gating covariate {v!r} must be constant within subject, but it varies in subject {subj} "
                f"(values {vals}) and in {bad.size - 1} other subject(s); use a baseline value"
            )


def build_moe_design(
    formula: str, data: pd.DataFrame, gating: str | None, group: str | None = None, contrasts=None
) -> MoEDesign:
    """Build the expert and gating designs of a mixture of experts.

    Parameters
    ----------
    formula : str
        lme4 formula with exactly one grouping factor, e.g. ``"y ~ time + x + (time | id)"``;
        or a fixed-effects formula (``"y ~ time + x"``) with ``group`` for regression experts.
    data : pandas.DataFrame
    gating : str or None
        One-sided formula of baseline covariates, e.g. ``"~ w1 + w2"``; None for constant proportions.
    group : str, optional
        Subject column when the formula has no random-effects term.
    contrasts : dict, optional
        Factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``, for the expert and
        the gating formula alike; default R's (see :mod:`memoe.core.design.contrasts`).

    Raises
    ------
    FormulaError
        No or several grouping factors.
    DataError
        A gating covariate varies within a subject, or columns are missing.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    spec = parse_formula(formula)
    groups = sorted({t.group for t in spec.random})
    if len(groups) > 1:
        raise FormulaError(
            f"a mixture of experts needs a single grouping factor (the subject); formula {formula!r} has {groups}"
        )
    if groups and group is not None and group != groups[0]:
        raise FormulaError(f"group={group!r} differs from the formula's grouping factor {groups[0]!r}")
    if not groups and group is None:
        raise FormulaError(
            f"formula {formula!r} has no (terms | subject) part; give group='subject column' for regression experts"
        )
    group = groups[0] if groups else group
    rhs = _gating_rhs(gating)
    gvars = formula_variables(rhs, "the gating formula") if rhs is not None else []
    subject_vars = list(spec.random[0].group_factors) if spec.random else [group]
    needed = [c for c in [*gvars, *subject_vars] if c not in data.columns]
    if needed:
        raise DataError(f"unknown column(s) {needed} (gating covariates / subject); the data have {list(data.columns)}")
    keep = ~data[[*gvars, *subject_vars]].isna().any(axis=1)
    input_index = data.index
    data = data.loc[keep] if not keep.all() else data
    user = check_contrasts_argument(contrasts)
    unknown = [c for c in user if c not in data.columns]
    if unknown:
        raise DataError(f"contrasts names {unknown}, not columns of the data (columns: {list(data.columns)[:12]})")
    # one dict serves both formulas: each gets the factors it uses (a gating-only factor is not the experts')
    expert_vars = set(formula_variables(spec.fixed, "the expert formula"))
    design = build_design(
        spec, data, require_random=bool(spec.random), contrasts={c: v for c, v in user.items() if c in expert_vars}
    )
    used_contrasts = dict(design.fixed.contrasts)
    if len(design.blocks) > 1:
        raise FormulaError(f"a mixture of experts needs a single grouping factor; formula {formula!r} has several")
    frame_rows = data.loc[design.frame.row_mask] if design.frame.n_dropped else data
    if design.blocks:
        blk = design.blocks[0]
        factor, Z, z_names = blk.factor, blk.Z, list(blk.columns)
    else:
        factor = make_grouping_factor(frame_rows, (group,))
        Z, z_names = np.zeros((design.n, 0)), []
    codes, N = factor.codes, factor.nlevels
    check_constant_within(frame_rows, codes, factor.levels, gvars)
    first = np.zeros(N, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # first row of each subject
    subj_frame = frame_rows.iloc[first]
    if rhs is None:
        W, gnames, gspec = np.ones((N, 1)), ["(Intercept)"], None
    else:
        gating_user = {c: v for c, v in user.items() if c in gvars}
        W, gspec, gnames, gcontr = model_matrix_with_contrasts(rhs, subj_frame, gating_user, "the gating design")
        used_contrasts.update(gcontr)
    if np.linalg.matrix_rank(W) < W.shape[1]:
        raise DataError(f"the gating design {gating!r} is rank deficient over subjects (columns {gnames})")
    if design.blocks:
        pls = PLSProblem(
            y=design.y, X=design.X, codes=[codes], nlevels=[N], Z=[Z], theta_map=design.theta_map
        )
        stats = _stats_from_pls(pls)
    else:
        pls = None
        stats = subject_stats(design.y, design.X, Z, codes, N)
    return MoEDesign(
        design=design,
        group=factor.name,
        subjects=pd.Index(factor.levels, name=factor.name),
        codes=codes,
        Z=Z,
        z_names=z_names,
        W=W,
        gating_names=gnames,
        gating_spec=gspec,
        gating_vars=gvars,
        stats=stats,
        pls=pls,
        data=frame_rows,
        n_dropped=int((~keep).sum()) + design.frame.n_dropped,
        input_index=input_index,
        input_rows=np.asarray(keep, dtype=bool),
        contrasts=used_contrasts,
    )


def check_response(md: MoEDesign) -> None:
    """Refuse responses whose Gaussian likelihood is unbounded for every parameter value path.

    * a constant response: any expert fits it exactly and ``sigma -> 0`` sends the log-likelihood
      to ``+inf`` (a fit would report a huge, meaningless logLik);
    * a response that each subject's random effects reproduce exactly (e.g. constant within every
      subject with a random intercept): the residual variance is then not identified, ``sigma -> 0``.

    The second check is the within-subject residual sum of squares of y on Z_i, summed over
    subjects, ``sum_i (y_i'y_i - y_i'Z_i (Z_i'Z_i)^+ Z_i'y_i)``, from the subject statistics
    (batched, no loop over subjects), compared with the total sum of squares about the mean.

    Raises
    ------
    DataError
        Naming the response column.
    """
    y = md.design.y
    name = md.design.spec.response
    if y.size and np.all(y == y[0]):
        raise DataError(
            f"the response {name!r} is constant (every value is {y[0]:g}): a mixture of Gaussian experts fits it "
            "with zero residual variance and an unbounded likelihood; there is nothing to cluster"
        )
    st = md.stats
    if st.q == 0:
        return
    tss = float(np.sum((y - y.mean()) ** 2))
    within = st.yy - np.einsum("na,nab,nb->n", st.Zy, np.linalg.pinv(st.ZZ, hermitian=True), st.Zy)
    # relative to the total SS: round-off in yy - Zy'(ZZ)^+ Zy is about eps * yy per subject
    if float(within.sum()) <= 1e-10 * max(tss, float(st.yy.sum())):
        raise DataError(
            f"the response {name!r} is reproduced exactly by each subject's random effects "
            f"({', '.join(md.z_names)} per {md.group!r}; e.g. constant within every subject): the residual "
            "variance is zero and the likelihood unbounded; drop random effects or check the response"
        )


def gating_matrix(mdesign: MoEDesign, subj_frame: pd.DataFrame) -> np.ndarray:
    """Gating design on new subject-level data, shape (N_new, r)."""
    if mdesign.gating_spec is None:
        return np.ones((len(subj_frame), 1))
    return evaluate_matrix(mdesign.gating_spec, subj_frame)
