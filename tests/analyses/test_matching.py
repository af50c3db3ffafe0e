"""Propensity matching: planted cases, logistic fit against statsmodels, leakage guard."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from analyses.matching import _greedy_match, _logistic, match_controls
from normfuse.errors import ColumnContractError, ConvergenceWarning, DataDroppedWarning


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


def _greedy_reference(ep, ec, seq, cal_abs):
    """The former O(n_p * n_c) loop, kept as the slow reference: each patient scans every control."""
    used = np.zeros(len(ec), bool)
    pi, ci, unmatched = [], [], []
    for i in seq:
        dist = np.where(used, np.inf, np.abs(ec - ep[i]))
        j = int(np.argmin(dist))
        if not np.isfinite(dist[j]) or (cal_abs is not None and dist[j] > cal_abs):
            unmatched.append(i)
            continue
        used[j] = True
        pi.append(i)
        ci.append(j)
    return np.array(pi, int), np.array(ci, int), np.array(unmatched, int)


@pytest.mark.parametrize("seed", range(6))
def test_sorted_greedy_equals_full_scan(seed):
    """Sorted/union-find matching gives the very pairs of the full scan (ties, caliper misses, all orders)."""
    rng = np.random.default_rng(seed)
    n_p, n_c = int(rng.integers(1, 120)), int(rng.integers(1, 150))
    # rounded scores make many exact ties (within controls, and left/right of a patient)
    ep = np.round(rng.normal(0.3, 1.0, n_p), int(rng.integers(0, 3)))
    ec = np.round(rng.normal(0.0, 1.2, n_c), int(rng.integers(0, 3)))
    for seq in (np.argsort(-ep, kind="stable"), np.argsort(ep, kind="stable"),
                rng.permutation(n_p), np.arange(n_p)):
        for cal in (None, 0.0, 0.05, 0.3):
            got = _greedy_match(ep, ec, seq, cal)
            want = _greedy_reference(ep, ec, seq, cal)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)


def test_sorted_greedy_rounding_ties_hand_case():
    """Distinct scores whose distances round to the same float go to the lower control position."""
    ep = np.array([-10.0, -10.0, 0.5])
    ec = np.array([2e-17, 1e-17, 0.25, 0.75])
    # |2e-17 + 10| == |1e-17 + 10| == 10.0 in float64: the full scan takes position 0 (not the
    # nearer-sorted 1e-17), then 1; the third patient (0.5) is equidistant from 0.25 and 0.75
    # and takes position 2
    pi, ci, um = _greedy_match(ep, ec, np.arange(3), None)
    assert pi.tolist() == [0, 1, 2] and ci.tolist() == [0, 1, 2] and um.size == 0
    for seq in (np.arange(3), np.array([2, 0, 1])):
        got, want = _greedy_match(ep, ec, seq, None), _greedy_reference(ep, ec, seq, None)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_match_controls_with_tied_scores_equals_full_scan(rng):
    """End to end on integer ages (tied propensities): pairs equal the full-scan reference."""
    p = pd.DataFrame({"age": rng.integers(40, 60, 80).astype(float)}, index=[f"P{i}" for i in range(80)])
    c = pd.DataFrame({"age": rng.integers(30, 70, 150).astype(float)}, index=[f"C{i}" for i in range(150)])
    for order in ("largest", "smallest", "data", "random"):
        for caliper in (None, 0.01):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataDroppedWarning)
                res = match_controls(p, c, on=("age",), caliper=caliper, order=order, random_state=3)
            X = p[["age"]].to_numpy()
            eta = _logistic(np.vstack([X, c[["age"]].to_numpy()]), np.r_[np.ones(80), np.zeros(150)],
                            ["age"], "t")
            ep, ec = eta[:80], eta[80:]
            seq = {"largest": np.argsort(-ep, kind="stable"), "smallest": np.argsort(ep, kind="stable"),
                   "data": np.arange(80), "random": np.random.default_rng(3).permutation(80)}[order]
            cal = None if caliper is None else caliper * float(np.std(eta, ddof=1))
            pi, ci, um = _greedy_reference(ep, ec, seq, cal)
            k = np.argsort(pi, kind="stable")
            assert res.pairs["patient_id"].tolist() == p.index[pi[k]].tolist()
            assert res.pairs["control_id"].tolist() == c.index[ci[k]].tolist()
            assert list(res.unmatched) == p.index[um].tolist()


def test_logistic_warns_when_not_converged(rng):
    """IRLS stopped after one iteration warns with ConvergenceWarning; a full run does not."""
    X = rng.normal(size=(200, 2))
    y = (rng.uniform(size=200) < 1 / (1 + np.exp(-(X @ [1.5, -1.0])))).astype(float)
    with pytest.warns(ConvergenceWarning, match=r"did not converge within 1 iterations"):
        _logistic(X, y, ["a", "b"], "t", max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        _logistic(X, y, ["a", "b"], "t")
