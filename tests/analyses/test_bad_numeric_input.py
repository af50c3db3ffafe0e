"""Bad numeric input is refused, not fitted: text numbers, infinities, hidden warnings, separation.

Each test reproduces a reviewer's finding (audit B) that gave a wrong model silently before.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from analyses._formula import design, drop_aliased
from analyses.counts import fit_counts
from analyses.cox import fit_cox
from analyses.mixed import fit_mixed, fit_ols, fit_regional
from normfuse.errors import ColumnContractError, ConvergenceWarning, DataDroppedWarning

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _long(rng, n_pat=30, n_vis=3):
    """Planted long data: y = 1 + 0.5 x + u_id + e, with a text copy of x."""
    pid = np.repeat(np.arange(n_pat), n_vis)
    x = rng.normal(size=pid.size)
    y = 1 + 0.5 * x + rng.normal(0, 0.8, n_pat)[pid] + rng.normal(0, 0.5, pid.size)
    t = rng.exponential(1, pid.size)
    return pd.DataFrame({"pid": pid, "x": x, "y": y, "t": t, "e": (rng.random(pid.size) < 0.6) * 1,
                         "n": rng.poisson(np.exp(0.3 + 0.2 * x))})


def _lstsq(y, A):
    """Independent OLS by numpy least squares (reference for fit_ols)."""
    return np.linalg.lstsq(np.asarray(A, float), np.asarray(y, float), rcond=None)[0]


# ---------------------------------------------------------------- 1. numbers stored as text

def test_text_response_refused_by_every_model(rng):
    """A response stored as text ('2.0', ..., 'unknown') raises in fit_ols/mixed/counts naming row and value."""
    d = _long(rng)
    edss = d["y"].round(1).astype(str).astype(object)
    edss.iloc[4] = "unknown"
    bad = d.assign(y=edss, n=d["n"].astype(str))
    with pytest.raises(ColumnContractError, match=r"response 'y' must be numeric; row 4 holds 'unknown'.*pd\.to_numeric"):
        fit_ols("y ~ x", bad)
    with pytest.raises(ColumnContractError, match=r"response 'y' must be numeric; row 4 holds 'unknown'"):
        fit_mixed("y ~ x", bad, group="pid")
    # every cell parses: still refused (patsy would dummy-code it), naming the first cell
    with pytest.raises(ColumnContractError, match=r"response 'n' holds numbers stored as text \(row 0 holds '\d+'\).*pd\.to_numeric"):
        fit_counts("n ~ x", bad)


def test_text_predictor_refused_by_every_model(rng):
    """A mostly numeric text predictor raises in fit_ols, fit_mixed, fit_counts and fit_cox, naming row 7's 'n/a'."""
    d = _long(rng)
    xs = d["x"].astype(object)
    xs.iloc[7] = "n/a"
    bad = d.assign(x=xs)
    pat = r"predictor 'x' is stored as text although 89 of 90 cells are numbers \(row 7 holds 'n/a'.*pd\.to_numeric"
    with pytest.raises(ColumnContractError, match=pat):
        fit_ols("y ~ x", bad)
    with pytest.raises(ColumnContractError, match=pat):
        fit_mixed("y ~ x", bad, group="pid")
    with pytest.raises(ColumnContractError, match=pat):
        fit_counts("n ~ x", bad)
    with pytest.raises(ColumnContractError, match=pat):
        fit_cox(["x"], bad, "t", "e")
    with pytest.raises(ColumnContractError, match=pat):
        fit_cox("x", bad, "t", "e")
    # all cells parse ('0.12', ...): refused too, naming the first cell
    with pytest.raises(ColumnContractError, match=r"predictor 'x' is stored as text although 90 of 90"):
        fit_ols("y ~ x", d.assign(x=d["x"].astype(str)))


def test_genuine_categories_still_factors(rng):
    """Text sex 'F'/'M' and site names stay factors: fit_ols equals least squares on hand-made dummies."""
    n = 60
    sex = rng.choice(["F", "M"], n)
    site = rng.choice(["basel", "oslo", "rome"], n)
    x = rng.normal(size=n)
    y = 2 + 0.4 * x + 0.7 * (sex == "M") - 0.5 * (site == "rome") + rng.normal(0, 0.3, n)
    d = pd.DataFrame({"y": y, "x": x, "sex": sex, "site": site})
    res = fit_ols("y ~ x + sex + site", d)
    A = np.column_stack([np.ones(n), sex == "M", site == "oslo", site == "rome", x])   # patsy's order
    assert_allclose(res.params["coef"].to_numpy(), _lstsq(y, A), rtol=1e-10)
    assert list(res.params.index) == ["Intercept", "sex[T.M]", "site[T.oslo]", "site[T.rome]", "x"]
    # site codes stored as text ("1", "2", "3") are a factor on purpose when written C(code)
    codes = pd.Series(site).map({"basel": "1", "oslo": "2", "rome": "3"}).to_numpy()
    res_c = fit_ols("y ~ x + sex + C(code)", d.assign(code=codes))
    assert_allclose(res_c.params["coef"].to_numpy()[-1], res.params.loc["x", "coef"], rtol=1e-10)
    with pytest.raises(ColumnContractError, match=r"predictor 'code'.*C\(code\)"):
        fit_ols("y ~ x + code", d.assign(code=codes))


def test_bool_response_and_object_numbers_are_numbers(rng):
    """A boolean count response is 0/1 (not a dummy of False) and an object column of floats is numeric."""
    d = pd.DataFrame({"y": [1, 0, 1, 1, 0, 1, 0, 1], "x": [0.5, 2.0, 1.0, 0.2, 3.0, 1.5, 2.5, 0.1]})
    ref = fit_counts("y ~ x", d).params["coef"].to_numpy()
    got = fit_counts("y ~ x", d.assign(y=d["y"].astype(bool))).params["coef"].to_numpy()
    assert_allclose(got, ref, rtol=1e-10)
    ols_ref = _lstsq(d["y"], np.column_stack([np.ones(8), d["x"]]))
    ols = fit_ols("y ~ x", d.assign(x=d["x"].astype(object), y=d["y"].astype(float).astype(object)))
    assert_allclose(ols.params["coef"].to_numpy(), ols_ref, rtol=1e-10)


# ---------------------------------------------------------------- 2. infinities

def test_infinities_refused_naming_column_row_value(rng):
    """+-inf in a response, predictor, offset or slope raises naming column, row and value in every model."""
    d = _long(rng)
    xi = d["x"].to_numpy().copy()
    xi[0] = np.inf
    yi = d["y"].to_numpy().copy()
    yi[5] = -np.inf
    with pytest.raises(ColumnContractError, match=r"column 'x' holds inf at row 0"):
        fit_cox(["x"], d.assign(x=xi), "t", "e")
    with pytest.raises(ColumnContractError, match=r"column 'y' holds -inf at row 5"):
        fit_mixed("y ~ x", d.assign(y=yi), group="pid")
    with pytest.raises(ColumnContractError, match=r"column 'y' holds -inf at row 5"):
        fit_ols("y ~ x", d.assign(y=yi))
    with pytest.raises(ColumnContractError, match=r"column 'x' holds inf at row 0"):
        fit_counts("n ~ x", d.assign(x=xi))
    with pytest.raises(ColumnContractError, match=r"column 'off' holds inf at row 0"):
        fit_counts("n ~ x", d.assign(off=np.where(np.arange(len(d)) == 0, np.inf, 0.0)), offset="off")
    with pytest.raises(ColumnContractError, match=r"column 'x' holds inf at row 0"):
        fit_mixed("y ~ 1", d.assign(x=xi), group="pid", random_slope="x")
    # an infinity made by the formula's own transformation names the design column
    with pytest.raises(ColumnContractError, match=r"column 'np.log\(z\)' holds -inf at row 3.*log of 0"):
        fit_ols("y ~ np.log(z)", d.assign(z=np.where(np.arange(len(d)) == 3, 0.0, 1.0 + d["x"] ** 2)))


def test_drop_aliased_refuses_nonfinite_instead_of_calling_it_aliased():
    """drop_aliased raises on an inf column rather than dropping it as 'aliased' (its norm is NaN)."""
    X = pd.DataFrame({"Intercept": 1.0, "x": [1.0, 2.0, np.inf, 4.0], "z": [0.0, 1.0, 0.0, 1.0]})
    with pytest.raises(ColumnContractError, match=r"column 'x' holds inf at row 2"):
        drop_aliased(X, "t")
    # a genuinely aliased column is still dropped: z2 = 2 z (R: coef NA)
    with pytest.warns(DataDroppedWarning, match=r"\['z2'\]"):
        kept, dropped = drop_aliased(X.assign(x=[1.0, 2.0, 3.0, 5.0], z2=2 * X["z"]), "t")
    assert dropped == ["z2"] and list(kept.columns) == ["Intercept", "x", "z"]


def test_nan_stays_missing_and_counted(rng):
    """NaN (not inf) is still dropped, counted in a DataDroppedWarning and the fit equals the complete-case fit."""
    d = _long(rng)
    y = d["y"].to_numpy().copy()
    y[[2, 11]] = np.nan
    with pytest.warns(DataDroppedWarning, match="dropped 2 of 90 rows"):
        res = fit_ols("y ~ x", d.assign(y=y))
    cc = d.drop(index=[2, 11])
    assert res.n_obs == 88
    assert_allclose(res.params["coef"].to_numpy(), _lstsq(cc["y"], np.column_stack([np.ones(88), cc["x"]])),
                    rtol=1e-10)
    with pytest.warns(DataDroppedWarning, match="dropped 2 of 90 rows"):
        yser, X, dd = design("y ~ x", d.assign(y=y), "t")
    assert list(dd.index) == list(cc.index) and list(X.index) == list(cc.index)


# ---------------------------------------------------------------- 3. fit_regional

def _regional_data(rng, n_pat=40, n_vis=3):
    pid = np.repeat(np.arange(n_pat), n_vis)
    d = pd.DataFrame({"pid": pid, "edss": rng.normal(size=n_pat * n_vis), "A": rng.normal(size=n_pat * n_vis)})
    d["edss"] -= d.groupby("pid")["edss"].transform("mean")   # no between-patient variance: boundary fit
    return d


def test_regional_reissues_normfuse_warnings_with_region_names(rng):
    """fit_regional passes ConvergenceWarning and DataDroppedWarning on, naming the regions (not '__region__')."""
    d = _regional_data(rng)
    b = d["A"].to_numpy().copy()
    b[:10] = np.nan
    d["B"] = b
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = fit_regional(d, ["A", "B"], "edss ~ {region}", group="pid")
    msgs = {w.category: str(w.message) for w in got if w.category in (ConvergenceWarning, DataDroppedWarning)}
    assert "2 of 2 regions ['A', 'B']" in msgs[ConvergenceWarning] and "boundary" in msgs[ConvergenceWarning]
    assert "1 of 2 regions ['B']" in msgs[DataDroppedWarning]
    assert "{'B': 10}" in msgs[DataDroppedWarning] and "__region__" not in msgs[DataDroppedWarning]
    t = res.summary()
    assert t["boundary"].tolist() == [1, 1] and t["converged"].tolist() == [1, 1]
    assert t["n_obs"].tolist() == [120, 110]
    # a user filter turning the category into an error still works through fit_regional
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("ignore", DataDroppedWarning)
        with pytest.raises(ConvergenceWarning, match="regions"):
            fit_regional(d, ["A"], "edss ~ {region}", group="pid")


def test_regional_flags_match_fit_mixed_and_ols(rng):
    """converged/boundary columns equal each region's own fit_mixed result; OLS rows are 1/0."""
    n_pat, n_vis = 50, 3
    pid = np.repeat(np.arange(n_pat), n_vis)
    z = rng.normal(size=(pid.size, 2))
    edss = 3 - 0.6 * z[:, 0] + rng.normal(0, 0.8, n_pat)[pid] + rng.normal(0, 0.5, pid.size)
    d = pd.DataFrame(z, columns=["Left-Thalamus", "Brain-Stem"]).assign(edss=edss, pid=pid)
    res = fit_regional(d, ["Left-Thalamus", "Brain-Stem"], "edss ~ {region}", group="pid").summary()
    for reg in ["Left-Thalamus", "Brain-Stem"]:
        v = d[reg]
        one = fit_mixed(f'edss ~ Q("{reg}")', d.assign(**{reg: (v - v.mean()) / v.std()}), group="pid")
        assert res.loc[reg, "converged"] == int(one.converged) and res.loc[reg, "boundary"] == int(one.boundary)
        assert_allclose(res.loc[reg, "coef"], one.params.loc[reg, "coef"], rtol=1e-8)
    ols = fit_regional(d.iloc[::n_vis], ["Left-Thalamus"], "edss ~ {region}").summary()
    assert ols["converged"].tolist() == [1] and ols["boundary"].tolist() == [0]


def test_regional_refuses_text_cells(rng):
    """A region with an 'n/a' cell raises naming the region, the row and the value (no silent coercion)."""
    d = _regional_data(rng)
    b = d["A"].astype(object)
    b.iloc[3] = "n/a"
    with pytest.raises(ColumnContractError, match=r"region 'B' must be numeric; row 3 holds 'n/a'.*pd\.to_numeric"):
        fit_regional(d.assign(B=b), ["A", "B"], "edss ~ {region}", group="pid")
    bi = d["A"].to_numpy().copy()
    bi[8] = np.inf
    with pytest.raises(ColumnContractError, match=r"column 'B' holds inf at row 8"):
        fit_regional(d.assign(B=bi), ["B"], "edss ~ {region}")


def test_regional_standardises_on_complete_cases(rng):
    """The standardised coefficient is per SD of the rows fitted: it equals OLS on z-scores of the complete cases."""
    n = 80
    reg = rng.normal(5, 2, n)
    age = rng.normal(45, 10, n)
    edss = 2 + 0.3 * reg + 0.02 * age + rng.normal(0, 0.5, n)
    edss[:15] = np.nan                       # rows dropped by the model: not part of the SD
    reg[:15] += 10                           # ... and far off, so using them would shift mean and SD
    age[20] = np.nan
    d = pd.DataFrame({"edss": edss, "R": reg, "age": age})
    with pytest.warns(DataDroppedWarning, match="1 of 1 regions"):
        res = fit_regional(d, ["R"], "edss ~ {region} + age").summary()
    ok = d.notna().all(axis=1).to_numpy()
    r = reg[ok]
    zs = (r - r.mean()) / r.std(ddof=1)
    beta = _lstsq(edss[ok], np.column_stack([np.ones(ok.sum()), zs, age[ok]]))
    assert_allclose(res.loc["R", "coef"], beta[1], rtol=1e-10)
    assert res.loc["R", "n_obs"] == ok.sum() == 64


# ---------------------------------------------------------------- 4. separation, both directions

@pytest.mark.parametrize("family", ["poisson", "negbin"])
def test_separation_in_reference_level_raises(family):
    """All counts zero in the reference level (y = 0,0,0,0,2,3,1,4; g = c x4, p x4) raises instead of coef 31.4."""
    sep = pd.DataFrame({"y": [0, 0, 0, 0, 2, 3, 1, 4], "g": list("ccccpppp")})
    # R: glm(y ~ g, poisson) gives coef 31.4, SE ~1e6 for gp: no finite MLE
    with pytest.raises(ColumnContractError,
                       match=r"separation: every count is zero where 'g\[T\.p\]' = 0 \(4 rows; the reference level 'c'.*C\(g, Treatment"):
        fit_counts("y ~ g", sep, family=family)


def test_separation_three_levels_and_numeric_indicator():
    """A zero reference level of a 3-level factor, and a numeric 0/1 covariate zero where 0, both raise."""
    s3 = pd.DataFrame({"y": [0, 0, 0, 1, 2, 3, 1, 4, 0], "g": list("cccpppqqq")})
    with pytest.raises(ColumnContractError, match=r"zero in the reference level of 'g'.*3 rows; the reference level 'c'"):
        fit_counts("y ~ g", s3)
    d = pd.DataFrame({"y": [0, 0, 0, 1, 2, 3], "treated": [0.0, 0, 0, 1, 1, 1], "age": [30.0, 40, 35, 50, 45, 41]})
    with pytest.raises(ColumnContractError, match=r"zero where 'treated' = 0 \(3 rows\)"):
        fit_counts("y ~ treated + age", d)
    # the original direction still raises
    with pytest.raises(ColumnContractError, match=r"zero where 'g\[T\.p\]' = 1"):
        fit_counts("y ~ g", pd.DataFrame({"y": [1, 2, 3, 0, 0, 0], "g": list("cccppp")}))


def test_no_false_separation_alarm():
    """Zeros in some but not all rows of a level fit normally; IRR equals the ratio of level means (planted)."""
    d = pd.DataFrame({"y": [0, 0, 1, 0, 2, 3, 1, 4], "g": list("ccccpppp")})
    res = fit_counts("y ~ g", d)
    # glm(y ~ g, poisson): exp(coef) = mean(p) / mean(c) = 2.5 / 0.25 = 10
    assert_allclose(res.params.loc["g[T.p]", "irr"], 10.0, rtol=1e-8)
    # without an intercept a zero complement is not separation for the other column's sake
    no_int = fit_counts("y ~ 0 + x", pd.DataFrame({"y": [0, 0, 1, 2, 3], "x": [0.0, 0, 1, 1, 1]}))
    assert_allclose(no_int.params.loc["x", "irr"], 2.0, rtol=1e-8)      # mean over x = 1 rows
