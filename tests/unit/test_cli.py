"""The ``memoe`` command line: every subcommand against the Python API's numbers, errors and exit codes.

Most cases call :func:`memoe.cli.main` in-process (a subprocess costs ~1-2 s of start-up); one slow test
runs the real ``python -m memoe.cli`` for each subcommand.

Tolerances: the command and the API run the same computation on the same data (floats travel as
shortest-repr text in CSV / JSON, which round-trips exactly), so they agree to rounding; 1e-10 relative
leaves room only for run-to-run differences of threaded BLAS reductions on these well-conditioned fits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.cli import main, one_line
from memoe.cli.commands.fitting import parse_ks
from memoe.cli.io import apply_factors, parse_levels
from memoe.cli.structures import parse_correlation, parse_weights
from memoe.errors import ArgumentError, ConvergenceError, DataError
from memoe.marginal import AR1, CAR1, CompSymm, Exp, Symm, VarIdent

RTOL = 1e-10
SRC = Path(memoe.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = {"dir": d}
    for name, fname in [("sleepstudy", "sleep.csv"), ("Ovary", "ovary.csv"), ("Orthodont", "orth.csv"),
                        ("memoe_sim2", "sim.csv")]:
        memoe.datasets.load(name).to_csv(d / fname, index=False)
        out[name] = d / fname
    memoe.datasets.load("BodyWeight").to_parquet(d / "bw.parquet")
    out["BodyWeight"] = d / "bw.parquet"
    memoe.datasets.load("cbpp").to_feather(d / "cbpp.feather")
    out["cbpp"] = d / "cbpp.feather"
    return out


def run(argv, capsys):
    """``main(argv)`` in-process: (status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return status, cap.out, cap.err


def assert_tidy_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["term"]) == list(want["term"])
    for col in ("estimate", "std_error", "statistic", "p_value"):
        a = pd.to_numeric(got[col], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(want[col], errors="coerce").to_numpy(dtype=float)
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=0, equal_nan=True, err_msg=col)


def fixed_terms(path) -> list[str]:
    t = pd.read_csv(path)
    return list(t.loc[t["effect"] == "fixed", "term"])


def read_json_table(path) -> pd.DataFrame:
    return pd.DataFrame(json.loads(Path(path).read_text()))


# ------------------------------------------------------------------------------------------ fitting commands
def test_fit_lmm_tidy_csv_matches_api(files, capsys, tmp_path):
    out = tmp_path / "tidy.csv"
    status, stdout, err = run(["fit", "Reaction ~ Days + (Days | Subject)", "--data", files["sleepstudy"],
                               "--ml", "--output", out], capsys)
    assert status == 0, err
    assert "Linear mixed model fit by maximum likelihood" in stdout
    want = memoe.lmm("Reaction ~ Days + (Days | Subject)", pd.read_csv(files["sleepstudy"])).fit(reml=False)
    assert_tidy_equal(pd.read_csv(out), want.tidy())


def test_fit_glmm_feather_glance_json(files, capsys, tmp_path):
    out = tmp_path / "glance.json"
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    status, stdout, err = run(["fit", f, "--data", files["cbpp"], "--family", "binomial", "--nagq", "5",
                               "-o", out, "--quiet"], capsys)
    assert status == 0, err
    assert stdout == ""
    got = json.loads(out.read_text())
    want = memoe.glmm(f, pd.read_feather(files["cbpp"]), "binomial").fit(nAGQ=5).glance().iloc[0]
    assert isinstance(got, dict)
    for key in ("logLik", "AIC", "BIC", "nobs"):
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL)


def test_gls_structures_parquet(files, capsys, tmp_path):
    out = tmp_path / "tidy.json"
    status, stdout, err = run(["gls", "weight ~ Time * Diet", "--data", files["BodyWeight"], "--correlation",
                               "car1(Time | Rat)", "--weights", "varident(Diet)", "-o", out], capsys)
    assert status == 0, err
    assert "Continuous AR(1)" in stdout
    bw = pd.read_parquet(files["BodyWeight"])
    want = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat"), weights=VarIdent("Diet")).fit()
    assert_tidy_equal(read_json_table(out), want.tidy())


def test_lme_ar1_and_gee(files, capsys, tmp_path):
    f = "follicles ~ Time + (1 | Mare)"
    status, _, err = run(["lme", f, "--data", files["Ovary"], "--correlation", "ar1", "-q", "-o",
                          tmp_path / "lme.csv"], capsys)
    assert status == 0, err
    want = memoe.lme(f, pd.read_csv(files["Ovary"]), correlation=AR1()).fit()
    assert_tidy_equal(pd.read_csv(tmp_path / "lme.csv"), want.tidy())

    status, _, err = run(["gee", "distance ~ age * Sex", "--data", files["Orthodont"], "--group", "Subject",
                          "--corstr", "exchangeable", "-q", "-o", tmp_path / "gee.csv"], capsys)
    assert status == 0, err
    orth = pd.read_csv(files["Orthodont"])
    want = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr="exchangeable").fit()
    assert_tidy_equal(pd.read_csv(tmp_path / "gee.csv"), want.tidy())


def test_factor_and_levels_change_the_reference(files, capsys, tmp_path):
    # Diet read from CSV is numeric: --levels makes it a factor with level 3 as the reference
    csv = tmp_path / "bw.csv"
    memoe.datasets.load("BodyWeight").to_csv(csv, index=False)
    status, _, err = run(["gls", "weight ~ Time + Diet", "--data", csv, "--levels", "Diet=3,1,2", "-q",
                          "-o", tmp_path / "t.csv"], capsys)
    assert status == 0, err
    assert fixed_terms(tmp_path / "t.csv") == ["(Intercept)", "Time", "Diet1", "Diet2"]
    status, _, err = run(["gls", "weight ~ Time + Diet", "--data", csv, "--factor", "Diet", "-q",
                          "-o", tmp_path / "t.csv"], capsys)
    assert status == 0, err
    assert fixed_terms(tmp_path / "t.csv") == ["(Intercept)", "Time", "Diet2", "Diet3"]


@pytest.mark.slow
def test_memoe_and_select_k_match_api(files, capsys, tmp_path):
    sim = pd.read_csv(files["memoe_sim2"])
    f, g = "y ~ time + (time | id)", "~ w1"
    status, _, err = run(["memoe", f, "--gating", g, "--k", "2", "--data", files["memoe_sim2"], "--starts", "2",
                          "--seed", "1", "-q", "-o", tmp_path / "m.csv"], capsys)
    assert status == 0, err
    want = memoe.MEMoE(f, gating=g, k=2, data=sim).fit(n_starts=2, seed=1, progress=False)
    assert_tidy_equal(pd.read_csv(tmp_path / "m.csv"), want.tidy())

    status, stdout, err = run(["select-k", f, "--gating", g, "--k", "1:2", "--data", files["memoe_sim2"],
                               "--starts", "2", "--seed", "1", "-o", tmp_path / "k.json", "--save",
                               tmp_path / "best.memoe"], capsys)
    assert status == 0, err
    assert "smallest BIC" in stdout
    got = read_json_table(tmp_path / "k.json").set_index("k")
    table = memoe.select_k(f, gating=g, data=sim, ks=[1, 2], n_starts=2, seed=1, progress=False)
    np.testing.assert_allclose(got["BIC"].to_numpy(), table["BIC"].to_numpy(), rtol=RTOL)
    best = memoe.load(tmp_path / "best.memoe")
    assert best.k == int(table["BIC"].idxmin())


# ------------------------------------------------------------------------------------------ saved fits
def test_save_show_predict_round_trip(files, capsys, tmp_path):
    saved = tmp_path / "s.memoe"
    status, _, err = run(["fit", "Reaction ~ Days + (Days | Subject)", "--data", files["sleepstudy"], "-q",
                          "--save", saved], capsys)
    assert status == 0, err
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", pd.read_csv(files["sleepstudy"])).fit()

    status, stdout, _ = run(["show", saved, "--tidy"], capsys)
    assert status == 0
    assert_tidy_equal(pd.read_csv(pd.io.common.StringIO(stdout)), fit.tidy())
    status, stdout, _ = run(["show", saved, "--glance"], capsys)
    np.testing.assert_allclose(json.loads(stdout)["logLik"], fit.loglik, rtol=RTOL)
    status, stdout, _ = run(["show", saved], capsys)
    assert "REML criterion at convergence" in stdout
    status, _, _ = run(["show", saved, "-o", tmp_path / "glance.json"], capsys)
    assert json.loads((tmp_path / "glance.json").read_text())["nobs"] == 180

    new = pd.read_csv(files["sleepstudy"]).iloc[::7]
    new.to_csv(tmp_path / "new.csv", index=False)
    for extra, re_form in (([], "full"), (["--re-form", "none"], None)):
        status, _, err = run(["predict", saved, "--data", tmp_path / "new.csv", "-o", tmp_path / "p.csv", *extra],
                             capsys)
        assert status == 0, err
        got = pd.read_csv(tmp_path / "p.csv")
        assert list(got.columns) == [*new.columns, "predicted"]
        np.testing.assert_allclose(got["predicted"], fit.predict(new, re_form=re_form).to_numpy(), rtol=RTOL)


def test_predict_interval_and_report_refused_clearly(files, capsys, tmp_path, monkeypatch):
    saved = tmp_path / "d.memoe"
    memoe.lmm("Reaction ~ Days + (1 | Subject)", pd.read_csv(files["sleepstudy"])).fit().save(saved)
    fit = memoe.load(saved)
    import inspect

    if "interval" not in inspect.signature(fit.predict).parameters:
        status, _, err = run(["predict", saved, "--data", files["sleepstudy"], "--interval", "prediction"], capsys)
        assert status == 2
        assert "--interval" in err and "no interval option" in err and err.count("\n") == 1
    monkeypatch.delattr(memoe, "report", raising=False)
    monkeypatch.setitem(sys.modules, "memoe.plot.report", None)  # import of it fails as if absent
    status, _, err = run(["report", saved, "-o", tmp_path / "r.html"], capsys)
    assert status == 2
    assert "memoe.report" in err and err.count("\n") == 1


def test_report_calls_memoe_report(files, capsys, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(memoe, "report", lambda fit, path: calls.append((type(fit).__name__, str(path))),
                        raising=False)
    status, _, err = run(["fit", "Reaction ~ Days + (1 | Subject)", "--data", files["sleepstudy"], "-q",
                          "--report", tmp_path / "r.html"], capsys)
    assert status == 0, err
    assert calls == [("LmmResult", str(tmp_path / "r.html"))]


# ------------------------------------------------------------------------------------------ errors
def test_data_errors_are_one_line_with_status_2(files, capsys, tmp_path):
    ragged = tmp_path / "passwd"
    ragged.write_text("root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:A User,,,:/home/u:/bin/sh\n")
    passwd = tmp_path / "passwd2"  # as /etc/passwd: a comma appears only on a later line
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\nu:x:1:1:A,,,:/:/bin/sh\n")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 50)
    f = "Reaction ~ Days + (Days | Subject)"
    cases = [
        (["fit", f, "--data", tmp_path / "missing.csv"], "not found"),
        (["fit", f, "--data", ragged], "is not a table"),
        (["fit", f, "--data", passwd], "is not a table"),
        (["fit", f, "--data", binary], "is not a table"),
        (["fit", f, "--data", tmp_path], "is a directory"),
        (["fit", "Reaction ~ nope + (1 | Subject)", "--data", files["sleepstudy"]], "unknown column 'nope'"),
        (["fit", f, "--data", files["sleepstudy"], "--factor", "nope"], "--factor: unknown column 'nope'"),
        (["fit", f, "--data", files["sleepstudy"], "--levels", "Subject=1,2"], "not among the levels"),
        (["fit", f, "--data", files["sleepstudy"], "--nagq", "3"], "--nagq applies to a GLMM"),
        (["fit", f, "--data", files["sleepstudy"], "--ml", "--reml"], "not allowed with argument"),
        (["gls", "weight ~ Time", "--data", files["BodyWeight"], "--correlation", "cor9(1)"], "unknown --correlation"),
        (["select-k", "y ~ time + (time | id)", "--k", "4:1", "--data", files["memoe_sim2"]], "1 <= lo <= hi"),
        (["demo", "--starts", "0"], "--starts: must be an integer >= 1, got 0"),
        (["show", tmp_path / "none.memoe"], "not found"),
        (["show", ragged], "not a readable .memoe fit"),
        (["fit", f, "--data", files["sleepstudy"], "-o", tmp_path / "t.xlsx"], "unknown file type"),
        (["nope"], "invalid choice"),
    ]
    for argv, needle in cases:
        status, _, err = run(argv, capsys)
        assert status == 2, (argv, err)
        assert needle in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_bad_formula_message_is_plain_text(files, capsys):
    status, _, err = run(["fit", "Reaction ~ Days + {x + (1 | Subject)", "--data", files["sleepstudy"]], capsys)
    assert status == 2
    assert "\x1b" not in err and err.count("\n") == 1
    assert err.startswith("memoe fit: error: cannot parse the fixed-effects part")
    assert one_line("a\n\nb \x1b[1;31m⧛x⧚\x1b[0m") == "a (at: b >>x<<)"


def test_failed_fit_exits_1_and_debug_shows_traceback(files, capsys, monkeypatch):
    def boom(self, *a, **k):
        raise ConvergenceError("the optimiser did not converge (test)")

    monkeypatch.setattr(memoe.LMM, "fit", boom)
    argv = ["fit", "Reaction ~ Days + (1 | Subject)", "--data", files["sleepstudy"]]
    status, _, err = run(argv, capsys)
    assert status == 1
    assert err == "memoe fit: error: the optimiser did not converge (test)\n"
    status, _, err = run([*argv, "--debug"], capsys)
    assert status == 1
    assert "Traceback" in err and "ConvergenceError" in err

    monkeypatch.setattr(memoe.LMM, "fit", lambda self, *a, **k: np.linalg.cholesky(-np.eye(2)))
    status, _, err = run(argv, capsys)
    assert status == 1
    assert "LinAlgError" in err and "--debug" in err and err.count("\n") == 1


def test_version_help_and_datasets(capsys, tmp_path):
    status, stdout, _ = run(["--version"], capsys)
    assert status == 0 and stdout.strip() == f"memoe {memoe.__version__}"
    for cmd in ("fit", "gls", "lme", "gee", "memoe", "select-k", "show", "predict", "report", "demo", "datasets"):
        status, stdout, _ = run([cmd, "--help"], capsys)
        assert status == 0 and "examples:" in stdout, cmd
    status, stdout, _ = run(["datasets"], capsys)
    package_dir = Path(memoe.datasets.__file__).resolve().parent
    lines = stdout.strip().splitlines()
    assert len(lines) == len(memoe.datasets.names())
    for line in lines:
        path = Path(line.split()[3])
        assert path.is_file() and package_dir in path.resolve().parents, line
    status, _, err = run(["datasets", "--export", "Orthodont", tmp_path / "o.parquet", "-q"], capsys)
    assert status == 0, err
    back = pd.read_parquet(tmp_path / "o.parquet")
    assert list(back["Sex"].cat.categories) == ["Male", "Female"]
    status, _, err = run(["datasets", "--export", "nope", tmp_path / "o.csv"], capsys)
    assert status == 2 and "unknown data set 'nope'" in err


# ------------------------------------------------------------------------------------------ parsers
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("ar1", AR1()),
        ("corAR1(visit | id)", AR1(group="id", visit="visit")),
        ("ar1(~ 1 | id)", AR1(group="id")),
        ("car1(Time | Rat)", CAR1("Time", "Rat")),
        ("exp(Time | Rat, nugget)", Exp("Time", "Rat", nugget=True)),
        ("Exp(Time)", Exp("Time")),
        ("symm(visit | id)", Symm("id", visit="visit")),
        ("compsymm", CompSymm()),
        ("compsymm(| id)", CompSymm("id")),
    ],
)
def test_parse_correlation(text, want):
    assert parse_correlation(text) == want


@pytest.mark.parametrize("text", ["", "arma(1, 1, 1)", "car1", "car1(| Rat)", "exp(T | R, nuget)", "ar1(a | b | c)",
                                  "compsymm(t | id)", "ar1(1 +", "car1(Ti me | Rat)"])
def test_parse_correlation_refuses(text):
    with pytest.raises(ArgumentError, match="--correlation"):
        parse_correlation(text)


def test_parse_weights_ks_levels():
    assert parse_weights("varident(Diet)") == VarIdent("Diet")
    assert parse_weights("varIdent(~ 1 | Diet)") == VarIdent("Diet")
    for bad in ("varfoo(x)", "varident()", "varident(a | b)", "varfixed()"):
        with pytest.raises(ArgumentError, match="--weights"):
            parse_weights(bad)
    assert parse_ks("1:4") == [1, 2, 3, 4]
    assert parse_ks("3,1, 2") == [1, 2, 3]
    for bad in ("0:2", "1-3", "1,1", "a"):
        with pytest.raises(ArgumentError, match="--k"):
            parse_ks(bad)
    assert parse_levels(["g=b,a"]) == {"g": ["b", "a"]}
    for bad in (["g"], ["g=a,,b"], ["g=a,a"], ["g=a", "g=b"]):
        with pytest.raises(ArgumentError, match="--levels"):
            parse_levels(bad)


def test_apply_factors_orders_levels():
    df = pd.DataFrame({"n": [10, 2, 2, np.nan], "s": ["b", "a", None, "c"]})
    out = apply_factors(df, ["n", "s"], {})
    assert list(out["n"].cat.categories) == ["2", "10"]  # numeric order, not text order
    assert list(out["s"].cat.categories) == ["a", "b", "c"]
    assert out["n"].isna().sum() == 1 and out["s"].isna().sum() == 1
    out = apply_factors(df, [], {"s": ["c", "b", "a"]})
    assert list(out["s"].cat.categories) == ["c", "b", "a"]
    with pytest.raises(DataError, match="not among the levels"):
        apply_factors(df, [], {"s": ["a", "b"]})


# ------------------------------------------------------------------------------------------ real processes
@pytest.mark.slow
def test_subprocess_every_subcommand(tmp_path):
    """``python -m memoe.cli`` for each subcommand: exit codes, files, stderr of one line on error."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}

    def cli(*argv, status=0):
        r = subprocess.run([sys.executable, "-m", "memoe.cli", *map(str, argv)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == status, (argv, r.stderr)
        return r

    assert cli("--version").stdout.strip() == f"memoe {memoe.__version__}"
    cli("datasets", "--export", "sleepstudy", "sleep.csv")
    r = cli("fit", "Reaction ~ Days + (Days | Subject)", "--data", "sleep.csv", "--save", "s.memoe", "-o", "t.csv")
    assert "REML criterion at convergence" in r.stdout
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", pd.read_csv(tmp_path / "sleep.csv")).fit()
    assert_tidy_equal(pd.read_csv(tmp_path / "t.csv"), fit.tidy())
    r = cli("show", "s.memoe", "--glance")
    np.testing.assert_allclose(json.loads(r.stdout)["logLik"], fit.loglik, rtol=RTOL)
    cli("predict", "s.memoe", "--data", "sleep.csv", "-o", "p.csv", "--no-progress")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["predicted"], fit.predict(None).to_numpy(), rtol=RTOL)
    r = cli("fit", "Reaction ~ Days + (Days | Subject)", "--data", "/nonexistent/x.csv", status=2)
    assert r.stderr == "memoe fit: error: --data file '/nonexistent/x.csv' not found\n"
    r = cli("demo", "--starts", "0", status=2)
    assert r.stderr.count("\n") == 1 and "--starts" in r.stderr
