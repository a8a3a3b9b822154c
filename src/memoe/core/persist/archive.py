"""The ``.memoe`` container: one zip archive holding ``meta.json`` and ``arrays.npz``.

Nothing here can execute code from a file: the metadata is plain JSON and the arrays are read with
``numpy.load(..., allow_pickle=False)``, which refuses object arrays (the only npz content that
would need unpickling).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import IO

import numpy as np

from memoe.errors import PersistenceError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PathOrFile", "PersistenceError", "read_archive", "write_archive"]

# identifies a memoe fit among other zip files (and JSON documents named meta.json)
FORMAT_NAME = "memoe-fit"
# bump when a reader of the previous version could no longer rebuild the fit from a new file
FORMAT_VERSION = 1

META = "meta.json"
ARRAYS = "arrays.npz"

PathOrFile = str | os.PathLike | IO[bytes]


def _name(path: PathOrFile) -> str:
    return os.fspath(path) if isinstance(path, str | os.PathLike) else getattr(path, "name", "<file object>")


def write_archive(path: PathOrFile, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` as JSON and ``arrays`` as an npz into one zip archive.

    Everything is serialised in memory first, so a fit that cannot be saved leaves no partial file.

    Raises
    ------
    PersistenceError
        An array would need pickling (object dtype).
    """
    for key, arr in arrays.items():
        if arr.dtype.hasobject:
            # np.savez would silently pickle it, and a safe reader could not open the file
            raise PersistenceError(f"internal: array {key!r} has an object dtype and cannot be saved without pickle")
    meta_bytes = json.dumps(meta, indent=1, allow_nan=True).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(META, meta_bytes)
        zf.writestr(ARRAYS, buf.getvalue())


def read_archive(path: PathOrFile) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a ``.memoe`` archive.

    Returns
    -------
    meta : dict
    arrays : dict of str -> numpy.ndarray

    Raises
    ------
    PersistenceError
        Not a memoe file, an unsupported or newer format version, or arrays that would need unpickling.
    """
    name = _name(path)
    try:
        zf = zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile as exc:
        raise PersistenceError(f"{name!r} is not a memoe file (not a zip archive): {exc}") from None
    with zf:
        members = set(zf.namelist())
        if META not in members or ARRAYS not in members:
            raise PersistenceError(f"{name!r} is not a memoe file (it lacks {META} and/or {ARRAYS})")
        meta = _read_meta(zf.read(META), name)
        arrays = _read_arrays(zf.read(ARRAYS), name)
    return meta, arrays


def _read_meta(raw: bytes, name: str) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersistenceError(f"{name!r} is not a memoe file ({META} is not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise PersistenceError(f"{name!r} is not a memoe file ({META} does not declare format {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PersistenceError(f"{name!r} has an unsupported format version {version!r}")
    if version > FORMAT_VERSION:
        raise PersistenceError(
            f"{name!r} was saved in format version {version} by memoe {meta.get('memoe_version', '?')}; this "
            f"memoe reads format versions up to {FORMAT_VERSION}: upgrade memoe to load it"
        )
    return meta


def _read_arrays(raw: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        # every array is read now, inside the guard: NpzFile loads lazily, on first access
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        # numpy's refusal of object arrays under allow_pickle=False is a ValueError
        raise PersistenceError(f"{name!r}: refusing to load {ARRAYS}: {exc} (memoe files never need pickle)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise PersistenceError(f"{name!r}: {ARRAYS} is not a readable npz archive: {exc}") from None
