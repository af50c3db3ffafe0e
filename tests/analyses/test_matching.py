"""Propensity matching: planted cases, logistic fit against statsmodels, leakage guard."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from analyses.matching import _logistic, match_controls
from normfuse.errors import ColumnContractError, DataDroppedWarning


def _cohort(rng, n_p=60, n_c=300):
    p = pd.DataFrame({"age": rng.normal(40, 8, n_p), "sex": rng.choice(["F", "M"], n_p, p=[0.7, 0.3]),
                      "icv": rng.normal(1.45e6, 1.2e5, n_p)}, index=[f"P{i}" for i in range(n_p)])
    c = pd.DataFrame({"age": rng.normal(50, 12, n_c), "sex": rng.choice(["F", "M"], n_c),
                      "icv": rng.normal(1.5e6, 1.3e5, n_c)}, index=[f"C{i}" for i in range(n_c)])
    return p, c


def test_matching_improves_balance_without_replacement(rng):
    """Every patient gets a distinct control; |SMD| shrinks on every covariate, < 0.05 on the score."""
    p, c = _cohort(rng)
    before = (p.copy(), c.copy())
    res = match_controls(p, c)
    assert len(res.pairs) == len(p) and res.pairs["control_id"].is_unique
    assert list(res.pairs["patient_id"]) == list(p.index)
    b = res.summary()
    assert b["smd_before"].abs().max() > 0.5
    assert (b["smd_after"].abs() < b["smd_before"].abs()).all()
    assert abs(b.loc["distance", "smd_after"]) < 0.05
    pd.testing.assert_frame_equal(p, before[0])
    pd.testing.assert_frame_equal(c, before[1])
    m = res.matched(p, c)
    assert (m["group"] == "patient").sum() == len(p) and set(m["pair"]) == set(range(len(p)))


def test_greedy_hand_case():
    """Patients pick in order of decreasing propensity; a taken control is not reused."""
    p = pd.DataFrame({"age": [60.0, 61.0]}, index=["a", "b"])
    c = pd.DataFrame({"age": [60.6, 40.0, 20.0]}, index=["x", "y", "z"])
    res = match_controls(p, c, on=("age",))
    # the logit increases with age: b (61, larger score) picks x (60.6) first, a gets y (40)
    assert dict(zip(res.pairs["patient_id"], res.pairs["control_id"], strict=True)) == {"a": "y", "b": "x"}


def test_caliper_leaves_patients_unmatched():
    """Patients beyond the caliper stay unmatched and are counted in a warning."""
    p = pd.DataFrame({"age": [30.0, 31.0, 80.0]}, index=["a", "b", "c"])
    c = pd.DataFrame({"age": [30.5, 31.5, 20.0, 25.0, 35.0]}, index=list("vwxyz"))
    with pytest.warns(DataDroppedWarning, match="1 of 3 patients"):
        res = match_controls(p, c, on=("age",), caliper=0.2)
    assert res.unmatched == ("c",) and len(res.pairs) == 2


def test_reference_controls_refused(rng):
    """Controls used in the normative reference fit cannot be matched."""
    p, c = _cohort(rng, 10, 30)
    with pytest.raises(ColumnContractError, match=r"2 candidate controls were used.*'C3'"):
        match_controls(p, c, reference_ids=["C3", "C7", "Z1"])


def test_logistic_equals_statsmodels(rng):
    """The propensity linear predictor equals statsmodels' unpenalised Logit."""
    import statsmodels.api as sm

    X = rng.normal(size=(200, 3))
    y = (rng.uniform(size=200) < 1 / (1 + np.exp(-(X @ [1.0, -0.5, 0.2])))).astype(float)
    eta = _logistic(X, y, ["a", "b", "c"], "t")
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    assert_allclose(eta, sm.add_constant(X) @ ref.params, rtol=1e-7, atol=1e-9)


def test_separation_and_bad_sex():
    """Non-overlapping groups and unknown sex codes raise clear errors."""
    p = pd.DataFrame({"age": [60.0, 61.0, 62.0], "sex": ["F", "M", "F"]})
    c = pd.DataFrame({"age": [20.0, 21.0, 22.0, 23.0], "sex": ["F", "M", "F", "M"]}, index=[10, 11, 12, 13])
    with pytest.raises(ColumnContractError, match=r"separates.*\['age'\]"):
        match_controls(p, c, on=("age", "sex"))
    with pytest.raises(ColumnContractError, match=r"'sex' must hold 'F'/'M'.*'female'"):
        match_controls(p.assign(sex=["F", "female", "M"]), c, on=("age", "sex"))
