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
        raise ColumnContractError(msg)


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
            "Rename with df.rename(columns=...) or refit on the new column set."
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


def check_numeric(df, columns: Sequence[str], who: str, *, allow_nan: bool = False) -> np.ndarray:
    """Return ``df[columns]`` as float64, naming the first bad cell if any is not numeric.

    Non-numeric strings raise (naming column, row label and value); NaN/inf raise
    unless ``allow_nan``.
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
                f"{who}: column {c!r} must be numeric; row {df.index[i]!r} holds "
                f"{col.iloc[i]!r} ({int(bad.sum())} non-numeric cells in this column). "
                "Clean or convert the column, e.g. pd.to_numeric(df[col], errors='coerce') "
                "to treat them as missing."
            )
        out[:, j] = num.to_numpy(dtype=np.float64, na_value=np.nan)
    if not allow_nan:
        check_finite(out, list(columns), who, index=df.index)
    return out


def check_finite(x: np.ndarray, columns: Sequence[str], who: str, index=None) -> None:
    """Raise naming the first row/column holding NaN or infinity in the 2-D array ``x``."""
    x = np.asarray(x)
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        row = index[i] if index is not None else i
        raise ColumnContractError(
            f"{who}: column {columns[j]!r} holds {x[i, j]!r} at row {row!r} "
            f"({int(bad.sum())} missing or infinite cells in total). "
            "Drop or impute those rows before calling."
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
