"""Input coercion shared by the evaluation modules (outcomes, scores, probabilities)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.special import ndtri

from normfuse.checks import check_finite

__all__: list[str] = []


def _labels_of(x, n: int) -> list[str] | None:
    return list(x.index) if isinstance(x, pd.Series) else None


def _binary(y, who: str, arg: str = "y_true") -> np.ndarray:
    """Return ``y`` as an int8 0/1 array or raise naming the first bad value."""
    if isinstance(y, (pd.Series, pd.Index)):
        if y.dtype == bool or str(y.dtype) == "boolean":
            if y.isna().any():
                i = int(np.flatnonzero(y.isna().to_numpy())[0])
                raise ValueError(f"{who}: {arg} is missing at position {i} (label {y.index[i]!r} "
                                 "if a Series). Drop rows without an outcome before evaluating.")
            return y.to_numpy(dtype=np.int8)
        num = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        raw = y.to_numpy()
    else:
        raw = np.asarray(y)
        if raw.ndim != 1:
            raise ValueError(f"{who}: {arg} must be one-dimensional, got shape {raw.shape}.")
        if raw.dtype == bool:
            return raw.astype(np.int8)
        num = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(num, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"position {i}"
        labels = _labels_of(y, len(num))
        if labels is not None:
            where += f" (label {labels[i]!r})"
        raise ValueError(
            f"{who}: {arg} must hold 0/1 or True/False (1 = event); {where} holds {_py(raw[i])!r} "
            f"({int(bad.sum())} such values). Code the outcome as 0/1, e.g. "
            "(df['outcome'] == 'Poor').astype(int), and drop rows without an outcome."
        )
    return num.astype(np.int8)


def _column(values, name: str, who: str, arg: str, index) -> np.ndarray:
    """One score column as float64, naming the first non-numeric value if any."""
    ser = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values).ravel())
    num = pd.to_numeric(ser, errors="coerce")
    bad = (num.isna() & ser.notna()).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = index[i] if index is not None else i
        raise ValueError(
            f"{who}: {arg} column {name!r} must be numeric; row {row!r} holds "
            f"{_py(ser.iloc[i])!r} ({int(bad.sum())} non-numeric values)."
        )
    return num.to_numpy(dtype=np.float64, na_value=np.nan)


def _scores(p, n: int, who: str, arg: str = "y_score", like=None) -> tuple[np.ndarray, list[str]]:
    """Return scores as a (n, k) float array and their names; refuse NaN/inf naming the cell.

    When both ``like`` (the outcome) and ``p`` are pandas objects their indexes must be
    equal: rows are matched by position, and a reordered Series would silently pair
    each score with another patient's outcome.
    """
    if isinstance(like, pd.Series) and isinstance(p, (pd.Series, pd.DataFrame)):
        if not like.index.equals(p.index):
            raise ValueError(
                f"{who}: the outcome and {arg} are pandas objects with different indexes "
                f"(first outcome labels {list(like.index[:3])}, first score labels "
                f"{list(p.index[:3])}). Align them first, e.g. scores.reindex(y.index), or pass "
                "NumPy arrays in the same order."
            )
    if isinstance(p, pd.DataFrame):
        names = [str(c) for c in p.columns]
        index = p.index
        cols = [_column(p.iloc[:, j], names[j], who, arg, index) for j in range(p.shape[1])]
    elif isinstance(p, Mapping):
        names = [str(k) for k in p]
        index = None
        cols = [_column(v, k, who, arg, None) for k, v in zip(names, p.values(), strict=True)]
    else:
        index = p.index if isinstance(p, pd.Series) else None
        raw = p if isinstance(p, pd.Series) else np.asarray(p)
        if raw.ndim == 1:
            name = getattr(p, "name", None)
            names = [str(name) if name is not None else "score"]
            cols = [_column(raw, names[0], who, arg, index)]
        elif raw.ndim == 2:
            names = [f"score{j}" for j in range(raw.shape[1])]
            cols = [_column(raw[:, j], names[j], who, arg, None) for j in range(raw.shape[1])]
        else:
            raise ValueError(f"{who}: {arg} must be 1-D or 2-D, got shape {raw.shape}.")
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(f"{who}: the predictors in {arg} have different lengths {sorted(lengths)}.")
    arr = np.column_stack(cols) if cols else np.empty((0, 0))
    if cols and arr.shape[0] != n:
        raise ValueError(
            f"{who}: {arg} has {arr.shape[0]} rows but y_true has {n}. Pass one score per "
            "outcome, in the same order (align on patient_id first)."
        )
    if not cols:
        raise ValueError(f"{who}: {arg} holds no predictor columns.")
    check_finite(arr, names, f"{who} ({arg})", index=index,
                 hint="Every evaluated row needs a finite score: impute or drop those rows "
                      "(and their outcomes) first.")
    return arr, names


def _both_classes(y: np.ndarray, who: str, min_each: int = 1) -> tuple[int, int]:
    m = int(y.sum())
    n = int(y.size - m)
    if m < min_each or n < min_each:
        raise ValueError(
            f"{who}: needs at least {min_each} event(s) and {min_each} non-event(s); got "
            f"{m} events and {n} non-events among {y.size} rows. A single-class fold or "
            "subgroup has no AUROC: pool folds, use larger groups, or report it as "
            "not estimable."
        )
    return m, n


def _probabilities(p: np.ndarray, name: str, who: str) -> None:
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{who}: {name!r} must be a probability in [0, 1]; row {i} holds {p[i]!r} "
            f"({int(bad.sum())} values outside). Pass predict_proba output, or map scores "
            "to risks (e.g. scipy.special.expit of a margin) first."
        )


def _zcrit(conf_level: float) -> float:
    if not 0 < conf_level < 1:
        raise ValueError(f"Got conf_level={conf_level!r}; expected a number in (0, 1), e.g. 0.95.")
    return float(ndtri(1 - (1 - conf_level) / 2))


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a




def _py(v):
    """A numpy scalar as the plain Python value (for readable error messages)."""
    return v.item() if isinstance(v, np.generic) else v
