"""Loading files from others: no code runs, sizes are capped, every failure is a PersistenceError.

Forged files are built here from real saves (``save`` then rewrite ``meta.json`` or ``arrays.npz``
inside the zip), or byte by byte where the zip headers themselves are the attack.
"""

from __future__ import annotations

import ast
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import memoe
from memoe.core.persist.archive import json_depth
from memoe.core.persist.formula_check import check_formula
from memoe.core.persist.registry import registered
from memoe.errors import PersistenceTypeError
from memoe.marginal import CAR1
from memoe.persist import Limits, PersistenceError, load, save

SRC = Path(memoe.__file__).parent


# ---------------------------------------------------------------------------------------------- helpers
def members(path_or_bytes) -> dict[str, bytes]:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with zipfile.ZipFile(src) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zip(path, items: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in items.items():
            zf.writestr(name, data)


def forge_meta(path, edit) -> None:
    """Rewrite meta.json of a saved file through ``edit(meta)``; arrays.npz is kept byte for byte."""
    parts = members(path)
    meta = json.loads(parts["meta.json"])
    edit(meta)
    parts["meta.json"] = json.dumps(meta).encode()
    write_zip(path, parts)


def npy_bytes(header: dict, payload: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def npz_with(path, key: str, raw_npy: bytes) -> None:
    """Replace array ``key`` of a saved file by the raw npy bytes given (a forged header)."""
    parts = members(path)
    arrays = members(parts["arrays.npz"])
    arrays[f"{key}.npy"] = raw_npy
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in arrays.items():
            zf.writestr(name, data)
    parts["arrays.npz"] = buf.getvalue()
    write_zip(path, parts)


def raw_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive written byte by byte: (name, stored bytes, method, crc, declared size) per member.

    The declared (decompressed) size is written as given, so a test can make a header lie.
    """
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in entries:
        offset = len(out)
        bname = name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(bname), 0)
        out += bname + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size, len(bname), 0, 0, 0, 0,
            0, offset,
        )
        central += bname
    cd_offset = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    return bytes(out)


def deflate_of_spaces(n_mib: int) -> tuple[bytes, int]:
    """Raw deflate stream of ``n_mib`` MiB of spaces, built from one compressed MiB (fast) and its CRC-32."""
    chunk = b" " * (1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    # a full flush resets the window, so the compressed block can be repeated as is
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(chunk, crc)
    return block * n_mib + tail, crc


@pytest.fixture(scope="module")
def sleep():
    return memoe.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleep):
    return memoe.lmm("Reaction ~ Days + (1 | Subject)", sleep).fit()


@pytest.fixture
def saved(sleep_fit, tmp_path):
    path = tmp_path / "sleep.memoe"
    save(sleep_fit, path)
    return path


# ---------------------------------------------------------------------------------------------- code in formulas
def attacks(marker: Path) -> dict[str, str]:
    m = str(marker)
    return {
        "ctypes": f'Reaction ~ {{np.ctypeslib.ctypes.CDLL(None).system(b"touch {m}") + Days}} + (1 | Subject)',
        "savetxt": f"Reaction ~ {{np.savetxt('{m}', [1]) or Days}} + (1 | Subject)",
        "os.system": f"Reaction ~ {{__import__('os').system('touch {m}') * 0 + Days}} + (1 | Subject)",
        "import": f"Reaction ~ Days + {{__import__('pathlib').Path('{m}').touch()}} + (1 | Subject)",
        "bases": "Reaction ~ {().__class__.__bases__[0].__subclasses__()} + Days + (1 | Subject)",
        "lambda": f"Reaction ~ {{(lambda: np.savetxt('{m}', [1]))() or Days}} + (1 | Subject)",
        "attribute chain": f"Reaction ~ {{np.lib.npyio.savetxt('{m}', [1]) or Days}} + (1 | Subject)",
        "method of a column": f"Reaction ~ {{Days.to_csv('{m}') or Days}} + (1 | Subject)",
        "bare call term": f"Reaction ~ np.savetxt('{m}', Days) + (1 | Subject)",
        "f-string": f"Reaction ~ {{f\"{{np.savetxt('{m}', [1])}}\" and Days}} + (1 | Subject)",
        "keyword value": f"Reaction ~ poly(Days, degree=np.savetxt('{m}', [1]) or 2) + (1 | Subject)",
        "keyword name": f"Reaction ~ np.log(Days, out=np.savetxt('{m}', [1])) + (1 | Subject)",
        "kwargs": f"Reaction ~ np.log(Days, **{{'where': np.savetxt('{m}', [1])}}) + (1 | Subject)",
        "contrast": f"Reaction ~ C(Subject, np.savetxt('{m}', [1])) + Days + (1 | Subject)",
        "comment": f"Reaction ~ Days # {{np.savetxt('{m}', [1])}}\n + (1 | Subject)",
        "triple quotes": f"Reaction ~ C(Subject, \"\"\"a\" + {{np.savetxt('{m}', [1])}} + \"b\"\"\") + (1 | Subject)",
        "string hiding braces": f"Reaction ~ C(Subject, 'x) + {{np.savetxt(\"{m}\", [1])}} + (') + (1 | Subject)",
        "random term": f"Reaction ~ Days + ({{np.savetxt('{m}', [1]) or Days}} | Subject)",
        "response": f"{{np.savetxt('{m}', [1]) or Reaction}} ~ Days + (1 | Subject)",
        "walrus": "Reaction ~ {(np := 1)} + Days + (1 | Subject)",
        "subscript": "Reaction ~ {Days[0]} + Days + (1 | Subject)",
        "dunder": "Reaction ~ np.__dict__ + Days + (1 | Subject)",
        "builtins": "Reaction ~ {eval('1')} + Days + (1 | Subject)",
        "huge power": "Reaction ~ I(9**9**9) + Days + (1 | Subject)",
    }


def test_the_attack_runs_code_when_a_user_types_it(sleep, tmp_path):
    """Sanity: a formula typed in Python is code (not checked), so the forged files below are real threats."""
    marker = tmp_path / "typed"
    memoe.lmm(attacks(marker)["savetxt"], sleep)
    assert marker.exists()


@pytest.mark.parametrize("attack", list(attacks(Path("x"))))
def test_a_formula_that_would_run_code_is_refused_and_nothing_runs(saved, tmp_path, attack):
    marker = tmp_path / "ran"
    formula = attacks(marker)[attack]
    forge_meta(saved, lambda m: m["model"].update(formula=formula))
    with pytest.raises(PersistenceError, match="formula"):
        load(saved)
    assert not marker.exists()


def test_the_error_names_the_offending_piece(saved):
    forge_meta(saved, lambda m: m["model"].update(formula="Reaction ~ Days + os.system + (1 | Subject)"))
    with pytest.raises(PersistenceError, match=r"'os\.system'"):
        load(saved)
    forge_meta(saved, lambda m: m["model"].update(formula="Reaction ~ Nope + (1 | Subject)"))
    with pytest.raises(PersistenceError, match="'Nope' is not a column of the saved data"):
        load(saved)


ACCEPTED = [
    "Reaction ~ Days + (Days | Subject)",
    "Reaction ~ Days + (Days || Subject)",
    "Reaction ~ 0 + Days + (1 | Subject/Days)",
    "~ w1 + w2",
    "np.log(Reaction) ~ np.sqrt(Days) + I(Days**2) - 1",
    "Reaction ~ {np.log1p(Days)} + Days:Subject + Days %in% Subject + (Days + Subject)^2",
    "Reaction ~ C(Subject, contr.sum) + C(Subject, 'treatment') + C(Subject, Treatment('a')) + factor(Days)",
    "Reaction ~ poly(Days, degree=2, raw=True) + bs(Days, df=4) + scale(Days) + center(Days)",
    "cbind(Reaction, Days - Reaction) ~ offset(Days / 10) + (1 | Subject)",
    "Reaction ~ np.sin(2 * np.pi * Days) + numpy.cos(np.e * Days)",
    "Reaction ~ a.b + `odd name (x)`",
]
COLUMNS = ["Reaction", "Days", "Subject", "w1", "w2", "a.b", "odd name (x)"]


@pytest.mark.parametrize("formula", ACCEPTED)
def test_the_allow_list_accepts_ordinary_formulas(formula):
    check_formula(formula, COLUMNS)


@pytest.mark.parametrize("formula", [
    "Reaction ~ x", "Reaction ~ `x`", "Reaction ~ Days ~ Days", "Reaction ~ .", "Reaction ~ Days == 1",
    "Reaction ~ Days if Days else 1", "Reaction ~ [Days]", "Reaction ~ 'text'", "Reaction ~ Days % 2",
    "Reaction ~ np.linalg.inv(Days)", "Reaction ~ log", "Reaction ~ b'x'", "Reaction ~ Days \\\n + 1",
    "Reaction ~ " + "(" * 500 + "Days" + ")" * 500, "Reaction ~ " + " + ".join(["Days"] * 2000),
])
def test_the_allow_list_refuses_everything_else(formula):
    with pytest.raises(PersistenceError):
        check_formula(formula, COLUMNS)
    with pytest.raises(PersistenceError, match="must be a string"):
        check_formula(["Reaction ~ Days"], COLUMNS)


def test_gating_formula_group_and_structure_fields_are_checked(tmp_path):
    marker = tmp_path / "ran"
    code = f"{{np.savetxt('{marker}', [1]) or w1}}"
    sim = memoe.datasets.load("memoe_sim2")
    moe = memoe.MoE("y ~ time", gating="~ w1", k=2, data=sim, group="id").fit(n_starts=1, seed=1, progress=False)
    path = tmp_path / "moe.memoe"
    save(moe, path)
    forge_meta(path, lambda m: m["model"].update(gating=f"~ {code}"))
    with pytest.raises(PersistenceError, match="gating formula"):
        load(path)
    save(moe, path)
    forge_meta(path, lambda m: m["model"].update(group=code))
    with pytest.raises(PersistenceError, match="group"):
        load(path)

    bw = memoe.datasets.load("BodyWeight")
    gls = memoe.gls("weight ~ Time", bw, correlation=CAR1("Time", "Rat")).fit()
    save(gls, path)
    forge_meta(path, lambda m: m["model"]["correlation"]["fields"].update(time=code.replace("w1", "Time")))
    with pytest.raises(PersistenceError, match="field 'time'"):
        load(path)

    orth = memoe.datasets.load("Orthodont")
    gee = memoe.gee("distance ~ age", orth, "Subject").fit()
    save(gee, path)
    forge_meta(path, lambda m: m["model"].update(formula=f"distance ~ {code.replace('w1', 'age')}"))
    with pytest.raises(PersistenceError, match="GEE formula"):
        load(path)
    save(gee, path)
    forge_meta(path, lambda m: m["model"].update(time=["age"]))
    with pytest.raises(PersistenceError, match="time"):
        load(path)

    cbpp = memoe.datasets.load("cbpp")
    glmm = memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial").fit()
    save(glmm, path)
    forge_meta(path, lambda m: m["model"].update(formula=f"cbind(incidence, {code.replace('w1', 'size')}) ~ 1"))
    with pytest.raises(PersistenceError, match="GLMM formula"):
        load(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- sizes
def test_an_npy_header_declaring_8_tib_is_refused_before_allocation(saved):
    npz_with(saved, "fit.theta", npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)}, b"\0" * 8))
    with pytest.raises(PersistenceError, match=r"fit\.theta.*declares shape \(1099511627776,\)"):
        load(saved)


def test_sizes_beyond_configured_limits_are_refused(saved):
    # meta.json has about 2 kB and arrays.npz about 6 kB after decompression
    with pytest.raises(PersistenceError, match=r"'arrays\.npz' declares \d+ bytes after decompression; at most"):
        load(saved, limits=Limits(max_total_bytes=4000))
    with pytest.raises(PersistenceError, match=r"'meta\.json' declares"):
        load(saved, limits=Limits(max_meta_bytes=100))
    with pytest.raises(PersistenceError, match="at most 2 are read"):
        load(saved, limits=Limits(max_arrays=2))
    with pytest.raises(PersistenceError, match=r"nests \d+ levels deep; at most 4"):
        load(saved, limits=Limits(max_json_depth=4))
    assert load(saved, limits=Limits(max_total_bytes=10_000)).nobs == 180


def test_an_object_dtype_header_is_refused_before_reading(saved):
    npz_with(saved, "fit.theta", npy_bytes({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x80\x04N."))
    with pytest.raises(PersistenceError, match="refusing to load an object array"):
        load(saved)


@pytest.mark.parametrize("descr", [[("a", "<f8")], "V8"])
def test_structured_and_void_dtypes_are_refused(saved, descr):
    npz_with(saved, "fit.theta", npy_bytes({"descr": descr, "fortran_order": False, "shape": (1,)}, b"\0" * 8))
    with pytest.raises(PersistenceError, match="dtype"):
        load(saved)


def test_an_npy_payload_longer_or_shorter_than_its_header_is_refused(saved):
    header = {"descr": "<f8", "fortran_order": False, "shape": (2,)}
    npz_with(saved, "fit.theta", npy_bytes(header, b"\0" * 24))
    with pytest.raises(PersistenceError, match="more bytes"):
        load(saved)
    npz_with(saved, "fit.theta", npy_bytes(header, b"\0" * 8))
    with pytest.raises(PersistenceError, match=r"bytes stored|truncated"):
        load(saved)


def test_a_300_mb_meta_json_is_refused_without_decompressing_it(saved):
    data, crc = deflate_of_spaces(300)
    arrays = members(saved)["arrays.npz"]
    forged = raw_zip([
        ("meta.json", data, zipfile.ZIP_DEFLATED, crc, 300 << 20),
        ("arrays.npz", arrays, zipfile.ZIP_STORED, zlib.crc32(arrays), len(arrays)),
    ])
    with pytest.raises(PersistenceError, match=r"'meta\.json' declares 314572800 bytes"):
        load(forged)


def test_a_header_that_lies_about_the_size_is_caught_by_the_bounded_read(saved):
    data, crc = deflate_of_spaces(64)
    arrays = members(saved)["arrays.npz"]
    forged = raw_zip([
        ("meta.json", data, zipfile.ZIP_DEFLATED, crc, 1000),  # declares 1000 bytes, holds 64 MiB
        ("arrays.npz", arrays, zipfile.ZIP_STORED, zlib.crc32(arrays), len(arrays)),
    ])
    with pytest.raises(PersistenceError, match=r"meta\.json"):
        load(forged)


def test_the_compression_ratio_cap(saved):
    with pytest.raises(PersistenceError, match="ratio"):
        load(saved, limits=Limits(max_ratio=1.5, ratio_floor_bytes=0))


def test_json_nested_100000_deep_is_refused_before_parsing(saved):
    meta = b'{"format": "memoe-fit", "format_version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    write_zip(saved, {"meta.json": meta, "arrays.npz": members(saved)["arrays.npz"]})
    with pytest.raises(PersistenceError, match="nests 100001 levels"):
        load(saved)


def test_json_depth_ignores_brackets_inside_strings():
    assert json_depth(b'{"a": ["[[[[", {"b": "\\"]]]"}]}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b"1") == 0


def test_too_many_or_duplicated_members_are_refused(saved):
    parts = members(saved)
    write_zip(saved, {**parts, **{f"extra{i}": b"" for i in range(20)}})
    with pytest.raises(PersistenceError, match="22 members"):
        load(saved)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("meta.json", parts["meta.json"])
        zf.writestr("arrays.npz", parts["arrays.npz"])
        zf.writestr("meta.json", parts["meta.json"])
    with pytest.raises(PersistenceError, match="two zip members"):
        load(buf.getvalue())


# ---------------------------------------------------------------------------------------------- malformed content
@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("model"), "no 'model' record"),
    (lambda m: m.update(model="LMM"), "no 'model' record"),
    (lambda m: m.pop("fit"), "malformed"),
    (lambda m: m.update({"class": ["LmmResult"]}), "unsupported result class"),
    (lambda m: m["model"].update({"class": {"a": 1}}), "unsupported model class"),
    (lambda m: m["model"].pop("formula"), "must be a string"),
    (lambda m: m["model"].update(formula=["Reaction ~ Days"]), "must be a string"),
    (lambda m: m["model"].pop("data"), "'data' record"),
    (lambda m: m["model"]["data"].update(columns="Reaction"), "'data' record"),
    (lambda m: m["model"]["frame"].update(n_dropped="many"), "malformed"),
    (lambda m: m["model"]["frame"].update(index=[1, 2]), "malformed"),
    (lambda m: m["fit"].update(opt=None), "malformed"),
    (lambda m: m["fit"].update(loglik="high"), "malformed"),
    (lambda m: m["model"]["data"]["columns"][2].update(kind="json", dtype="category", values=[]), "dtype 'category'"),
    (lambda m: m["model"]["data"]["columns"][2].update(kind="json", dtype="object", values="abc"), "not a list"),
    (lambda m: m["model"]["data"]["columns"][2].update(kind="pickle"), "unknown column encoding"),
])
def test_missing_keys_and_wrong_types_are_persistence_errors(saved, edit, match):
    forge_meta(saved, edit)
    with pytest.raises(PersistenceError, match=match):
        load(saved)


def test_missing_and_wrong_arrays_are_persistence_errors(saved):
    parts = members(saved)
    arrays = members(parts["arrays.npz"])
    for bad in ({k: v for k, v in arrays.items() if k != "fit.theta.npy"}, {**arrays, "extra.txt": b"x"}):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in bad.items():
                zf.writestr(name, data)
        write_zip(saved, {**parts, "arrays.npz": buf.getvalue()})
        with pytest.raises(PersistenceError):
            load(saved)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40])
def test_bytes_that_are_not_a_memoe_file(content, tmp_path):
    with pytest.raises(PersistenceError, match="not a memoe file"):
        load(content)
    path = tmp_path / "f.memoe"
    path.write_bytes(content)
    with pytest.raises(PersistenceError, match="not a memoe file"):
        load(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_a_truncated_file(saved, keep):
    data = saved.read_bytes()
    with pytest.raises(PersistenceError):
        load(data[: int(len(data) * keep)])


def test_a_corrupted_member(saved):
    data = bytearray(saved.read_bytes())
    info = zipfile.ZipFile(saved).getinfo("arrays.npz")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    with pytest.raises(PersistenceError, match=r"arrays\.npz"):
        load(bytes(data))


def test_a_missing_file(tmp_path):
    with pytest.raises(PersistenceError, match="cannot open"):
        load(tmp_path / "nope.memoe")


# ------------------------------------------------------------------------------------- what load and save accept
@pytest.mark.parametrize("bad", [None, 123, 1.5, ["a.memoe"], {"path": "a"}, object()])
def test_load_refuses_other_types_naming_them(bad):
    with pytest.raises(PersistenceTypeError, match=type(bad).__name__) as info:
        load(bad)
    assert isinstance(info.value, TypeError) and isinstance(info.value, PersistenceError)


def test_load_and_save_refuse_text_mode_files(saved, sleep_fit, tmp_path):
    with open(saved, encoding="latin-1") as f, pytest.raises(PersistenceTypeError, match="text-mode"):
        load(f)
    with open(tmp_path / "t.memoe", "w") as f, pytest.raises(PersistenceTypeError, match="text-mode"):
        save(sleep_fit, f)
    for bad in (None, 123, b"bytes are no path here"):
        with pytest.raises(PersistenceTypeError, match=type(bad).__name__):
            save(sleep_fit, bad)


class _Stream(io.RawIOBase):
    """A readable, non-seekable binary stream (a pipe or socket)."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._f.readinto(b)


def test_load_from_bytes_file_objects_and_paths(saved, sleep_fit):
    data = saved.read_bytes()
    with open(saved, "rb") as f:
        sources = [
            # bytes are the file's contents, never a path
            data, bytearray(data), memoryview(data), io.BytesIO(data), f, _Stream(data), str(saved), saved,
        ]
        for source in sources:
            back = load(source)
            assert back.loglik == sleep_fit.loglik, type(source).__name__
    buf = io.BytesIO()
    save(sleep_fit, buf)
    assert memoe.load(buf.getvalue()).fixef.equals(sleep_fit.fixef)


# ---------------------------------------------------------------------------------------------- the registry
def test_every_family_registers_its_codec_and_memoe_load_is_the_loader():
    names = {c.name for c in registered()}
    assert names == {
        "LmmResult", "LmListResult", "GlmmResult", "GlmResult", "MEMoEResult", "MarginalResult", "GEEResult"
    }
    assert memoe.load is load and "load" in memoe.__all__


def test_core_persist_imports_no_model_family():
    families = ("memoe.lmm", "memoe.glmm", "memoe.gee", "memoe.marginal", "memoe.moe", "memoe.persist")
    for file in sorted((SRC / "core" / "persist").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n in families or n.startswith(tuple(f + "." for f in families))]
            assert not bad, f"{file.name} imports {bad}"
