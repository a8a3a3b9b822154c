"""Save and rebuild a :class:`~memoe.moe.result.MEMoEResult` (of :class:`MEMoE` or :class:`MoE`).

The file keeps the formulas and options, the used columns of the kept rows, the parameters in
canonical expert order and the multi-start record. Loading rebuilds the model, runs the final E-step
at the saved parameters (as :meth:`memoe.moe.model.MEMoE.fit` does after choosing the best run) and
constructs the result from it and the saved record; no EM iteration is run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from memoe.core.design.contrasts import check_saved_contrasts
from memoe.core.persist.archive import PersistenceError
from memoe.core.persist.common import (
    check_columns,
    check_equal,
    check_loglik,
    decode_dataclass,
    encode_dataclass,
    encode_model_frame,
    plain,
    restore_model_frame,
    saved_columns,
)
from memoe.core.persist.formula_check import check_formula
from memoe.core.persist.frames import decode_frame, decode_index, encode_frame, encode_index
from memoe.core.persist.registry import register_codec
from memoe.glmm.families import get_family
from memoe.marginal.correlation import CorStruct
from memoe.marginal.persist import _check_structure_fields, decode_structure, encode_structure
from memoe.marginal.varcomb import VarComb
from memoe.marginal.varfunc import VarFunc
from memoe.marginal.variance import VarIdent
from memoe.moe.em import EMRun
from memoe.moe.experts import MStepControl
from memoe.moe.laplace import check_nagq
from memoe.moe.model import MEMoE, MoE
from memoe.moe.multistart import MultiStartResult
from memoe.moe.params import MoEParams
from memoe.moe.result import MEMoEResult
from memoe.moe.structured import StructuredParams

__all__ = ["MODEL_CLASSES", "check_memoe", "decode_memoe", "encode_memoe"]

MODEL_CLASSES = {"MEMoE": MEMoE, "MoE": MoE}
_PARAMS = ("gamma", "beta", "L", "sigma")


def _used_data(model: MEMoE) -> pd.DataFrame:
    """Kept rows restricted to the columns the model reads (response, covariates, subject, gating)."""
    md = model.mdesign
    spec = md.design.spec
    subject = list(spec.random[0].group_factors) if spec.random else [md.group]
    # the residual structures' columns (visit, time, variance covariate) too
    structures = [s for s in (getattr(model, "correlation", None), getattr(model, "weights", None)) if s is not None]
    used = {*md.design.frame.data.columns, *md.gating_vars, *subject, *(c for s in structures for c in s.columns())}
    return md.data[[c for c in md.data.columns if c in used]]


def _encode_input_rows(md, arrays: dict[str, np.ndarray]) -> dict | None:
    if md.input_rows is None or bool(np.all(md.input_rows)):
        return None
    arrays["model.input_rows"] = np.asarray(md.input_rows, dtype=bool)
    return {"index": encode_index(md.input_index, "model.input_index", arrays)}


def _decode_input_rows(spec: dict | None, design, arrays: dict[str, np.ndarray]) -> dict:
    """``input_index`` and ``input_rows`` of the saved design (empty when no row was dropped before the
    expert formula), checked against the restored expert frame."""
    if spec is None:
        return {}
    if not isinstance(spec, dict) or "model.input_rows" not in arrays:
        raise PersistenceError("the saved model's record of the input rows is malformed")
    rows = np.asarray(arrays["model.input_rows"])
    index = decode_index(spec["index"], "model.input_index", arrays)
    if rows.dtype != bool or rows.ndim != 1 or len(rows) != len(index) or int(rows.sum()) != len(design.frame.index):
        raise PersistenceError(
            f"the saved input-row record ({len(rows)} rows, {int(np.sum(rows))} kept) does not match the saved "
            f"model frame ({len(design.frame.index)} rows)"
        )
    return {"input_index": index, "input_rows": rows}


def encode_memoe(fit: MEMoEResult, arrays: dict[str, np.ndarray]) -> dict:
    """The ``model`` and ``fit`` parts of ``meta.json`` for a mixture fit; arrays go to ``arrays``."""
    model = fit.model
    md = model.mdesign
    for name in _PARAMS:
        arrays[f"fit.params.{name}"] = np.asarray(getattr(fit.estimates, name), dtype=float)
    arrays["fit.trace"] = np.asarray(fit.trace, dtype=float)
    if getattr(model, "structured", False):
        arrays["fit.params.extra"] = np.asarray(fit.estimates.extra, dtype=float)
    return {
        "model": {
            "class": type(model).__name__,
            "formula": model.formula,
            "gating": model.gating,
            "k": model.k,
            "mixture": model.mixture,
            "random_cov": model.random_cov,
            "sigma": model.sigma_option,
            "order": model.order,
            # the experts' response family (None: Gaussian) and the E-step's quadrature nodes
            "family": None if model.response_family is None else model.response_family.name,
            "link": None if model.response_family is None else model.response_family.link.name,
            "laplace": bool(model.laplace),
            "nAGQ": int(model.nAGQ),
            "contrasts": dict(model.contrasts),
            # the subject column is an argument only for regression experts (else the formula names it)
            "group": None if md.design.blocks else md.group,
            "mstep": encode_dataclass(model.problem.expert.control, "mstep", arrays),
            # MEMoE keeps no data name of its own; the kept rows carry the input's attrs
            "data_name": md.data.attrs.get("name"),
            "data": encode_frame(_used_data(model), "data", arrays, "the model data"),
            "frame": encode_model_frame(md.design, "frame", arrays),
            "n_dropped": int(md.n_dropped),
            # rows dropped before the expert formula (missing subject id / gating covariate): per-row
            # outputs of the loaded fit keep the input's index; None when there were none
            "input_rows": _encode_input_rows(md, arrays),
            "specific": plain(model.structure.specific),
            "fixef_names": list(md.fixef_names),
            "gating_names": list(md.gating_names),
            # class-specific residual structures, saved as data (memoe.marginal.persist's records)
            "correlation": encode_structure(getattr(model, "correlation", None), "correlation structure"),
            "weights": encode_structure(getattr(model, "weights", None), "variance function"),
        },
        "fit": {
            "loglik": float(fit.loglik),
            "n_iter": int(fit.n_iter),
            "converged": bool(fit.converged),
            "max_decrease": float(fit.max_decrease),
            "empty_experts": plain(fit.empty_experts),
            "n_at_best": int(fit.n_at_best),
            "n_empty_starts": int(fit.n_empty_starts),
            "n_polished": int(fit.n_polished),
            "n_same_partition": int(fit.n_same_partition),
            "starts": encode_frame(fit.starts, "starts", arrays, "the starts table"),
        },
        # for a human reading meta.json; loading uses the arrays
        "estimates": {name: plain(getattr(fit.estimates, name)) for name in _PARAMS},
    }


def _rebuild_model(m: dict, arrays: dict[str, np.ndarray]) -> MEMoE:
    cls = MODEL_CLASSES[m["class"]]
    data = decode_frame(m["data"], "data", arrays)
    if m.get("data_name") is not None:
        data.attrs["name"] = m["data_name"]
    kwargs = dict(
        mixture=m["mixture"], random_cov=m["random_cov"], sigma=m["sigma"], order=m["order"],
        mstep=decode_dataclass(MStepControl, m["mstep"], "mstep", arrays),
        contrasts=m.get("contrasts"),
    )
    if m["group"] is not None:
        kwargs["group"] = m["group"]
    if m.get("family") is not None:
        kwargs["family"] = get_family(m["family"], m.get("link"))
    if m.get("laplace"):
        kwargs["laplace"] = True
    correlation = decode_structure(m.get("correlation"), "correlation structure")
    if correlation is not None and not isinstance(correlation, CorStruct):
        raise PersistenceError(f"the saved correlation structure {correlation!r} is not a correlation structure")
    weights = decode_structure(m.get("weights"), "variance function")
    if weights is not None and not isinstance(weights, VarIdent | VarFunc | VarComb):
        raise PersistenceError(f"the saved variance function {weights!r} is not a variance function")
    if correlation is not None:
        kwargs["correlation"] = correlation
    if weights is not None:
        kwargs["weights"] = weights
    model = cls(m["formula"], m["gating"], m["k"], data, **kwargs)
    if model.laplace:
        model.problem.expert.nAGQ = check_nagq(int(m.get("nAGQ", 1)), model.structure.q)
        model.nAGQ = int(m.get("nAGQ", 1))
    md = model.mdesign
    design = restore_model_frame(md.design, m["frame"], "frame", arrays)
    model.mdesign = dataclasses.replace(
        md, design=design, n_dropped=int(m["n_dropped"]), **_decode_input_rows(m.get("input_rows"), design, arrays)
    )
    check_equal("fixed-effects names", m["fixef_names"], md.fixef_names)
    check_equal("gating names", m["gating_names"], md.gating_names)
    check_equal("class-specific fixed effects", m["specific"], model.structure.specific)
    return model


def check_memoe(meta: dict) -> None:
    """Refuse a file whose formulas or group are outside the allow-list (before evaluating).

    The expert formula, the gating formula (``None`` for a model without one) and the subject column.
    """
    m = meta["model"]
    columns = saved_columns(m)
    check_formula(m.get("formula"), columns, what=f"the saved {m['class']} formula")
    if m.get("gating") is not None:
        check_formula(m.get("gating"), columns, what=f"the saved {m['class']} gating formula")
    check_saved_contrasts(m.get("contrasts"), columns, what=f"the saved {m['class']} contrasts")
    check_columns(m, {"group": "the group"}, columns, m["class"])
    for option in ("family", "link"):
        value = m.get(option)
        if value is not None and not isinstance(value, str):
            raise PersistenceError(f"the saved {m['class']} option {option} is a {type(value).__name__}")
    for key, what in (("correlation", "correlation structure"), ("weights", "variance function")):
        if m.get(key) is not None:
            _check_structure_fields(m[key], columns, what)
    nagq = m.get("nAGQ", 1)
    if isinstance(nagq, bool) or not isinstance(nagq, int):
        raise PersistenceError(f"the saved {m['class']} nAGQ is not an integer: {nagq!r}")
    for option in ("mixture", "random_cov", "sigma", "order"):
        value = m.get(option)
        if value is not None and not isinstance(value, str | bool | int | float):
            raise PersistenceError(f"the saved {m['class']} option {option} is a {type(value).__name__}")


def decode_memoe(meta: dict, arrays: dict[str, np.ndarray]) -> MEMoEResult:
    """Rebuild the model, the final E-step at the saved parameters, and the result."""
    m, f = meta["model"], meta["fit"]
    model = _rebuild_model(m, arrays)
    params = MoEParams(**{name: arrays[f"fit.params.{name}"] for name in _PARAMS})
    if getattr(model, "structured", False):
        if "fit.params.extra" not in arrays:
            raise PersistenceError("the saved MEMoE has residual structures but no structure parameters")
        params = StructuredParams(**{name: getattr(params, name) for name in _PARAMS},
                                  extra=np.asarray(arrays["fit.params.extra"], dtype=float))
    estep = model.problem.e_step(params)
    # the result reads the selected run and the start record; the saved parameters are already in
    # canonical order, so the identity order maps the saved (1-based) empty experts back unchanged
    run = EMRun(
        params=params,
        estep=estep,
        loglik=estep.loglik,
        trace=arrays["fit.trace"].tolist(),
        n_iter=f["n_iter"],
        converged=f["converged"],
        empty=[k - 1 for k in f["empty_experts"]],
        max_decrease=f["max_decrease"],
    )
    ms = MultiStartResult(
        best=run,
        starts=decode_frame(f["starts"], "starts", arrays),
        n_at_best=f["n_at_best"],
        n_empty=f["n_empty_starts"],
        n_polished=f["n_polished"],
        n_same_partition=f["n_same_partition"],
    )
    fit = MEMoEResult(model, params, estep, ms, np.arange(model.k))
    check_loglik(f["loglik"], fit.loglik)
    return fit


register_codec(
    "MEMoEResult", result_type=MEMoEResult, model_types=MODEL_CLASSES, encode=encode_memoe, decode=decode_memoe,
    check=check_memoe, description="MEMoEResult (of memoe.MEMoE / memoe.MoE)",
)
