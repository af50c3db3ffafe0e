"""Input validation shared by every stage: column contracts, fitted state, numbers.

Every function raises a :mod:`normfuse.errors` type with a message that names the
caller (``who``), the offending column/row/value and a fix.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from normfuse.errors import ColumnContractError, MissingDependencyError, NotFittedError

__all__ = [
    "require_dataframe",
    "require_columns",
    "check_columns_match",
    "check_is_fitted",
    "check_numeric",
    "check_finite",
    "check_no_inf",
    "optional_import",
    "log_dropped",
    "get_logger",
]


def get_logger(name: str) -> logging.Logger:
    """Return the package logger ``name`` (a child of ``normfuse``)."""
    if not name.startswith("normfuse"):
        name = "normfuse." + name
    return logging.getLogger(name)


def require_dataframe(obj: Any, who: str, arg: str = "data"):
    """Raise ``TypeError`` unless ``obj`` is a pandas DataFrame."""
    import pandas as pd

    if not isinstance(obj, pd.DataFrame):
        raise TypeError(
            f"{who}: {arg} must be a pandas DataFrame, got {type(obj).__name__}. "
            f"Wrap arrays with pd.DataFrame(values, columns=[...])."
        )
    return obj


def _fmt(names: Iterable[Any], limit: int = 20) -> str:
    names = list(names)
    shown = names[:limit]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return repr(shown) + more


def require_columns(df, columns: Sequence[str], who: str, hint: str | None = None) -> None:
    """Raise :class:`ColumnContractError` naming the required columns ``df`` lacks."""
    require_dataframe(df, who)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        msg = (
            f"{who}: required columns are missing.\nMissing: {_fmt(missing)}\n"
            f"Present: {_fmt(map(str, df.columns))}"
        )
        if hint:
            msg += "\n" + hint
        raise ColumnContractError(msg, missing=missing, present=list(map(str, df.columns)))


def check_columns_match(seen: Sequence[str], got: Sequence[str], who: str) -> None:
    """Raise when ``got`` lacks any column in ``seen`` (scikit-learn's feature-name check)."""
    got_set = set(got)
    missing = [c for c in seen if c not in got_set]
    if missing:
        seen_set = set(seen)
        unexpected = [c for c in got if c not in seen_set]
        raise ColumnContractError(
            f"{who}: columns must match those seen in fit.\n"
            f"Missing: {_fmt(missing)}\nUnexpected: {_fmt(unexpected)}\n"
            "Rename with df.rename(columns=...) or refit on the new column set.",
            missing=missing, present=list(map(str, got)),
        )


def check_is_fitted(estimator: Any, attributes: Sequence[str] | None = None) -> None:
    """Raise :class:`NotFittedError` unless the estimator has its fitted attributes."""
    if attributes is None:
        fitted = [
            k for k in vars(estimator) if k.endswith("_") and not k.startswith("__")
        ]
        ok = bool(fitted)
    else:
        ok = all(hasattr(estimator, a) for a in attributes)
    if not ok:
        name = type(estimator).__name__
        raise NotFittedError(
            f"This {name} instance is not fitted yet. Call '{name}.fit' with "
            "appropriate arguments before using this method."
        )


def check_numeric(
    df, columns: Sequence[str], who: str, *, allow_nan: bool = False, allow_inf: bool = False
) -> np.ndarray:
    """Return ``df[columns]`` as float64, naming the first bad cell if any is not numeric.

    Parameters
    ----------
    df : DataFrame
        The table; it is not modified.
    columns : sequence of str
        The columns to convert, in the order of the returned matrix's columns.
    who : str
        The caller, named first in every message.
    allow_nan : bool, default False
        Let missing cells through as NaN (e.g. XGBoost features, responses with gaps).
    allow_inf : bool, default False
        Let +inf and -inf through. Independent of ``allow_nan``: with ``allow_nan=True``
        alone, NaN passes and infinities still raise.

    Returns
    -------
    ndarray of shape (len(df), len(columns)), float64
        Rows in the order of ``df``.

    Raises
    ------
    ColumnContractError
        A non-numeric string (naming column, row label and value), or a NaN / infinite
        cell not allowed by ``allow_nan`` / ``allow_inf`` (naming column, row and value).
    """
    import pandas as pd

    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        col = df[c]
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ColumnContractError(
                f"{who}: column {c!r} must be numeric; row {_label(df.index, i)!r} holds "
                f"{_label(col, i)!r} ({int(bad.sum())} non-numeric cells in this column). "
                "Encode categories as numbers (e.g. 0/1 for sex), or convert with "
                "pd.to_numeric(df[col], errors='coerce') to treat them as missing."
            )
        out[:, j] = num.to_numpy(dtype=np.float64, na_value=np.nan)
    if not allow_nan and not allow_inf:
        check_finite(out, list(columns), who, index=df.index)
    elif not allow_inf:
        check_no_inf(out, list(columns), who, index=df.index)
    elif not allow_nan:
        bad = np.isnan(out)
        if bad.any():
            _raise_first(bad, out, list(columns), who, df.index, "at row {!r}", "missing",
                         "Drop or impute those rows before calling.")
    return out


def check_finite(x: np.ndarray, columns: Sequence[str], who: str, index=None, *,
                 hint: str | None = None) -> None:
    """Raise naming the first row/column holding NaN or infinity in the 2-D array ``x``.

    ``index`` labels the rows (positions when None); ``hint`` replaces the default
    advice at the end of the message.
    """
    x = np.asarray(x)
    bad = ~np.isfinite(x)
    if bad.any():
        _raise_first(bad, x, columns, who, index, "at row {!r}", "missing or infinite",
                     hint or "Drop or impute those rows before calling.")


def check_no_inf(x: np.ndarray, columns: Sequence[str], who: str, index=None, *,
                 mask: np.ndarray | None = None, at: str = "at row {!r}",
                 hint: str | None = None) -> None:
    """Raise naming the first cell of ``x`` holding +inf or -inf; NaN passes.

    Parameters
    ----------
    x : ndarray of shape (n, ..., k)
        Rows first, the ``k`` named columns last (e.g. (n, T, v) sequences).
    columns : sequence of str
        Names of the last axis.
    who : str
        The caller, named first in the message.
    index : sequence, optional
        Labels of the rows (first axis); positions when None.
    mask : ndarray of bool, optional
        Broadcastable to ``x``: only cells where it is True are checked.
    at : str, default ``"at row {!r}"``
        How the location reads; formatted with the row label and then the positions
        along the middle axes, e.g. ``"for patient {!r} at time row {}"``.
    hint : str, optional
        Replaces the default advice at the end of the message.

    Raises
    ------
    ColumnContractError
        Naming the column, the location, the value and the number of infinite cells.
    """
    x = np.asarray(x)
    bad = np.isinf(x)
    if mask is not None:
        bad &= mask
    if bad.any():
        _raise_first(
            bad, x, columns, who, index, at, "infinite",
            hint or ("Missing values (NaN) are allowed here, infinities are not: replace them, "
                     "e.g. df.replace([np.inf, -np.inf], np.nan) to treat them as missing, or "
                     "fix what produced them (a ratio divided by 0, a log of 0)."),
        )


def _label(labels, i: int):
    """``labels[i]`` (positional) as a plain Python value, for readable messages."""
    if labels is None:
        return i
    v = labels.iloc[i] if hasattr(labels, "iloc") else labels[i]
    return v.item() if isinstance(v, np.generic) else v


def _raise_first(bad, x, columns, who, index, at, what, hint):
    first = tuple(int(v[0]) for v in np.nonzero(bad))
    loc = at.format(_label(index, first[0]), *first[1:-1])
    raise ColumnContractError(
        f"{who}: column {columns[first[-1]]!r} holds {float(x[first])!r} {loc} "
        f"({int(bad.sum())} {what} cells in total). {hint}"
    )


def optional_import(module: str, extra: str, feature: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{feature} needs the optional dependency {module!r}, which is not installed. "
            f"Install it with: pip install 'normfuse[{extra}]'"
        ) from exc


def log_dropped(logger: logging.Logger, n: int, what: str, reason: str) -> None:
    """Log (at WARNING) that ``n`` ``what`` were dropped and why; nothing when n == 0."""
    if n:
        logger.warning("dropped %d %s: %s", n, what, reason)
