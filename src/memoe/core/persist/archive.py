"""The ``.memoe`` container: one zip archive holding ``meta.json`` and ``arrays.npz``, read defensively.

A file from someone else is data, never code, and may be hostile. Reading it therefore

* never unpickles (object dtypes are refused from the npy header, before any byte of data is read);
* caps every size before allocating (:class:`Limits`): the number of zip members and of arrays, each
  member's declared decompressed size and its ratio to the compressed size, the bytes actually
  decompressed (headers can lie, so reads are bounded), each array's declared shape times item size,
  and the nesting depth of ``meta.json`` (scanned before :func:`json.loads` recurses);
* turns every failure (not a zip, truncated, corrupt, wrong types) into a
  :class:`~memoe.errors.PersistenceError` that says what is wrong.

Formulas in ``meta.json`` are checked by :mod:`memoe.core.persist.formula_check` before a codec
rebuilds the model (see :func:`memoe.core.persist.load`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import zipfile
from typing import IO

import numpy as np

from memoe.errors import PersistenceError, PersistenceTypeError

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Limits",
    "PathOrFile",
    "PersistenceError",
    "Source",
    "read_archive",
    "write_archive",
]

# identifies a memoe fit among other zip files (and JSON documents named meta.json)
FORMAT_NAME = "memoe-fit"
# bump when a reader of the previous version could no longer rebuild the fit from a new file
FORMAT_VERSION = 1

META = "meta.json"
ARRAYS = "arrays.npz"

PathOrFile = str | os.PathLike | IO[bytes]
# what load() reads: a path, a binary file object, or the file's contents
Source = str | os.PathLike | IO[bytes] | bytes | bytearray | memoryview

_MiB = 1 << 20
_GiB = 1 << 30
# npy dtype kinds a fit stores: bool, int, uint, float, complex, timedelta, datetime, str, bytes
_ARRAY_KINDS = "biufcmMUS"
# numpy's own cap on npy header length (headers of plain arrays are ~100 bytes)
_MAX_NPY_HEADER = 10_000


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps applied while reading a ``.memoe`` file, all checked before the memory is allocated.

    The defaults admit any fit of a data set up to about 2 GiB while refusing files built to exhaust
    memory or the stack. Pass ``load(path, limits=Limits(max_total_bytes=8 << 30))`` for bigger fits.

    Attributes
    ----------
    max_total_bytes : int
        Decompressed bytes of ``meta.json`` plus ``arrays.npz``, and separately the bytes of all arrays.
    max_meta_bytes : int
        Decompressed bytes of ``meta.json``.
    max_members : int
        Members of the outer zip archive (a memoe file has two).
    max_arrays : int
        Arrays in ``arrays.npz``.
    max_ratio : float
        Largest decompressed / compressed size of a zip member that declares more than
        ``ratio_floor_bytes`` (zip bombs; deflate itself cannot exceed about 1032).
    ratio_floor_bytes : int
        Members up to this size are exempt from ``max_ratio`` (small members compress well).
    max_json_depth : int
        Nesting depth of ``meta.json`` (a fit's metadata nests about 8 deep).

    Examples
    --------
    >>> import memoe
    >>> from memoe.persist import Limits
    >>> fit = memoe.lmm("Reaction ~ Days + (1 | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> fit.save("sleep.memoe")
    >>> memoe.load("sleep.memoe", limits=Limits(max_total_bytes=8 << 30)).nobs
    180
    """

    max_total_bytes: int = 2 * _GiB
    max_meta_bytes: int = 256 * _MiB
    max_members: int = 16
    max_arrays: int = 100_000
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 64 * _MiB
    max_json_depth: int = 64


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------------- writing
def write_archive(path: PathOrFile, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` as JSON and ``arrays`` as an npz into one zip archive.

    Everything is serialised in memory first, so a fit that cannot be saved leaves no partial file.

    Parameters
    ----------
    path : str, path-like or binary writable file object

    Raises
    ------
    PersistenceTypeError
        ``path`` is none of those (e.g. None, a number, a text-mode file).
    PersistenceError
        An array would need pickling (object dtype), or the file cannot be written.
    """
    target = _check_target(path)
    for key, arr in arrays.items():
        if arr.dtype.hasobject:
            # np.savez would silently pickle it, and a safe reader could not open the file
            raise PersistenceError(f"internal: array {key!r} has an object dtype and cannot be saved without pickle")
    meta_bytes = json.dumps(meta, indent=1, allow_nan=True).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(META, meta_bytes)
            zf.writestr(ARRAYS, buf.getvalue())
    except OSError as exc:
        raise PersistenceError(f"cannot write {_name(path)!r}: {exc}") from None


def _check_target(path: object):
    if isinstance(path, str | os.PathLike):
        return path
    if hasattr(path, "write"):
        if isinstance(path, io.TextIOBase) or "b" not in getattr(path, "mode", "b"):
            raise PersistenceTypeError(
                f"save needs a path or a binary file object, got a text-mode {type(path).__name__}: open it with 'wb'"
            )
        return path
    raise PersistenceTypeError(
        f"save needs a path (str or os.PathLike) or a binary file object opened for writing, got {type(path).__name__}"
    )


# ---------------------------------------------------------------------------------------------- reading
def read_archive(source: Source, limits: Limits | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a ``.memoe`` archive within ``limits``.

    Parameters
    ----------
    source : str, path-like, bytes-like or binary file object
        A path, the file's contents, or a binary file object open for reading.
    limits : Limits, optional
        Size caps; :data:`DEFAULT_LIMITS` when omitted.

    Returns
    -------
    meta : dict
    arrays : dict of str -> numpy.ndarray

    Raises
    ------
    PersistenceTypeError
        ``source`` is none of the accepted types.
    PersistenceError
        Not a memoe file, an unsupported or newer format version, a size beyond ``limits``, arrays
        that would need unpickling, or a damaged archive.
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    if not isinstance(limits, Limits):
        raise PersistenceTypeError(f"limits must be a memoe.persist.Limits, got {type(limits).__name__}")
    name = _name(source)
    fileobj, close = _open_source(source, name, limits)
    try:
        try:
            zf = zipfile.ZipFile(fileobj, "r")
        except Exception as exc:  # BadZipFile, an unsupported zip version, EOFError, ...: not a zip we read
            raise PersistenceError(f"{name!r} is not a memoe file (not a readable zip archive: {exc})") from None
        with zf:
            meta_info, arrays_info = _members(zf, name, limits)
            meta = _read_meta(_read_member(zf, meta_info, limits.max_meta_bytes, name), name, limits)
            budget = limits.max_total_bytes - meta_info.file_size
            arrays = _read_arrays(_read_member(zf, arrays_info, budget, name), name, limits)
    finally:
        if close:
            fileobj.close()
    return meta, arrays


def _name(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return str(getattr(source, "name", "<file object>"))


def _open_source(source: object, name: str, limits: Limits):
    """A seekable binary file object for ``source`` and whether this module must close it."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, str | os.PathLike):
        try:
            return open(source, "rb"), True
        except (OSError, ValueError) as exc:
            raise PersistenceError(f"cannot open {name!r}: {exc}") from None
    if hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            raise PersistenceTypeError(
                f"load needs a binary file object, got a text-mode {type(source).__name__}: open the file with 'rb'"
            )
        try:
            probe = source.read(0)
            seekable = bool(getattr(source, "seekable", lambda: False)())
        except Exception as exc:  # a file object of any kind: report whatever it raised
            raise PersistenceError(f"cannot read {name!r}: {type(exc).__name__}: {exc}") from None
        if not isinstance(probe, bytes):
            raise PersistenceTypeError(
                f"load needs a binary file object, but {type(source).__name__}.read() gives "
                f"{type(probe).__name__}: open the file with 'rb'"
            )
        if seekable:
            return source, False
        # a pipe or socket: zipfile needs to seek, so read it (bounded) into memory
        data = _bounded_read(source, limits.max_total_bytes + _MiB, f"{name!r}")
        return io.BytesIO(data), True
    raise PersistenceTypeError(
        "load needs a path (str or os.PathLike), the file's contents (bytes, bytearray, memoryview) or a binary "
        f"file object, got {type(source).__name__}"
    )


def _members(zf: zipfile.ZipFile, name: str, limits: Limits) -> tuple[zipfile.ZipInfo, zipfile.ZipInfo]:
    """The two members, after checking the member count, duplicates and declared sizes."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise PersistenceError(
            f"{name!r} is not a memoe file: its zip archive has {len(infos)} members (a memoe file has 2; "
            f"at most {limits.max_members} are read)"
        )
    found: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.filename in found:
            raise PersistenceError(f"{name!r} has two zip members named {info.filename!r}")
        found[info.filename] = info
    if META not in found or ARRAYS not in found:
        raise PersistenceError(f"{name!r} is not a memoe file (it lacks {META} and/or {ARRAYS})")
    meta_info, arrays_info = found[META], found[ARRAYS]
    _check_declared(meta_info, limits.max_meta_bytes, name, limits)
    _check_declared(arrays_info, limits.max_total_bytes, name, limits)
    total = meta_info.file_size + arrays_info.file_size
    if total > limits.max_total_bytes:
        raise PersistenceError(
            f"{name!r} declares {total} bytes after decompression; at most {limits.max_total_bytes} are read "
            "(pass limits=memoe.persist.Limits(max_total_bytes=...) to load a bigger fit you trust)"
        )
    return meta_info, arrays_info


def _check_declared(info: zipfile.ZipInfo, cap: int, name: str, limits: Limits) -> None:
    where = f"{name!r}: member {info.filename!r}"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise PersistenceError(f"{where} uses zip compression method {info.compress_type}; memoe writes deflate")
    if info.flag_bits & 0x1:
        raise PersistenceError(f"{where} is encrypted")
    if info.file_size > cap:
        raise PersistenceError(
            f"{where} declares {info.file_size} bytes after decompression; at most {cap} are read "
            "(pass limits=memoe.persist.Limits(...) to load a bigger fit you trust)"
        )
    if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise PersistenceError(
            f"{where} declares {info.file_size} bytes from {info.compress_size} compressed bytes, a ratio above "
            f"{limits.max_ratio:g} (a zip bomb?)"
        )


def _bounded_read(f, cap: int, where: str) -> bytes:
    """Read ``f`` to its end, refusing once more than ``cap`` bytes have come (never holding more)."""
    chunks, total = [], 0
    while True:
        chunk = f.read(min(8 * _MiB, cap + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            raise PersistenceError(f"{where} holds more than {cap} bytes (more than declared or allowed)")
        chunks.append(chunk)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, name: str) -> bytes:
    """The member's bytes, at most its declared size (a header that lies is caught here) and ``cap``."""
    where = f"{name!r}: member {info.filename!r}"
    try:
        with zf.open(info) as f:
            data = _bounded_read(f, min(info.file_size, cap), where)
    except PersistenceError:
        raise
    except Exception as exc:  # zlib.error, BadZipFile (CRC), EOFError on truncation, OSError, ...
        raise PersistenceError(
            f"{where} cannot be read ({type(exc).__name__}: {exc}): damaged or truncated file"
        ) from None
    if len(data) != info.file_size:
        raise PersistenceError(f"{where} holds {len(data)} bytes, its header declares {info.file_size}")
    return data


# a JSON string (escapes included); removed before counting brackets so "[" inside strings is not counted
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """Largest nesting depth of brackets in a JSON text, without recursing (for the depth cap)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def _read_meta(raw: bytes, name: str, limits: Limits) -> dict:
    depth = json_depth(raw)
    if depth > limits.max_json_depth:
        raise PersistenceError(
            f"{name!r} is not a memoe file ({META} nests {depth} levels deep; at most {limits.max_json_depth} are read)"
        )
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert
        raise PersistenceError(f"{name!r} is not a memoe file ({META} is not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise PersistenceError(f"{name!r} is not a memoe file ({META} does not declare format {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PersistenceError(f"{name!r} has an unsupported format version {version!r}")
    if version > FORMAT_VERSION:
        raise PersistenceError(
            f"{name!r} was saved in format version {version} by memoe {meta.get('memoe_version', '?')!s:.40}; this "
            f"memoe reads format versions up to {FORMAT_VERSION}: upgrade memoe to load it"
        )
    return meta


def _read_arrays(raw: bytes, name: str, limits: Limits) -> dict[str, np.ndarray]:
    """The arrays of the npz, each checked from its npy header before its data are read."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw), "r")
    except Exception as exc:  # BadZipFile, an unsupported zip version, EOFError, ...
        raise PersistenceError(f"{name!r}: {ARRAYS} is not a readable npz archive: {exc}") from None
    out: dict[str, np.ndarray] = {}
    budget = limits.max_total_bytes
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_arrays:
            raise PersistenceError(
                f"{name!r}: {ARRAYS} holds {len(infos)} arrays; at most {limits.max_arrays} are read"
            )
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else None
            if key is None or key in out:
                raise PersistenceError(f"{name!r}: {ARRAYS} has an unexpected member {info.filename!r}")
            _check_declared(info, budget, f"{name}: {ARRAYS}", limits)
            out[key] = _read_npy(zf, info, key, budget, name)
            budget -= out[key].nbytes
    return out


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, budget: int, name: str) -> np.ndarray:
    where = f"{name!r}: array {key!r}"
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = _npy_header(f, where)
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            if nbytes > budget or nbytes > info.file_size:
                than = f"the {info.file_size} bytes stored" if nbytes <= budget else f"the {budget} bytes allowed"
                raise PersistenceError(f"{where} declares shape {shape} of {dtype} ({nbytes} bytes), more than {than}")
            buf = bytearray(nbytes)
            view, pos = memoryview(buf), 0
            while pos < nbytes:
                got = f.readinto(view[pos:])
                if not got:
                    raise PersistenceError(f"{where} is truncated: {pos} of {nbytes} bytes")
                pos += got
            if f.read(1):
                raise PersistenceError(f"{where} holds more bytes than its shape {shape} of {dtype} needs")
    except PersistenceError:
        raise
    except Exception as exc:  # zlib.error, CRC BadZipFile, EOFError, ...
        raise PersistenceError(
            f"{where} cannot be read ({type(exc).__name__}: {exc}): damaged or truncated file"
        ) from None
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _npy_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from an npy header; refuses object and structured dtypes."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_MAX_NPY_HEADER)
        else:
            raise PersistenceError(f"{where} has npy format version {version}; memoe reads 1.0 and 2.0")
    except PersistenceError:
        raise
    except Exception as exc:  # numpy raises ValueError for malformed headers; be total about it
        raise PersistenceError(f"{where} has a malformed npy header: {exc}") from None
    if dtype.hasobject:
        raise PersistenceError(
            f"{where}: refusing to load an object array (dtype {dtype}): it would need unpickling, which "
            "memoe files never need"
        )
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PersistenceError(f"{where}: refusing the dtype {dtype} (memoe saves plain numeric, bool and text arrays)")
    return tuple(int(s) for s in shape), bool(fortran), dtype
