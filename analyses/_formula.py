"""Formula handling shared by the analyses: complete cases, design matrices, aliasing.

R fits models on complete cases (``na.omit``) and drops aliased columns (``NA``
coefficients). We do the same, but say so: dropped rows are counted, logged and
warned about with :class:`~normfuse.errors.DataDroppedWarning`; aliased columns are
named in the same kind of warning.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from normfuse.checks import get_logger, log_dropped, require_columns, require_dataframe
from normfuse.errors import ColumnContractError, DataDroppedWarning

__all__ = ["formula_variables", "complete_cases", "design", "drop_aliased", "check_not_constant"]

_log = get_logger("analyses")
_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_FUNCS = {"C", "np", "log", "exp", "I", "Q", "center", "standardize", "scale", "sqrt", "bs",
          "cr", "Treatment", "Sum", "poly", "abs"}


def formula_variables(formula: str, data: pd.DataFrame) -> list[str]:
    """Names of ``data``'s columns used in ``formula`` (in order of first use).

    Backquoted or ``Q("...")`` names are recognised as well as plain identifiers.
    """
    quoted = re.findall(r"Q\(\s*['\"]([^'\"]+)['\"]\s*\)", formula)
    bare = [t for t in _IDENT.findall(re.sub(r"Q\(\s*['\"][^'\"]+['\"]\s*\)", " ", formula))
            if t not in _FUNCS]
    seen: list[str] = []
    for name in quoted + bare:
        if name in data.columns and name not in seen:
            seen.append(name)
    return seen


def complete_cases(data: pd.DataFrame, columns: Sequence[str], who: str,
                   missing: str = "drop") -> pd.DataFrame:
    """Rows of ``data`` with no missing value in ``columns``.

    ``missing="drop"`` drops incomplete rows (R's ``na.omit``) and reports how many
    with a :class:`DataDroppedWarning` and a log record; ``missing="raise"`` raises
    naming the first incomplete row and column.
    """
    require_dataframe(data, who)
    require_columns(data, list(columns), who)
    if missing not in ("drop", "raise"):
        raise ValueError(f"{who}: missing={missing!r}; expected 'drop' or 'raise'.")
    na = data[list(columns)].isna()
    bad = na.any(axis=1).to_numpy()
    n_bad = int(bad.sum())
    if n_bad == 0:
        return data
    if missing == "raise":
        i = int(np.flatnonzero(bad)[0])
        col = na.columns[na.iloc[i].to_numpy()][0]
        raise ColumnContractError(
            f"{who}: column {col!r} is missing at row {data.index[i]!r} "
            f"({n_bad} incomplete rows). Impute them, or pass missing='drop' to fit on "
            "complete cases as R does.")
    per_col = {c: int(v) for c, v in na.sum().items() if v}
    msg = (f"{who}: dropped {n_bad} of {len(data)} rows with missing values "
           f"(missing per column: {per_col}); the model is fitted on complete cases. "
           "Pass missing='raise' to refuse instead.")
    log_dropped(_log, n_bad, "rows", f"{who}: missing values in {sorted(per_col)}")
    warnings.warn(msg, DataDroppedWarning, stacklevel=3)
    return data.loc[~bad]


def check_not_constant(data: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    """Raise naming any predictor column that takes a single value."""
    for c in columns:
        if data[c].nunique(dropna=True) < 2:
            raise ColumnContractError(
                f"{who}: predictor {c!r} is constant (every row holds {data[c].iloc[0]!r}); "
                "its effect cannot be estimated. Remove it from the formula, or check that "
                "the rows you meant to compare are all present.")


def drop_aliased(X: pd.DataFrame, who: str, tol: float = 1e-7) -> tuple[pd.DataFrame, list[str]]:
    """Drop columns that are linear combinations of earlier columns, as R's ``lm``/``glm`` do.

    Columns are visited in order; a column is aliased when its residual after projection
    on the kept columns has norm below ``tol`` times its own norm (R's pivoted QR with
    ``tol = 1e-7``). Returns the reduced matrix and the dropped names (warned about).
    """
    A = X.to_numpy(dtype=np.float64)
    keep: list[int] = []
    Q = np.zeros((A.shape[0], 0))
    for j in range(A.shape[1]):
        v = A[:, j]
        nv = np.linalg.norm(v)
        r = v - Q @ (Q.T @ v) if Q.shape[1] else v
        r = r - Q @ (Q.T @ r) if Q.shape[1] else r   # re-orthogonalise once
        nr = np.linalg.norm(r)
        if nv > 0 and nr > tol * nv:
            keep.append(j)
            Q = np.column_stack([Q, r / nr])
    dropped = [str(c) for k, c in enumerate(X.columns) if k not in set(keep)]
    if dropped:
        warnings.warn(
            f"{who}: {len(dropped)} coefficients not defined because of singularities "
            f"(aliased with earlier columns, dropped as R does): {dropped}.",
            DataDroppedWarning, stacklevel=3)
    return X.iloc[:, keep], dropped


def design(formula: str, data: pd.DataFrame, who: str, missing: str = "drop",
           extra: Sequence[str] = ()) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """Response, design matrix and the complete-case data for ``formula``.

    Uses patsy (a statsmodels dependency) on complete cases of the variables in the
    formula plus ``extra`` columns. Categorical levels follow R's treatment coding
    with the first level (sorted) as reference.
    """
    import patsy

    if "~" not in formula:
        raise ValueError(f"{who}: formula {formula!r} has no '~'; write e.g. 'y ~ group + age'.")
    used = formula_variables(formula, data)
    lhs_vars = formula_variables(formula.split("~", 1)[0], data)
    if not lhs_vars:
        raise ColumnContractError(
            f"{who}: the response in {formula!r} is not a column of data. "
            f"Columns: {list(map(str, data.columns))[:20]}")
    d = complete_cases(data, list(dict.fromkeys(used + list(extra))), who, missing)
    check_not_constant(d, [v for v in used if v not in lhs_vars], who)
    try:
        y, X = patsy.dmatrices(formula, d, return_type="dataframe", NA_action="raise")
    except patsy.PatsyError as exc:
        raise ColumnContractError(
            f"{who}: could not build the design from {formula!r}: {exc}\n"
            f"Columns of data: {list(map(str, data.columns))[:30]}. Names with '-' or spaces "
            "must be quoted as Q(\"Left-Thalamus\").") from exc
    X = X.rename(columns=lambda c: re.sub(r"Q\(['\"]([^'\"]+)['\"]\)", r"\1", str(c)))
    return y.iloc[:, 0], X, d
