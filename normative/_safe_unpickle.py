"""A restricted unpickler for published model files: builds plain data, runs no code.

The braincharts reference models are pcntoolkit-0.x objects saved with :mod:`pickle`.
A pickle can name any importable callable and make the loader call it (``os.system``,
``builtins.eval``, ``subprocess.Popen``...), so these files are never read with the
default unpickler. :func:`safe_loads` resolves globals through an explicit allow-list,
and every allowed name maps to an *inert stand-in* defined here, never to the real
class or function:

* pcntoolkit model classes (``NormBLR``, ``BLR``, ``WarpSinArcsinh``, ...) become a
  :class:`PickledObject` that only records the class name and the state dictionary;
* ``numpy.core.multiarray._reconstruct`` / ``numpy.ndarray`` / ``numpy.dtype`` /
  ``numpy.core.multiarray.scalar`` (and ``numpy._core.numeric._frombuffer``, numpy's
  protocol-5 path; ``numpy._core`` spellings too) become stand-ins that rebuild numeric arrays with
  :func:`numpy.frombuffer` from the raw bytes in the pickle; only fixed-size numeric
  and boolean dtypes are accepted (object arrays, which would embed further pickles,
  are refused).

Anything else raises :class:`UnsafePickleError` naming the refused global, before it is
imported or called. :func:`to_plain` turns the result into nested dicts, lists and
numpy arrays.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from normfuse.errors import SchemaError

__all__ = ["UnsafePickleError", "PickledObject", "safe_loads", "to_plain", "ALLOWED_CLASSES"]


class UnsafePickleError(SchemaError):
    """A pickle names a global outside the allow-list (or holds an unsupported array)."""


# pcntoolkit 0.x classes that appear in published model files: recorded, never imported
ALLOWED_CLASSES = frozenset({
    ("norm_blr", "NormBLR"),
    ("pcntoolkit.normative_model.norm_blr", "NormBLR"),
    ("pcntoolkit.model.bayesreg", "BLR"),
    ("bayesreg", "BLR"),
    ("pcntoolkit.util.utils", "WarpSinArcsinh"),
    ("pcntoolkit.util.utils", "WarpAffine"),
    ("pcntoolkit.util.utils", "WarpBoxCox"),
    ("utils", "WarpSinArcsinh"),
})

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
# dtype codes accepted for arrays: fixed-size numbers and booleans only
_DTYPE_KINDS = frozenset("biuf")


class PickledObject:
    """Inert record of a pickled instance: its class name and its state, nothing else."""

    __slots__ = ("classname", "state", "args")

    def __init__(self, classname: str, args: tuple = ()):
        self.classname = classname
        self.state: Any = None
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.classname!r})"


def _stand_in_class(classname: str):
    """A class whose instances are PickledObjects (NEWOBJ calls cls.__new__(cls, *args))."""

    class _StandIn:
        def __new__(cls, *args):
            return PickledObject(classname, args)

    _StandIn.__name__ = classname.rsplit(".", 1)[-1]
    return _StandIn


class _DType:
    """Stand-in for numpy.dtype(code, align, copy) + BUILD(state)."""

    __slots__ = ("code", "order")

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str):
            raise UnsafePickleError(f"numpy.dtype with a non-string code {type(code).__name__} refused")
        self.code = code
        self.order = "|"

    def __setstate__(self, state):
        # (version, byteorder, subdescr, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise UnsafePickleError("numpy.dtype with sub-arrays or structured fields refused")
        self.order = state[1]

    def resolve(self) -> np.dtype:
        try:
            dt = np.dtype(self.code)
        except TypeError as exc:
            raise UnsafePickleError(f"unknown numpy dtype code {self.code!r}") from exc
        if dt.kind not in _DTYPE_KINDS:
            raise UnsafePickleError(
                f"numpy arrays of dtype {self.code!r} (kind {dt.kind!r}) are refused; only "
                "numeric and boolean arrays are read.")
        if self.order in ("<", ">"):
            dt = dt.newbyteorder(self.order)
        return dt


class _Array:
    """Stand-in for numpy.core.multiarray._reconstruct(ndarray, shape, b'b') + BUILD(state)."""

    __slots__ = ("value",)

    def __init__(self, *args):
        self.value = None

    def __setstate__(self, state):
        # (version, shape, dtype, is_fortran, rawdata)
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickleError("numpy array state of an unexpected form refused")
        _, shape, dt, fortran, raw = state
        if not isinstance(dt, _DType):
            raise UnsafePickleError("numpy array without a plain dtype refused")
        dtype = dt.resolve()
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError("numpy array data must be raw bytes (object arrays are refused)")
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n * dtype.itemsize != len(raw):
            raise UnsafePickleError(
                f"numpy array of shape {shape} and dtype {dtype} does not match its {len(raw)} bytes")
        arr = np.frombuffer(bytes(raw), dtype=dtype, count=n)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        self.value = np.array(arr, dtype=dtype.newbyteorder("="))


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not _Array:
        raise UnsafePickleError("numpy _reconstruct of a subtype other than ndarray refused")
    return _Array()


def _frombuffer(buf, dt, shape, order):
    """Stand-in for numpy._core.numeric._frombuffer (numpy's pickle protocol 5 path)."""
    holder = _Array()
    if not isinstance(dt, _DType):
        raise UnsafePickleError("numpy array without a plain dtype refused")
    holder.__setstate__((1, shape, dt, order == "F", buf if isinstance(buf, (bytes, bytearray)) else None))
    return holder


def _scalar(dt, raw=None):
    if not isinstance(dt, _DType) or not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError("numpy scalar without a plain dtype and bytes refused")
    dtype = dt.resolve()
    if len(raw) != dtype.itemsize:
        raise UnsafePickleError("numpy scalar with the wrong number of bytes refused")
    return np.frombuffer(bytes(raw), dtype=dtype, count=1)[0].item()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in _NUMPY_MODULES and name == "_reconstruct":
            return _reconstruct
        if module in _NUMPY_MODULES and name == "scalar":
            return _scalar
        if module in _NUMPY_NUMERIC and name == "_frombuffer":
            return _frombuffer
        if module == "numpy" and name == "ndarray":
            return _Array
        if module == "numpy" and name == "dtype":
            return _DType
        if (module, name) in ALLOWED_CLASSES:
            return _stand_in_class(f"{module}.{name}")
        raise UnsafePickleError(
            f"refused to load global '{module}.{name}': it is not on the allow-list of this "
            "restricted unpickler, which reads pcntoolkit BLR models and numeric numpy arrays "
            "only. The file may be damaged or malicious; do not open it with pickle.load.")

    def persistent_load(self, pid):
        raise UnsafePickleError("pickles with persistent ids are refused")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with the restricted loader (see module docstring).

    Returns plain Python values, numpy arrays and :class:`PickledObject` records
    (use :func:`to_plain` for nested dicts). Raises :class:`UnsafePickleError` for a
    global outside the allow-list, and :class:`SchemaError` for a damaged stream.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError) as exc:
        raise SchemaError(f"not a readable model pickle: {type(exc).__name__}: {exc}") from exc
    return _finish(obj)


def _finish(obj):
    """Replace array stand-ins by their arrays, recursively."""
    if isinstance(obj, _Array):
        if obj.value is None:
            raise UnsafePickleError("numpy array without data refused")
        return obj.value
    if isinstance(obj, _DType):
        return obj.resolve()
    if isinstance(obj, PickledObject):
        obj.state = _finish(obj.state)
        return obj
    if isinstance(obj, dict):
        return {k: _finish(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finish(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish(v) for v in obj)
    return obj


def to_plain(obj):
    """Nested dicts/lists/arrays from :func:`safe_loads` output; records get ``__class__``."""
    if isinstance(obj, PickledObject):
        state = obj.state
        out = {"__class__": obj.classname}
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}       # (dict, slotstate)
        if isinstance(state, dict):
            out.update({str(k): to_plain(v) for k, v in state.items()})
        elif state is not None:
            out["__state__"] = to_plain(state)
        return out
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj
