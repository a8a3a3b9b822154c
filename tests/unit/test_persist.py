"""Saving fits to ``.memoe`` files and loading them back: same numbers, safe refusals, no pickle."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from functools import cached_property

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.persist.frames import decode_frame, encode_frame
from memoe.errors import MemoeError
from memoe.lmm.result import LmmResult
from memoe.moe.result import MEMoEResult
from memoe.persist import FORMAT_VERSION, PersistenceError, load, save

RTOL = 1e-12


# ---------------------------------------------------------------------------------------------- helpers
def close(a, b, what: str) -> None:
    """Same values to RTOL (NaN where NaN), same labels; for scalars, Series, DataFrames and arrays."""
    if isinstance(a, pd.Series | pd.DataFrame):
        assert type(a) is type(b), what
        assert a.index.equals(b.index), f"{what}: index differs"
        if isinstance(a, pd.DataFrame):
            assert a.columns.equals(b.columns), f"{what}: columns differ"
            assert list(a.dtypes) == list(b.dtypes), f"{what}: dtypes differ"
        numeric = a.select_dtypes("number") if isinstance(a, pd.DataFrame) else a
        other = b.select_dtypes("number") if isinstance(b, pd.DataFrame) else b
        np.testing.assert_allclose(np.asarray(numeric, float), np.asarray(other, float), rtol=RTOL, atol=0,
                                   err_msg=what)
        if isinstance(a, pd.DataFrame):
            rest = [c for c in a.columns if c not in numeric.columns]
            pd.testing.assert_frame_equal(a[rest], b[rest], obj=what)
        return
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=RTOL, atol=0, err_msg=what)


def roundtrip(fit, tmp_path, name: str = "fit.memoe"):
    path = tmp_path / name
    save(fit, path)
    return load(path)


def rewrite(path, meta_edit=None, arrays_edit=None, raw_arrays: bytes | None = None) -> None:
    """Rewrite a saved archive with edited meta.json and/or arrays.npz (to craft bad files)."""
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    if meta_edit:
        meta_edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.json", json.dumps(meta))
        zf.writestr("arrays.npz", raw_arrays if raw_arrays is not None else buf.getvalue())


def plain_attributes(fit) -> dict:
    """Instance attributes set by ``__init__`` (cached properties excluded)."""
    cls = type(fit)
    return {k: v for k, v in vars(fit).items() if not isinstance(getattr(cls, k, None), cached_property)}


# ---------------------------------------------------------------------------------------------- LMM
def assert_same_lmm(a: LmmResult, b: LmmResult, newdata: pd.DataFrame) -> None:
    assert type(b) is LmmResult and b.reml == a.reml and b.model.formula == a.model.formula
    close(a.fixef, b.fixef, "fixef")
    close(a.vcov(), b.vcov(), "vcov")
    close(a.theta, b.theta, "theta")
    close(a.sigma, b.sigma, "sigma")
    close(a.loglik, b.loglik, "loglik")
    close([a.aic, a.bic, a.deviance], [b.aic, b.bic, b.deviance], "criteria")
    assert a.ranef.keys() == b.ranef.keys()
    for g in a.ranef:
        close(a.ranef[g], b.ranef[g], f"ranef[{g}]")
        close(a.ranef_condsd[g], b.ranef_condsd[g], f"ranef_condsd[{g}]")
    close(a.varcorr, b.varcorr, "varcorr")
    close(a.fitted, b.fitted, "fitted")
    close(a.resid, b.resid, "resid")
    assert str(a.summary()) == str(b.summary())
    for ddf in ("residual", "satterthwaite"):
        close(a.coef_table(ddf=ddf), b.coef_table(ddf=ddf), f"coef_table({ddf})")
    close(a.predict(newdata, allow_new_levels=True), b.predict(newdata, allow_new_levels=True), "predict")
    close(a.predict(newdata, re_form=None), b.predict(newdata, re_form=None), "predict(re_form=None)")
    assert (a.nobs, a.n_dropped, a.singular, a.converged, a.messages) == (
        b.nobs, b.n_dropped, b.singular, b.converged, b.messages
    )
    assert a.design.frame.dropped_by_column == b.design.frame.dropped_by_column
    assert a.model.data_name == b.model.data_name
    for name in ("opt", "convergence"):
        ra, rb = getattr(a, name), getattr(b, name)
        for f in dataclasses.fields(ra):
            va, vb = getattr(ra, f.name), getattr(rb, f.name)
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(va, vb)
            elif isinstance(va, dict):
                # the gradient fit's settings hold the final gradient (an array)
                assert va.keys() == vb.keys(), f"{name}.{f.name}"
                for key in va:
                    np.testing.assert_array_equal(va[key], vb[key], err_msg=f"{name}.{f.name}[{key!r}]")
            else:
                assert va == vb, f"{name}.{f.name}"


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


@pytest.mark.parametrize("reml", [True, False])
def test_sleepstudy_round_trip(sleep, reml, tmp_path):
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).fit(reml=reml)
    back = roundtrip(fit, tmp_path)
    newdata = pd.DataFrame({"Days": [0.0, 4.5, 9.0], "Subject": ["308", "372", "new"]})
    assert_same_lmm(fit, back, newdata)
    assert back.method == ("REML" if reml else "ML")
    # the rebuilt model is the same model: refitting it retraces the original optimisation
    close(back.model.fit(reml=reml).theta, fit.theta, "refitted theta")


def test_file_layout(sleep, tmp_path):
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).fit(reml=False)
    path = tmp_path / "sleep.memoe"
    save(fit, path)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["arrays.npz", "meta.json"]
        meta = json.loads(zf.read("meta.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
            files = set(npz.files)
    assert meta["format"] == "memoe-fit" and meta["format_version"] == FORMAT_VERSION
    assert meta["memoe_version"] == memoe.__version__ and meta["class"] == "LmmResult"
    assert meta["model"]["formula"] == fit.model.formula and meta["model"]["data_name"] == "sleepstudy"
    assert meta["fit"]["reml"] is False and meta["estimates"]["theta"] == fit.theta.tolist()
    subject = meta["model"]["data"]["columns"][2]
    assert subject["kind"] == "categorical" and subject["categories"]["values"][0] == "308"
    assert {"fit.theta", "data.0", "data.1", "data.2.codes", "frame.row_mask"} <= files


def test_crossed_penicillin_round_trip(tmp_path):
    df = memoe.datasets.load("Penicillin")
    fit = memoe.lmm("diameter ~ 1 + (1 | plate) + (1 | sample)", df).fit()
    back = roundtrip(fit, tmp_path)
    assert_same_lmm(fit, back, df.iloc[::7])
    assert list(back.ngroups.index) == ["plate", "sample"]


def test_dropped_rows_categorical_fixed_effect_and_custom_index(tmp_path):
    df = memoe.datasets.load("Orthodont").copy()
    df.index = pd.Index([f"row{i}" for i in range(len(df))], name="rowid")
    df.loc[["row3", "row50"], "distance"] = np.nan
    df.loc["row70", "Sex"] = np.nan
    df["note"] = "unused"  # not a model column: not saved
    fit = memoe.lmm("distance ~ age * Sex + (age | Subject)", df).fit(reml=True)
    assert fit.n_dropped == 3
    back = roundtrip(fit, tmp_path)
    assert_same_lmm(fit, back, df.iloc[:20])
    assert back.fitted.index.equals(df.index)
    assert back.fitted.isna().sum() == 3 and np.isnan(back.fitted["row70"])
    assert "SexFemale" in back.fixef.index
    assert "note" not in back.design.frame.data.columns
    assert back.design.frame.data["Sex"].dtype == df["Sex"].dtype


def test_string_grouping_and_method_save_and_file_object(sleep, tmp_path):
    df = sleep.assign(Subject=sleep["Subject"].astype(str).astype(object))
    fit = memoe.lmm("Reaction ~ Days + (1 | Subject)", df).fit()
    path = tmp_path / "m.memoe"
    fit.save(path)  # the convenience method
    assert_same_lmm(fit, load(path), df.head(5))
    buf = io.BytesIO()
    save(fit, buf)
    buf.seek(0)
    assert_same_lmm(fit, load(buf), df.head(5))


def test_singular_fit_keeps_messages(tmp_path):
    df = memoe.datasets.load("Dyestuff2")
    with pytest.warns(memoe.errors.SingularFitWarning):
        fit = memoe.lmm("Yield ~ 1 + (1 | Batch)", df).fit()
    back = roundtrip(fit, tmp_path)
    assert back.singular and back.messages == fit.messages and back.messages
    assert_same_lmm(fit, back, df.head(3))


def test_comparison_helper_detects_a_different_fit(sleep):
    """The equality checks above are not vacuous: an ML and a REML fit of the same model differ."""
    model = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep)
    with pytest.raises(AssertionError):
        assert_same_lmm(model.fit(reml=True), model.fit(reml=False), sleep.head(3))


# ---------------------------------------------------------------------------------------------- MEMoE
def assert_same_memoe(a: MEMoEResult, b: MEMoEResult, newdata: pd.DataFrame) -> None:
    assert type(b) is MEMoEResult and type(b.model) is type(a.model)
    close(a.loglik, b.loglik, "loglik")
    close(a.posterior, b.posterior, "posterior")
    close(a.prior, b.prior, "prior")
    pd.testing.assert_series_equal(a.classify(), b.classify())
    close(a.classification_table(), b.classification_table(), "classification_table")
    close(a.params, b.params, "params")
    close(a.coef_table(robust="sandwich"), b.coef_table(robust="sandwich"), "coef_table")
    close(a.vcov("sandwich"), b.vcov("sandwich"), "vcov robust")
    close(a.vcov(), b.vcov(), "vcov model-based")
    close(a.criteria(), b.criteria(), "criteria")
    close(a.fixef, b.fixef, "fixef")
    close(a.gating, b.gating, "gating")
    close(a.sigmas, b.sigmas, "sigmas")
    for ga, gb in zip(a.ranef_cov, b.ranef_cov, strict=True):
        close(ga, gb, "ranef_cov")
    assert str(a.summary()) == str(b.summary())
    close(a.predict(), b.predict(), "predict()")
    close(a.predict(newdata), b.predict(newdata), "predict(newdata)")
    close(a.predict(newdata, kind="population"), b.predict(newdata, kind="population"), "population")
    pd.testing.assert_frame_equal(a.starts, b.starts, check_exact=True)
    ta, tb = plain_attributes(a), plain_attributes(b)
    assert ta.keys() == tb.keys()
    for k in ta.keys() - {"model", "estimates", "_estep", "starts"}:
        assert ta[k] == tb[k], k
    assert (a.n_dropped, a.nobs, a.n_subjects) == (b.n_dropped, b.nobs, b.n_subjects)


@pytest.fixture(scope="module")
def sim2():
    return memoe.datasets.load("memoe_sim2")


def test_memoe_round_trip(sim2, tmp_path):
    m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim2)
    fit = m.fit(n_starts=3, seed=1, progress=False)
    path = tmp_path / "moe.memoe"
    fit.save(path)
    back = load(path)
    assert_same_memoe(fit, back, sim2[sim2["id"].isin(sim2["id"].unique()[:5])])
    assert back.model.random_cov == "class" and back.model.order == "intercept"


def test_moe_with_dropped_rows_and_options_round_trip(sim2, tmp_path):
    df = sim2.copy()
    df.loc[[2, 40], "y"] = np.nan
    df.loc[df["id"] == df["id"].iloc[100], "w1"] = np.nan  # a whole subject without its gating covariate
    m = memoe.MoE("y ~ time + x", gating="~ w1 + w2", k=2, data=df, group="id", mixture="~ time", sigma="common")
    fit = m.fit(n_starts=2, seed=3, progress=False)
    assert fit.n_dropped > 2
    back = roundtrip(fit, tmp_path)
    assert type(back.model) is memoe.MoE and back.model.sigma_option == "common"
    assert_same_memoe(fit, back, df.head(30).dropna())


# ---------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def small_fit():
    return memoe.lmm("Yield ~ 1 + (1 | Batch)", memoe.datasets.load("Dyestuff")).fit()


@pytest.fixture
def saved(small_fit, tmp_path):
    path = tmp_path / "dye.memoe"
    save(small_fit, path)
    return path


def test_error_class():
    assert issubclass(PersistenceError, MemoeError)


def test_refuses_a_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "x.memoe"
    path.write_text("Reaction,Days\n1,2\n")
    with pytest.raises(PersistenceError, match="not a memoe file"):
        load(path)


def test_refuses_a_zip_without_memoe_members(tmp_path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(PersistenceError, match="not a memoe file"):
        load(path)


def test_refuses_another_json_format(saved):
    rewrite(saved, meta_edit=lambda m: m.update(format="something-else"))
    with pytest.raises(PersistenceError, match="not a memoe file"):
        load(saved)


def test_refuses_a_newer_format(saved):
    rewrite(saved, meta_edit=lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(PersistenceError, match="upgrade memoe"):
        load(saved)


@pytest.mark.parametrize("version", [0, "1", None, 1.5])
def test_refuses_an_unsupported_format_version(saved, version):
    rewrite(saved, meta_edit=lambda m: m.update(format_version=version))
    with pytest.raises(PersistenceError, match="unsupported format version"):
        load(saved)


def test_refuses_an_unknown_class(saved):
    rewrite(saved, meta_edit=lambda m: m.update({"class": "NoSuchResult"}))
    with pytest.raises(PersistenceError, match="unsupported result class"):
        load(saved)


UNPICKLED: list[str] = []


def _mark_unpickled() -> str:
    UNPICKLED.append("unpickled")
    return "trap"


class _Trap:
    """Unpickling this object calls :func:`_mark_unpickled` (a stand-in for arbitrary code)."""

    def __reduce__(self):
        return (_mark_unpickled, ())


def test_never_unpickles_an_object_array(saved):
    # sanity: the crafted npz really holds a pickle that would run code if unpickled
    buf = io.BytesIO()
    np.savez(buf, **{"fit.theta": np.array([_Trap()], dtype=object)})
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=True) as npz:
        npz["fit.theta"]
    assert UNPICKLED == ["unpickled"]
    UNPICKLED.clear()
    rewrite(saved, raw_arrays=buf.getvalue())
    with pytest.raises(PersistenceError, match="refusing"):
        load(saved)
    assert UNPICKLED == []


def test_refuses_a_tampered_parameter(saved, small_fit):
    """The load checks the rebuilt fit against the saved log-likelihood."""
    rewrite(saved, arrays_edit=lambda a: a.update({"fit.theta": a["fit.theta"] * 1.5}))
    with pytest.raises(PersistenceError, match="log-likelihood"):
        load(saved)


def test_refuses_to_save_other_objects(tmp_path, small_fit):
    with pytest.raises(PersistenceError, match=r"memoe\.persist saves .*LmmResult"):
        save(small_fit.model, tmp_path / "model.memoe")
    assert not (tmp_path / "model.memoe").exists()


def test_refuses_data_json_cannot_hold(tmp_path):
    df = memoe.datasets.load("Dyestuff").copy()
    df["Batch"] = [frozenset({b}) for b in df["Batch"]]  # hashable, groups fine, but not JSON
    fit = memoe.lmm("Yield ~ 1 + (1 | Batch)", df).fit()
    with pytest.raises(PersistenceError, match="column 'Batch'"):
        save(fit, tmp_path / "f.memoe")
    assert not (tmp_path / "f.memoe").exists()


# ---------------------------------------------------------------------------------------------- columns
def test_frame_codec_keeps_dtypes_and_values():
    df = pd.DataFrame(
        {
            "f": [1.5, np.nan, -0.0],
            "i": np.array([1, 2, 3], dtype=np.int32),
            "b": [True, False, True],
            "s": pd.Series(["a", None, "c"], dtype="str"),
            "o": pd.Series([1, "two", None], dtype=object),
            "o_nan": pd.Series([np.nan, "x", 2.5], dtype=object),
            "lists": pd.Series([[], [1, 2], [3]], dtype=object),
            "c": pd.Categorical(["lo", "hi", "lo"], categories=["lo", "hi", "unused"], ordered=True),
            "ci": pd.Categorical([10, 20, 10]),
            "n": pd.array([1, None, 3], dtype="Int64"),
            "t": pd.to_datetime(["2020-01-01", "2021-06-30", "2022-12-31"]),
        },
        index=pd.MultiIndex.from_arrays([pd.Index(["a", "a", "b"], dtype=object), [1, 2, 1]], names=["g", "k"]),
    )
    arrays: dict = {}
    spec = encode_frame(df, "d", arrays, "a test frame")
    assert not any(a.dtype.hasobject for a in arrays.values())
    spec = json.loads(json.dumps(spec))
    back = decode_frame(spec, "d", arrays)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert np.signbit(back["f"].iloc[2])
