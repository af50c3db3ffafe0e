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

from normfuse.checks import (
    check_finite,
    check_no_inf,
    check_numeric,
    get_logger,
    log_dropped,
    require_columns,
    require_dataframe,
)
from normfuse.errors import ColumnContractError, DataDroppedWarning

__all__ = ["formula_variables", "complete_cases", "design", "drop_aliased", "check_not_constant",
           "numeric_column", "check_model_variables"]

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


#: pandas' inferred kinds of an object column that holds only numbers (no text)
_NUMBER_KINDS = {"floating", "integer", "mixed-integer-float", "decimal"}


def _is_text(col: pd.Series) -> bool:
    """True for object / string columns (neither numeric, bool, categorical nor datetime)."""
    dt = col.dtype
    return not (pd.api.types.is_numeric_dtype(dt) or isinstance(dt, pd.CategoricalDtype)
                or pd.api.types.is_datetime64_any_dtype(dt)
                or pd.api.types.is_timedelta64_dtype(dt))


def _holds_only_numbers(col: pd.Series) -> bool:
    """An object column whose cells are all numbers (Python floats/ints), not text."""
    return (col.dtype == object and col.notna().any()
            and pd.api.types.infer_dtype(col, skipna=True) in _NUMBER_KINDS)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _cell(col: pd.Series, i: int):
    v = col.iloc[i]
    return v.item() if isinstance(v, np.generic) else v


def numeric_column(data: pd.DataFrame, column: str, who: str, role: str = "column") -> np.ndarray:
    """``data[column]`` as float64 (NaN kept), refusing text, categories and infinities.

    Numeric and boolean columns pass (booleans as 0/1); an object column holding only
    numbers is converted. A text column raises naming the first cell that is not a number
    (or, when every cell parses, the first cell: numbers stored as text), with the fix
    (``pd.to_numeric``). ``role`` words the message (e.g. ``"the response"``).
    """
    col = data[column]
    if isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_datetime64_any_dtype(col.dtype) \
            or pd.api.types.is_timedelta64_dtype(col.dtype):
        raise ColumnContractError(
            f"{who}: {role} {column!r} must be numeric, but its dtype is {col.dtype}. Convert it, "
            f"e.g. df[{column!r}] = pd.to_numeric(df[{column!r}].astype(str), errors='coerce').")
    if _is_text(col) and not _holds_only_numbers(col):
        num = pd.to_numeric(col, errors="coerce")
        present = col.notna().to_numpy()
        bad = present & num.isna().to_numpy()
        fix = (f"Convert it with df[{column!r}] = pd.to_numeric(df[{column!r}], errors='coerce') "
               "(cells that are not numbers become missing and those rows are dropped and counted)")
        if bad.any():
            i = _first(bad)
            raise ColumnContractError(
                f"{who}: {role} {column!r} must be numeric; row {data.index[i]!r} holds "
                f"{_cell(col, i)!r} ({int(bad.sum())} of {int(present.sum())} cells are not "
                f"numbers). {fix}, or fix those cells.")
        i = _first(present) if present.any() else 0
        raise ColumnContractError(
            f"{who}: {role} {column!r} holds numbers stored as text (row {data.index[i]!r} "
            f"holds {_cell(col, i)!r}); a model would treat text as categories. {fix}.")
    out = check_numeric(data, [column], who, allow_nan=True)[:, 0]
    return out


def _factor_variables(formula: str, data: pd.DataFrame) -> set[str]:
    """Columns wrapped in ``C(...)`` in ``formula``: categorical on purpose."""
    out: set[str] = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_.])C\(", formula):
        depth, j = 1, m.end()
        while j < len(formula) and depth:
            depth += {"(": 1, ")": -1}.get(formula[j], 0)
            j += 1
        out.update(formula_variables(formula[m.end():j - 1], data))
    return out


def _looks_numeric(col: pd.Series) -> bool:
    """More than half of the non-missing cells of a text column parse as numbers."""
    present = col.notna()
    n = int(present.sum())
    if n == 0:
        return False
    parsed = int((pd.to_numeric(col, errors="coerce").notna() & present).sum())
    return parsed > n / 2


def check_model_variables(data: pd.DataFrame, response: Sequence[str], predictors: Sequence[str],
                          other: Sequence[str], who: str, factors: Sequence[str] = ()) -> list[str]:
    """Refuse variables that would silently give the wrong model; return float replacements.

    - ``response`` columns must be numeric (booleans count as 0/1): text, even text that
      parses as numbers, raises naming the column, row and value (patsy would dummy-code it
      and keep one dummy column as the response).
    - ``predictors`` stored as text where most cells parse as numbers raise naming the
      first cell that is not a number (or the first cell when all parse), unless listed in
      ``factors`` (wrapped in ``C()``) or of categorical dtype. Genuine categorical text
      (sex ``'F'``/``'M'``, site names) stays a factor.
    - Every numeric variable (``response``, ``predictors``, ``other``) is refused when it
      holds +inf or -inf, naming column, row and value. NaN stays "missing".

    Returns the columns patsy must be given as float (booleans in the response, object
    columns holding only numbers); convert them with :func:`numeric_column`.
    """
    convert: dict[str, np.ndarray] = {}
    for c in response:
        v = numeric_column(data, c, who, role="the response")
        if not pd.api.types.is_float_dtype(data[c].dtype) and not pd.api.types.is_integer_dtype(data[c].dtype):
            convert[c] = v
    factors = set(factors)
    for c in predictors:
        col = data[c]
        if c in factors or not _is_text(col):
            continue
        if _holds_only_numbers(col):
            convert[c] = numeric_column(data, c, who, role="predictor")
        elif _looks_numeric(col):
            present = col.notna().to_numpy()
            bad = present & pd.to_numeric(col, errors="coerce").isna().to_numpy()
            i = _first(bad) if bad.any() else _first(present)
            what = (f"row {data.index[i]!r} holds {_cell(col, i)!r}, which is not a number "
                    f"({int(bad.sum())} such cells)" if bad.any()
                    else f"e.g. row {data.index[i]!r} holds {_cell(col, i)!r}")
            raise ColumnContractError(
                f"{who}: predictor {c!r} is stored as text although {int(present.sum() - bad.sum())} "
                f"of {int(present.sum())} cells are numbers ({what}); it would silently become a "
                f"categorical factor with one coefficient per distinct value. Convert it with "
                f"df[{c!r}] = pd.to_numeric(df[{c!r}], errors='coerce') (cells that are not "
                f"numbers become missing and are dropped and counted), or, if it is a genuine "
                f"category (e.g. site codes), write C({c}) in the formula or use "
                f"df[{c!r}].astype('category').")
    num_cols = [c for c in dict.fromkeys(list(response) + list(predictors) + list(other))
                if c in convert or pd.api.types.is_numeric_dtype(data[c].dtype)
                and not pd.api.types.is_bool_dtype(data[c].dtype)]
    if num_cols:
        A = np.column_stack([convert[c] if c in convert
                             else data[c].to_numpy(dtype=np.float64, na_value=np.nan)
                             for c in num_cols])
        check_no_inf(A, [str(c) for c in num_cols], who, index=data.index)
    return list(convert)


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
    A column holding NaN or +-inf raises (naming column, row and value) instead of being
    called aliased: its norm is not a number, so no rank decision can be made.
    """
    A = X.to_numpy(dtype=np.float64)
    check_finite(A, [str(c) for c in X.columns], who, index=X.index,
                 hint="Replace or drop those rows before fitting (infinities often come from "
                      "a ratio divided by 0 or a log of 0).")
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

    Before patsy sees the data, :func:`check_model_variables` refuses a response that is
    not numeric, predictors that are numbers stored as text, and +-inf in any variable
    (formula or ``extra``); NaN is missing (dropped and counted, or refused with
    ``missing="raise"``). Non-finite values produced by the formula's own transformations
    (e.g. ``np.log(x)`` with x = 0) raise naming the design column.
    """
    import patsy

    if "~" not in formula:
        raise ValueError(f"{who}: formula {formula!r} has no '~'; write e.g. 'y ~ group + age'.")
    used = formula_variables(formula, data)
    lhs, rhs = formula.split("~", 1)
    lhs_vars = formula_variables(lhs, data)
    if not lhs_vars:
        raise ColumnContractError(
            f"{who}: the response in {formula!r} is not a column of data. "
            f"Columns: {list(map(str, data.columns))[:20]}")
    rhs_vars = [v for v in used if v not in lhs_vars]
    other = [c for c in extra if c in data.columns and c not in used]
    convert = check_model_variables(data, lhs_vars, rhs_vars, other, who,
                                    factors=_factor_variables(rhs, data))
    d = complete_cases(data, list(dict.fromkeys(used + list(extra))), who, missing)
    check_not_constant(d, rhs_vars, who)
    dp = d.assign(**{c: numeric_column(d, c, who) for c in convert}) if convert else d
    try:
        y, X = patsy.dmatrices(formula, dp, return_type="dataframe", NA_action="raise")
    except patsy.PatsyError as exc:
        raise ColumnContractError(
            f"{who}: could not build the design from {formula!r}: {exc}\n"
            f"Columns of data: {list(map(str, data.columns))[:30]}. Names with '-' or spaces "
            "must be quoted as Q(\"Left-Thalamus\").") from exc
    if y.shape[1] != 1:
        raise ColumnContractError(
            f"{who}: the response of {formula!r} expands to {y.shape[1]} columns "
            f"{list(map(str, y.columns))[:6]}: patsy treats boolean and text values as "
            "categories. The response must be a single number per row; convert it, e.g. "
            "'I((edss >= 4) * 1) ~ ...' for an indicator.")
    X = X.rename(columns=lambda c: re.sub(r"Q\(['\"]([^'\"]+)['\"]\)", r"\1", str(c)))
    hint = ("The formula's transformation produced it (e.g. the log of 0 or of a negative "
            "value); transform the column yourself, or drop those rows, before fitting.")
    check_finite(y.to_numpy(dtype=np.float64), [str(y.columns[0])], who, index=y.index, hint=hint)
    check_finite(X.to_numpy(dtype=np.float64), [str(c) for c in X.columns], who, index=X.index,
                 hint=hint)
    return y.iloc[:, 0], X, d
