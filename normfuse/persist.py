"""Saving and loading without pickle: a folder with ``model.json`` and ``arrays.npz``.

Layout of a saved object ``path/``::

    model.json    {"format": "normfuse", "kind": ..., "schema": ..., "package_version": ...,
                   "meta": {...}, "files": {name: sha256}, "checksum": sha256}
    arrays.npz    numeric arrays, read with ``allow_pickle=False``
    <extra>       optional extra files (XGBoost JSON, safetensors), hashed too

``checksum`` covers the JSON payload and every file, so an altered or truncated
folder fails to load with :class:`~normfuse.errors.SchemaError`. Each class registers
its kind and schema version with :func:`register`; :func:`load` dispatches through
that explicit registry (never ``globals()``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from normfuse import __version__
from normfuse.errors import SchemaError

__all__ = [
    "register",
    "save_state",
    "load_state",
    "load",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_path",
    "to_jsonable",
]

_FORMAT = "normfuse"
_REGISTRY: dict[str, tuple[int, type]] = {}


def register(kind: str, schema: int) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as the loader of ``kind`` at ``schema``.

    The class must define ``_from_state(meta, arrays, files)`` (a classmethod).
    """

    def deco(cls: type) -> type:
        _REGISTRY[kind] = (schema, cls)
        cls._persist_kind = kind
        cls._persist_schema = schema
        return cls

    return deco


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples inside ``obj`` to plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload_digest(header: dict, file_hashes: Mapping[str, str]) -> str:
    body = json.dumps(
        {k: v for k, v in header.items() if k != "checksum"}, sort_keys=True
    ).encode()
    h = hashlib.sha256(body)
    for name in sorted(file_hashes):
        h.update(name.encode())
        h.update(file_hashes[name].encode())
    return h.hexdigest()


def atomic_path(path: Path | str):
    """Context manager yielding a temporary sibling path renamed onto ``path`` on success.

    Works for files and folders; on error the temporary is removed and ``path`` is
    left untouched, so no partial output is ever visible under the final name.
    """
    import contextlib

    @contextlib.contextmanager
    def _cm():
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        target = tmp / final.name
        try:
            yield target
            if not target.exists():
                raise FileNotFoundError(f"nothing was written to {target}")
            old = None
            if final.exists():
                old = final.parent / f".{final.name}.old-{os.getpid()}"
                os.replace(final, old)
            os.replace(target, final)
            if old is not None:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return _cm()


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    return atomic_write_bytes(path, text.encode(encoding))


def save_state(
    path: Path | str,
    *,
    kind: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Save a registered object's state to the folder ``path`` (atomically).

    Parameters
    ----------
    path : folder to create (replaced if it exists).
    kind : registered kind; its schema version is written with it.
    meta : JSON-serialisable parameters and small state.
    arrays : numeric arrays (object arrays are refused).
    files : extra files by name (e.g. ``{"xgb.json": booster_bytes}``).
    """
    if kind not in _REGISTRY:
        raise SchemaError(f"save_state: kind {kind!r} is not registered; known: {sorted(_REGISTRY)}")
    schema = _REGISTRY[kind][0]
    arrays = dict(arrays or {})
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise TypeError(
                f"save_state: array {name!r} has dtype object, which cannot be saved "
                "without pickle. Convert it to a numeric or fixed-width string array."
            )
        arrays[name] = arr
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blobs = {"arrays.npz": buf.getvalue(), **dict(files or {})}
    if "model.json" in blobs:
        raise ValueError("save_state: 'model.json' is reserved")
    file_hashes = {name: _sha256(data) for name, data in blobs.items()}
    header = {
        "format": _FORMAT,
        "kind": kind,
        "schema": schema,
        "package_version": __version__,
        "meta": to_jsonable(dict(meta)),
        "files": file_hashes,
    }
    header["checksum"] = _payload_digest(header, file_hashes)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)
        (tmp / "model.json").write_text(json.dumps(header, indent=2, sort_keys=True))
    return Path(path)


def load_state(path: Path | str, kind: str | None = None):
    """Read and verify a saved folder; return ``(meta, arrays, files, header)``.

    Raises :class:`SchemaError` if the folder is not a normfuse save, is of another
    kind, has an unsupported schema version, or any file was altered.
    """
    path = Path(path)
    mj = path / "model.json"
    if not mj.is_file():
        raise SchemaError(
            f"{path}: not a saved normfuse model (no model.json). "
            "Pass the folder written by .save()."
        )
    try:
        header = json.loads(mj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{mj}: not valid JSON ({exc}); the file is damaged.") from exc
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise SchemaError(f"{mj}: not a normfuse model file (format={header.get('format')!r}).")
    got_kind = header.get("kind")
    if kind is not None and got_kind != kind:
        raise SchemaError(f"{path}: holds a {got_kind!r}, expected a {kind!r}.")
    if got_kind not in _REGISTRY:
        raise SchemaError(f"{path}: unknown kind {got_kind!r}; known: {sorted(_REGISTRY)}.")
    want = _REGISTRY[got_kind][0]
    if header.get("schema") != want:
        raise SchemaError(
            f"{path}: {got_kind} schema version {header.get('schema')!r} is not supported by "
            f"normfuse {__version__} (expects {want}); saved by normfuse "
            f"{header.get('package_version')!r}. Refit the model with this version, or load "
            "it with the version that saved it."
        )
    file_hashes = header.get("files") or {}
    blobs: dict[str, bytes] = {}
    for name, digest in file_hashes.items():
        fp = path / name
        if not fp.is_file():
            raise SchemaError(f"{path}: file {name!r} listed in model.json is missing.")
        data = fp.read_bytes()
        if _sha256(data) != digest:
            raise SchemaError(
                f"{fp}: contents do not match the checksum in model.json; the file was "
                "altered or damaged after saving. Re-save the model from its source."
            )
        blobs[name] = data
    if header.get("checksum") != _payload_digest(header, file_hashes):
        raise SchemaError(
            f"{mj}: the checksum does not match its contents; model.json was edited after "
            "saving. Re-save the model from its source."
        )
    with np.load(io.BytesIO(blobs.pop("arrays.npz")), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return header["meta"], arrays, blobs, header


def load(path: Path | str, kind: str | None = None):
    """Load any registered normfuse object saved with ``.save(path)``."""
    meta, arrays, files, header = load_state(path, kind=kind)
    cls = _REGISTRY[header["kind"]][1]
    return cls._from_state(meta, arrays, files)
