"""Fast construction of pandas string columns from numpy arrays (pyarrow-backed)."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["str_array", "take_str", "StringDType"]

from numpy.dtypes import StringDType


def str_array(values, mask: np.ndarray | None = None) -> pd.api.extensions.ExtensionArray:
    """A ``string[pyarrow]`` pandas array from a numpy string array; ``mask`` marks missing."""
    import pyarrow as pa

    arr = np.asarray(values)
    if arr.dtype.kind == "U" or arr.dtype == object:
        arr = arr.astype(StringDType())
    pa_arr = pa.array(arr, mask=mask) if mask is not None else pa.array(arr)
    if pa_arr.type != pa.string():
        pa_arr = pa_arr.cast(pa.string())
    return pd.arrays.ArrowStringArray(pa_arr)


def take_str(categories, codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """``categories[codes]`` as a ``string[pyarrow]`` array, without Python loops."""
    import pyarrow as pa

    cats = pa.array(list(categories), type=pa.string())
    return pd.arrays.ArrowStringArray(cats.take(pa.array(np.asarray(codes, dtype=np.int64))))
