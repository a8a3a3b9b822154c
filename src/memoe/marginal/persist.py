"""Save and rebuild a :class:`~memoe.marginal.result.MarginalResult` (of :func:`memoe.gls` / :func:`memoe.lme`).

The file keeps the formula, the residual structures as plain JSON descriptions (class name and
fields: ``{"class": "AR1", "fields": {"group": null, "visit": null}}``), the used columns of the
kept rows, the optimised parameter vector [theta, correlation u, variance u] and the fit record.
Loading rebuilds the structures and the model and solves the profiled problem at the saved
parameters exactly as :meth:`memoe.marginal.model.GLS.fit` does after optimising (no optimisation);
the saved (RE)ML log-likelihood is checked.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memoe.core.design.contrasts import check_saved_contrasts
from memoe.core.linalg.threads import blas_threads
from memoe.core.persist.archive import PersistenceError
from memoe.core.persist.common import (
    check_equal,
    check_loglik,
    encode_model_frame,
    plain,
    restore_model_frame,
    saved_columns,
)
from memoe.core.persist.formula_check import check_column, check_formula
from memoe.core.persist.frames import decode_frame, encode_frame
from memoe.core.persist.registry import register_codec
from memoe.errors import MemoeError
from memoe.marginal.arma import ARMA
from memoe.marginal.correlation import AR1, CAR1, CompSymm, CorStruct, Symm
from memoe.marginal.model import GLS, LME
from memoe.marginal.result import MarginalResult
from memoe.marginal.spatial import Exp, Gaus, Lin, Ratio, Spher
from memoe.marginal.varcomb import VarComb
from memoe.marginal.varfunc import VarConstPower, VarExp, VarFixed, VarFunc, VarPower
from memoe.marginal.variance import VarIdent

__all__ = [
    "MODEL_CLASSES",
    "check_marginal",
    "decode_marginal",
    "decode_structure",
    "encode_marginal",
    "encode_structure",
]

MODEL_CLASSES = {"GLS": GLS, "LME": LME}
# every structure a file may name: plain frozen dataclasses whose fields are strings, None, booleans,
# numbers, lists of column names (several spatial coordinates) or {name: number} dicts (fixed
# variance parameters); VarComb holds the descriptions of its functions
STRUCTURES = {
    c.__name__: c
    for c in (
        AR1, CAR1, Exp, Symm, CompSymm, ARMA, Gaus, Spher, Lin, Ratio,
        VarIdent, VarPower, VarExp, VarConstPower, VarFixed, VarComb,
    )
}
# fields that name data columns (each must be a saved column); other string values (e.g. the strata
# keys of ``fixed`` or a metric) are not columns
COLUMN_FIELDS = ("group", "time", "visit", "by", "form")
_PLAIN = str | bool | int | float


def _plain_value(v, name: str, obj, what: str):
    if v is None or isinstance(v, _PLAIN):
        return v
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return list(v)
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if isinstance(x, dict) and all(isinstance(y, int | float) for y in x.values()):
                out[str(k)] = {str(a): float(b) for a, b in x.items()}
            elif isinstance(x, int | float) and not isinstance(x, bool):
                out[str(k)] = float(x)
            else:
                break
        else:
            return out
    raise PersistenceError(f"the {what} {obj!r} has a field {name}={v!r} that cannot be saved as JSON")


def encode_structure(obj, what: str) -> dict | None:
    """Plain JSON description of a correlation structure or variance function (None stays None)."""
    if obj is None:
        return None
    cls = type(obj)
    if STRUCTURES.get(cls.__name__) is not cls:
        raise PersistenceError(
            f"the {what} {obj!r} is not one of memoe's structures {sorted(STRUCTURES)} and cannot be saved"
        )
    if cls is VarComb:
        return {"class": "VarComb", "fields": {"functions": [encode_structure(f, what) for f in obj.functions]}}
    fields = {f.name: _plain_value(getattr(obj, f.name), f.name, obj, what) for f in dataclasses.fields(obj)}
    return {"class": cls.__name__, "fields": fields}


def decode_structure(spec: dict | None, what: str):
    """The structure described by :func:`encode_structure` (only memoe's own classes are accepted)."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("fields"), dict):
        raise PersistenceError(f"the saved {what} is not a record with a class and fields: {repr(spec)[:80]}")
    cls = STRUCTURES.get(spec.get("class"))
    if cls is None:
        raise PersistenceError(f"unknown {what} {spec.get('class')!r} (this memoe knows {sorted(STRUCTURES)})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec["fields"]) - known)
    if unknown:
        raise PersistenceError(f"the saved {what} {cls.__name__} has fields {unknown} this memoe does not know")
    if cls is VarComb:
        parts = spec["fields"].get("functions")
        if not isinstance(parts, list):
            raise PersistenceError(f"the saved {what} VarComb has no list of functions")
        return VarComb(*[decode_structure(p, what) for p in parts])
    try:
        return cls(**spec["fields"])
    except MemoeError as exc:
        raise PersistenceError(f"the saved {what} {cls.__name__} is invalid: {exc}") from None


def _check_structure_fields(spec, columns, what: str) -> None:
    """Column-naming fields must be saved columns; every other field a plain value (recursing into VarComb)."""
    fields = spec.get("fields") if isinstance(spec, dict) else None
    if not isinstance(fields, dict):
        raise PersistenceError(f"the saved {what} is not a record with fields: {repr(spec)[:80]}")
    if spec.get("class") == "VarComb":
        parts = fields.get("functions")
        if not isinstance(parts, list):
            raise PersistenceError(f"the saved {what} VarComb has no list of functions")
        for p in parts:
            _check_structure_fields(p, columns, what)
        return
    for field, value in fields.items():
        if field == "group" and isinstance(value, str) and ":" in value:
            # a nested lme's innermost group is an interaction of saved columns (``Dog:Side``)
            for part in value.split(":"):
                check_column(part, columns, what=f"a factor of the field 'group' of the saved {what}")
        elif field in COLUMN_FIELDS and isinstance(value, str):
            check_column(value, columns, what=f"the field {field!r} of the saved {what}")
        elif field in COLUMN_FIELDS and isinstance(value, list):
            for v in value:
                if not isinstance(v, str):
                    raise PersistenceError(f"the field {field!r} of the saved {what} holds a {type(v).__name__}")
                check_column(v, columns, what=f"the field {field!r} of the saved {what}")
        elif isinstance(value, dict):
            for v in value.values():
                vals = v.values() if isinstance(v, dict) else [v]
                if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vals):
                    raise PersistenceError(f"the field {field!r} of the saved {what} holds a non-number")
        elif value is not None and not isinstance(value, _PLAIN):
            raise PersistenceError(f"the field {field!r} of the saved {what} is a {type(value).__name__}")


def _fitted_covariate(var) -> np.ndarray | None:
    """The fitted-value variance covariate at the optimum (None when the function has none)."""
    if var is None or not getattr(var, "needs_fitted", False):
        return None
    if hasattr(var, "parts"):
        return next(p.covariate for p in var.parts if getattr(p, "needs_fitted", False))
    return var.covariate


def encode_marginal(fit: MarginalResult, arrays: dict[str, np.ndarray]) -> dict:
    """The ``model`` and ``fit`` parts of ``meta.json`` for a gls / lme fit; arrays go to ``arrays``."""
    model, design = fit.model, fit.design
    arrays["fit.params"] = np.asarray(fit.params_unconstrained, dtype=float)
    cov = _fitted_covariate(model.problem.var)
    if cov is not None:
        # the fixed point of nlme's alternation: loading must not iterate again
        arrays["fit.var_covariate"] = np.asarray(cov, dtype=float)
    return {
        "model": {
            "class": type(model).__name__,
            "formula": model.formula,
            "correlation": encode_structure(model.correlation, "correlation structure"),
            "weights": encode_structure(model.weights, "variance function"),
            "data_name": design.frame.data.attrs.get("name"),
            "data": encode_frame(design.frame.data, "data", arrays, "the model frame"),
            "frame": encode_model_frame(design, "frame", arrays),
            "fixef_names": list(design.fixef_names),
            "contrasts": dict(design.fixed.contrasts),
            "theta_names": list(design.theta_map.names),
            "n_params": int(model.problem.size),
        },
        "fit": {
            "reml": fit.reml,
            "feval": fit.feval,
            "seconds": fit.seconds,
            "messages": list(fit.messages),
            "loglik": float(fit.loglik),
        },
        # for a human reading meta.json; loading recomputes them from the parameters
        "estimates": {
            "fixef": plain(fit.fixef.to_dict()),
            "sigma": float(fit.sigma),
            "theta": plain(fit.theta.to_dict()),
            "correlation": plain(fit.cor_params.to_dict()),
            "variance": plain(fit.var_params.to_dict()),
            "nobs": fit.nobs,
        },
    }


def check_marginal(meta: dict) -> None:
    """Refuse a file whose formula or structure fields are outside the allow-list (before evaluating).

    A structure's string fields (``group``, ``time``, ``visit``, ``by``) name data columns: each must
    be a saved column (a ``group`` may be an interaction ``a:b`` of saved columns, the innermost
    level of a nested ``lme``); its other fields must be booleans or numbers.
    """
    m = meta["model"]
    columns = saved_columns(m)
    check_formula(m.get("formula"), columns, what=f"the saved {m['class']} formula")
    check_saved_contrasts(m.get("contrasts"), columns, what=f"the saved {m['class']} contrasts")
    for key, what in (("correlation", "correlation structure"), ("weights", "variance function")):
        spec = m.get(key)
        if spec is not None:
            _check_structure_fields(spec, columns, what)


def decode_marginal(meta: dict, arrays: dict[str, np.ndarray]) -> MarginalResult:
    """Rebuild the structures, the model and the result at the saved parameters."""
    m, f = meta["model"], meta["fit"]
    cls = MODEL_CLASSES[m["class"]]
    data = decode_frame(m["data"], "data", arrays)
    if m.get("data_name") is not None:
        data.attrs["name"] = m["data_name"]
    correlation = decode_structure(m["correlation"], "correlation structure")
    if correlation is not None and not isinstance(correlation, CorStruct):
        raise PersistenceError(f"the saved correlation structure {correlation!r} is not a correlation structure")
    weights = decode_structure(m["weights"], "variance function")
    if weights is not None and not isinstance(weights, VarIdent | VarFunc | VarComb):
        raise PersistenceError(f"the saved variance function {weights!r} is not a variance function")
    model = cls(m["formula"], data, correlation=correlation, weights=weights, contrasts=m.get("contrasts"))
    model.design = restore_model_frame(model.design, m["frame"], "frame", arrays)
    check_equal("fixed-effects names", m["fixef_names"], model.design.fixef_names)
    check_equal("theta names", m["theta_names"], model.design.theta_map.names)
    params = arrays["fit.params"]
    P = model.problem
    if P.var is not None and P.var.needs_fitted:
        cov = arrays.get("fit.var_covariate")
        if cov is None or np.shape(cov) != (model.design.n,):
            raise PersistenceError(
                "the saved fit uses a fitted-value variance covariate but the file has no covariate of the right length"
            )
        P.var = P.var.with_fitted(np.asarray(cov, dtype=float))
    if params.shape != (model.problem.size,):
        raise PersistenceError(
            f"the saved parameter vector has shape {params.shape}, the rebuilt model {model.problem.size} parameters"
        )
    # the same BLAS setting as GLS.fit when it solves at the optimum
    with blas_threads(1):
        try:
            solution = model.problem.solve(params, f["reml"])
        except np.linalg.LinAlgError as exc:
            raise PersistenceError(f"the saved parameters do not give a valid fit: {exc}") from None
    fit = MarginalResult(
        model=model, solution=solution, reml=f["reml"], feval=f["feval"], seconds=f["seconds"],
        messages=f["messages"],
    )
    check_loglik(f["loglik"], fit.loglik)
    return fit


register_codec(
    "MarginalResult", result_type=MarginalResult, model_types=MODEL_CLASSES, encode=encode_marginal,
    decode=decode_marginal, check=check_marginal, description="MarginalResult (of memoe.gls / memoe.lme)",
)
