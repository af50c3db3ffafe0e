"""Tests of normfuse.checks' number checks: NaN and +-inf rules of check_numeric and helpers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normfuse import checks
from normfuse.errors import ColumnContractError


@pytest.fixture
def table():
    """A two-column table with a non-default integer index (row labels != positions)."""
    return pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, np.nan, 1.5, 2.5]},
                        index=pd.Index([10, 11, 12, 13], dtype="int64"))


def test_allow_nan_keeps_nan_and_values(table):
    """With allow_nan=True, NaN passes through and the values come back unchanged, in order."""
    out = checks.check_numeric(table, ["b", "a"], "f", allow_nan=True)
    assert out.dtype == np.float64 and out.shape == (4, 2)
    np.testing.assert_array_equal(out[:, 1], [1.0, 2.0, 3.0, 4.0])
    assert np.isnan(out[1, 0]) and out[2, 0] == 1.5


@pytest.mark.parametrize("value, shown", [(np.inf, "inf"), (-np.inf, "-inf")])
def test_allow_nan_still_rejects_inf(table, value, shown):
    """+inf and -inf raise under allow_nan=True, naming column, row label, value and the fix."""
    bad = table.copy()
    bad.loc[12, "a"] = value
    bad.loc[13, "a"] = value
    with pytest.raises(ColumnContractError,
                       match=rf"f: column 'a' holds {shown} at row 12 \(2 infinite cells in total\)"
                             r".*NaN\) are allowed.*df\.replace\(\[np\.inf, -np\.inf\], np\.nan\)"):
        checks.check_numeric(bad, ["b", "a"], "f", allow_nan=True)
    assert np.isinf(bad.loc[12, "a"]) and np.isnan(bad.loc[11, "b"])  # input untouched


def test_allow_inf_passes_infinities(table):
    """allow_inf=True lets +-inf through; with allow_nan=False, NaN still raises naming the cell."""
    bad = table.assign(a=[1.0, np.inf, -np.inf, 4.0])
    out = checks.check_numeric(bad, ["a", "b"], "f", allow_nan=True, allow_inf=True)
    assert out[1, 0] == np.inf and out[2, 0] == -np.inf and np.isnan(out[1, 1])
    out = checks.check_numeric(bad, ["a"], "f", allow_inf=True)
    assert out[1, 0] == np.inf
    with pytest.raises(ColumnContractError, match=r"column 'b' holds nan at row 11 \(1 missing cells"):
        checks.check_numeric(bad, ["a", "b"], "f", allow_inf=True)


def test_default_rejects_nan_and_inf_with_plain_values(table):
    """The default rejects NaN too; values and row labels read as plain Python (no np.float64(...))."""
    with pytest.raises(ColumnContractError,
                       match=r"column 'b' holds nan at row 11 \(1 missing or infinite cells"):
        checks.check_numeric(table, ["a", "b"], "f")
    with pytest.raises(ColumnContractError, match=r"column 'a' holds inf at row 'r1'"):
        checks.check_numeric(pd.DataFrame({"a": [np.inf]}, index=["r1"]), ["a"], "f")


def test_non_numeric_string_named(table):
    """A non-numeric string is named with its column, row label and value, with the encoding hint."""
    bad = table.astype({"b": object})
    bad.loc[12, "b"] = "pending"
    with pytest.raises(ColumnContractError, match=r"column 'b' must be numeric; row 12 holds 'pending'.*0/1"):
        checks.check_numeric(bad, ["b"], "f", allow_nan=True, allow_inf=True)


def test_check_no_inf_mask_and_middle_axes():
    """check_no_inf on (n, T, v): masked cells are ignored, the location names row and inner position."""
    x = np.zeros((3, 4, 2))
    x[0, 3, 1] = np.inf          # masked out
    mask = np.ones((3, 4), dtype=bool)
    mask[0, 3] = False
    checks.check_no_inf(x, ["u", "v"], "g", ["p", "q", "r"], mask=mask[:, :, None])
    x[2, 1, 0] = -np.inf
    x[1, 1, 1] = np.nan          # NaN is not this check's business
    with pytest.raises(ColumnContractError,
                       match=r"g: column 'u' holds -inf for patient 'r' at time row 1 \(1 infinite"):
        checks.check_no_inf(x, ["u", "v"], "g", np.array(["p", "q", "r"]), mask=mask[:, :, None],
                            at="for patient {!r} at time row {}")


def test_check_finite_hint_and_positions():
    """check_finite names positions when no index is given and uses the caller's hint."""
    x = np.array([[1.0, 2.0], [3.0, np.nan]])
    with pytest.raises(ColumnContractError, match=r"column 'y' holds nan at row 1 .*Impute first\.$"):
        checks.check_finite(x, ["x", "y"], "h", hint="Impute first.")


def test_check_columns_match_carries_missing_and_present():
    """The column-mismatch error carries the missing and present names for callers to reword."""
    with pytest.raises(ColumnContractError, match=r"Missing: \['b'\]\nUnexpected: \['c'\]") as ei:
        checks.check_columns_match(["a", "b"], ["a", "c"], who="M.transform")
    assert ei.value.missing == ["b"] and ei.value.present == ["a", "c"]
