"""Regression tests for every case reported in issue 8 ("Reliability and security").

Each reported case has a test here, or a comment naming the existing test that covers it exactly
(``file::test``); tests/fuzz/test_fuzz.py runs the wider grid of bad inputs in forked processes.

Already covered exactly elsewhere:

* time covariate in epoch seconds (``Days + 1.7e9``) / nanoseconds, raw LinAlgError:
  test_numerics.py::test_epoch_offset_in_the_fixed_part, ::test_nanosecond_scale_in_the_fixed_part;
  response shifted by 1e12 equals the centred fit: test_numerics.py::test_response_shifted_by_1e12
* ``Reaction ~ Reaction``: test_validation_lmm.py::test_response_on_the_right_side
* ``start`` of the wrong length (nlopt.invalid_argument): test_validation_lmm.py::test_start_is_validated
  (LMM), test_validation_glmm.py::test_start_and_control_are_validated (GLMM)
* p > n: test_validation_lmm.py::test_more_columns_than_rows
* GEE ``maxiter=0``: test_validation_gee.py::test_bad_fit_arguments; constant GEE response:
  test_validation_gee.py::test_response_checks
* ``k=None``: moe/test_validation_moe.py::test_bad_k; ``n_starts=2.5``, ``0``, ``-1`` and ``seed="abc"``:
  moe/test_validation_moe.py::test_bad_fit_arguments
* persistence: KeyError -> test_persist_security.py::test_missing_keys_and_wrong_types_are_persistence_errors;
  BadZipFile -> ::test_bytes_that_are_not_a_memoe_file, ::test_a_truncated_file; RecursionError ->
  ::test_json_nested_100000_deep_is_refused_before_parsing; 8 TiB npy header ->
  ::test_an_npy_header_declaring_8_tib_is_refused_before_allocation; 300 MB meta.json ->
  ::test_a_300_mb_meta_json_is_refused_without_decompressing_it; ``load(None)``, ``load(123)`` ->
  ::test_load_refuses_other_types_naming_them; ``load(b"...")`` -> ::test_bytes_that_are_not_a_memoe_file
  and ::test_load_from_bytes_file_objects_and_paths
* constant response: test_validation_lmm.py::test_constant_response (LMM),
  moe/test_validation_moe.py::test_constant_response_is_refused (MEMoE, MoE)
* binomial complete separation: test_validation_glmm.py::test_complete_separation_warns_naming_the_terms;
  all-zero response: ::test_all_zero_binomial, ::test_all_zero_cbind
* ``fit(reml="no")``: test_validation_lmm.py::test_reml_must_be_bool
* duplicate column names: test_validation_lmm.py::test_duplicated_column_names
* complex response: test_validation_lmm.py::test_complex_response
* MEMoE k > number of subjects: moe/test_validation_moe.py::test_k_not_smaller_than_subjects
* VarIdent on a continuous column with 108 distinct values:
  marginal/test_validation_marginal.py::test_varident_on_a_continuous_column
* ``Symm`` with 108 visits: marginal/test_validation_marginal.py::test_symm_with_too_many_visits (refused
  when the model is built, before any fit; here also timed)
* non-nested models in compare: test_compare_validation.py::test_non_nested_fixed_effects_get_no_p_value,
  ::test_non_nested_random_effects_same_npar, ::test_residual_structures_that_are_not_nested
* grouping ids read back from CSV as floats: test_predict_newdata.py::test_ids_read_back_from_csv_give_the_same_
  predictions (all six families)
* unseen fixed-effect factor levels in GLMM and GEE predict:
  test_predict_newdata.py::test_new_fixed_factor_level_raises_naming_column_and_level (all six families)
* infinite predictor -> NaN + warning: test_predict_newdata.py::test_infinite_predictor_gives_nan_and_a_warning
* ``select_k`` progress bar and ``progress=False``: test_progress.py::test_select_k_bar
* warnings at the caller's line: MEMoE empty expert -> moe/test_validation_moe.py::test_empty_expert_warning_
  names_expert_and_mass; GEE -> test_validation_gee.py::test_maxiter_one_is_accepted; LMM convergence ->
  test_validation_lmm.py::test_convergence_warning_points_at_the_fit_line. LMM singular fit, GLMM
  convergence and lme are tested here.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import (
    ConvergenceWarning,
    DataError,
    MemoeError,
    MemoeWarning,
    PersistenceError,
    SingularFitWarning,
)

# The optimiser stops when theta moves less than xtol_abs = 1e-8; the deviance is flat to second order
# there, so log-likelihoods agree to ~1e-12 relative and estimates (first order in theta) to ~1e-7
# (the same reasoning as tests/unit/test_numerics.py).
LOGLIK_RTOL = 1e-8
EST_RTOL = 1e-6


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return memoe.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleep):
    return memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).fit()


# ------------------------------------------------------------------------- extreme response scales
@pytest.mark.parametrize("factor", [1e-300, 1e-200])
def test_lmm_response_near_the_underflow_fits_as_the_rescaled_response(sleep, factor):
    """``Reaction * 1e-300`` used to raise a raw ValueError (its variance underflowed to 0, so it was not rescaled)."""
    f = "Reaction ~ Days + (Days | Subject)"
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoeWarning)  # a right answer needs no warning
        ref = memoe.lmm(f, sleep).fit(reml=False)
        fit = memoe.lmm(f, sleep.assign(Reaction=sleep.Reaction * factor)).fit(reml=False)
    # y -> s y: each observation's density gains 1/s (the Jacobian)
    assert fit.loglik == pytest.approx(ref.loglik - ref.nobs * math.log(factor), rel=LOGLIK_RTOL)
    np.testing.assert_allclose(fit.fixef.to_numpy() / factor, ref.fixef.to_numpy(), rtol=EST_RTOL)
    assert fit.sigma / factor == pytest.approx(ref.sigma, rel=EST_RTOL)
    # the rescaled fit's criterion carries a shift of n |log factor| (~1.2e5 here): its rounding, ~100 eps of
    # that, is how far from the optimum BOBYQA can stop, and theta moves by the slack the curvature allows
    from tests.tolerances import EPS, OptimumSlack

    delta = 100 * EPS * (abs(ref.opt.fmin) + ref.nobs * abs(math.log(factor)))
    slack = OptimumSlack(ref.model.objective(False), ref.theta.to_numpy(), delta,
                         lower=ref.design.theta_map.lower_bounds)
    np.testing.assert_array_less(np.abs(fit.theta.to_numpy() - ref.theta.to_numpy()),
                                 np.maximum(1e-7, slack.parameters()))


@pytest.mark.parametrize("factor", [1e300, 1e-300])
@pytest.mark.parametrize("kind", ["gls", "lme"])
def test_gls_and_lme_refuse_a_response_whose_squares_overflow(sleep, factor, kind):
    """It used to be a raw ValueError/OverflowError, or an error not naming the response."""
    data = sleep.assign(Reaction=sleep.Reaction * factor)
    before = data.copy()
    with pytest.raises(DataError, match=r"response 'Reaction' has values of magnitude .*rescale it"):
        if kind == "gls":
            memoe.gls("Reaction ~ Days", data).fit()
        else:
            memoe.lme("Reaction ~ Days + (1 | Subject)", data).fit()
    pd.testing.assert_frame_equal(data, before)


def test_gls_response_on_an_ordinary_small_scale_still_fits(sleep):
    """The scale check of gls/lme only refuses what double precision cannot square: 1e-100 fits."""
    ref = memoe.gls("Reaction ~ Days", sleep).fit()
    fit = memoe.gls("Reaction ~ Days", sleep.assign(Reaction=sleep.Reaction * 1e-100)).fit()
    np.testing.assert_allclose(fit.fixef.to_numpy() * 1e100, ref.fixef.to_numpy(), rtol=EST_RTOL)


# ------------------------------------------------------------------------- predict
@pytest.mark.parametrize("family", ["lmm", "glmm", "gee"])
def test_complex_predictor_in_newdata_is_refused_naming_the_column(family):
    """numpy used to drop the imaginary part with only a ComplexWarning: a silently wrong prediction."""
    if family == "lmm":
        data = memoe.datasets.load("sleepstudy")
        fit = memoe.lmm("Reaction ~ Days + (1 | Subject)", data).fit()
        new, col = data.head(3).assign(Days=data.Days.head(3) + 2j), "Days"
    elif family == "glmm":
        data = memoe.datasets.load("cbpp").assign(z=lambda d: np.log(d["size"]))
        fit = memoe.glmm("cbind(incidence, size - incidence) ~ period + z + (1 | herd)", data, "binomial").fit()
        new, col = data.head(3).assign(z=data.z.head(3) + 1j), "z"
    else:
        data = memoe.datasets.load("Orthodont")
        fit = memoe.gee("distance ~ age", data, group="Subject").fit()
        new, col = data.head(3).assign(age=data.age.head(3) + 1j), "age"
    before = new.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning either
        with pytest.raises(DataError, match=rf"column '{col}' of the new data .*is complex"):
            fit.predict(new)
    pd.testing.assert_frame_equal(new, before)


def test_predict_matches_grouping_levels_by_label_not_by_categorical_code(sleep, sleep_fit):
    """A categorical Subject whose categories are reordered, with an unused extra one, predicts as the fit."""
    new = sleep.head(12).copy()
    labels = [*sorted(sleep.Subject.astype(str).unique(), reverse=True), "unused"]
    new["Subject"] = pd.Categorical(new.Subject.astype(str), categories=labels)
    np.testing.assert_allclose(sleep_fit.predict(new).to_numpy(), sleep_fit.fitted.to_numpy()[:12], rtol=1e-12)


# ------------------------------------------------------------------------- persist.save of a wrong object
@pytest.mark.parametrize("obj", [pd.DataFrame(), pd.DataFrame({"a": [1.0]}), np.zeros(3)])
def test_save_refuses_frames_and_arrays_naming_the_type(obj, tmp_path):
    with pytest.raises(PersistenceError, match=rf"saves .* fits, not {type(obj).__name__}"):
        memoe.persist.save(obj, tmp_path / "x.memoe")
    assert not (tmp_path / "x.memoe").exists()


# ------------------------------------------------------------------------- Symm with 108 visits
def test_symm_with_108_visits_is_refused_fast():
    """5778 correlation parameters: refused when the model is built, without attempting the fit."""
    from memoe.marginal import Symm

    orth = memoe.datasets.load("Orthodont").assign(row=lambda d: np.arange(len(d)))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"5778 correlation parameters"):
        memoe.gls("distance ~ age", orth, correlation=Symm(visit="row")).fit()
    # generous (a loaded CI machine): the fit itself would take hours
    assert time.perf_counter() - t0 < 10.0


# ------------------------------------------------------------------------- warnings point at the caller
def test_lmm_singular_fit_warning_points_at_the_callers_line():
    d2 = memoe.datasets.load("Dyestuff2")
    with pytest.warns(SingularFitWarning) as rec:
        memoe.lmm("Yield ~ 1 + (1 | Batch)", d2).fit()
    assert [r.filename for r in rec if issubclass(r.category, SingularFitWarning)] == [__file__]


def test_glmm_convergence_warning_points_at_the_callers_line():
    cbpp = memoe.datasets.load("cbpp")
    model = memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial")
    # 3 evaluations cannot reach the optimum: the gradient check fails
    with pytest.warns(ConvergenceWarning, match="failed to converge") as rec:
        model.fit(control={"maxeval": 3})
    assert [r.filename for r in rec if issubclass(r.category, ConvergenceWarning)] == [__file__]


def test_lme_convergence_warning_points_at_the_callers_line(monkeypatch, sleep):
    import memoe.marginal.model as marginal_model

    real = marginal_model.minimize_bounded

    def stopped(*args, **kwargs):
        # the optimiser's answer, reported as a failure (nlopt's negative return codes)
        return dataclasses.replace(real(*args, **kwargs), return_code=-1, message="forced stop")

    monkeypatch.setattr(marginal_model, "minimize_bounded", stopped)
    with pytest.warns(ConvergenceWarning, match="optimiser stopped") as rec:
        memoe.lme("Reaction ~ Days + (1 | Subject)", sleep).fit()
    assert [r.filename for r in rec if issubclass(r.category, ConvergenceWarning)] == [__file__]


# ------------------------------------------------------------------------- every refusal is a MemoeError
@pytest.mark.parametrize(
    "call",
    [
        lambda d: memoe.lmm("Reaction ~ Days + (Days | Subject)", d).fit(reml="no"),
        lambda d: memoe.lmm("Reaction ~ Reaction + (1 | Subject)", d).fit(),
        lambda d: memoe.lmm("Reaction ~ Days + (Days | Subject)", d).fit(start=[1.0]),
        lambda d: memoe.gee("Reaction ~ Days", d, group="Subject").fit(maxiter=0),
        lambda d: memoe.gee("c ~ Days", d.assign(c=1.0), group="Subject").fit(),
        lambda d: memoe.persist.load(None),
        lambda d: memoe.persist.load(123),
        lambda d: memoe.persist.load(b"not a memoe file"),
        lambda d: memoe.persist.load(io.BytesIO(b"PK\x03\x04" + b"\0" * 40)),
    ],
    ids=["reml_no", "response_on_right", "start_short", "gee_maxiter0", "gee_constant", "load_none", "load_int",
         "load_bytes", "load_truncated_zip"],
)
def test_reported_calls_are_memoe_errors(sleep, call):
    """The issue's one-liners, as reported: each is a MemoeError (the detailed messages are tested elsewhere)."""
    before = sleep.copy()
    with pytest.raises(MemoeError) as info:
        call(sleep)
    assert len(str(info.value)) > 20
    pd.testing.assert_frame_equal(sleep, before)


def test_compare_refuses_gee_fits_with_a_comparison_error():
    data = memoe.datasets.load("Orthodont")
    g = memoe.gee("distance ~ age", data, group="Subject").fit()
    m = memoe.lmm("distance ~ age + (1 | Subject)", data).fit(reml=False)
    for fits in [(g, m), (m, g), (g, g)]:
        with pytest.raises(memoe.errors.ModelComparisonError, match=r"GEE.*qic"):
            memoe.compare(*fits)
