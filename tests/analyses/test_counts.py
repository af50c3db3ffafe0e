"""Count models against MASS (epil Poisson, quine negative binomial) and bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from analyses.counts import fit_counts, theta_ml
from normfuse.errors import ColumnContractError, ConvergenceWarning, DataDroppedWarning


@pytest.fixture(scope="module")
def epil(references):
    return pd.read_csv(references / "MASS_epil.csv")


@pytest.fixture(scope="module")
def quine(references):
    return pd.read_csv(references / "MASS_quine.csv")


def test_epil_poisson_matches_r(epil):
    """Poisson GLM on epil equals R's glm estimates, SEs, deviances and AIC."""
    res = fit_counts("y ~ lbase*trt + lage + V4", epil)
    t = res.params
    # glm(y ~ lbase*trt + lage + V4, family = poisson, data = epil); coef(summary(fit))
    exp = {"Intercept": (1.89915, 0.04258), "lbase": (0.94952, 0.04356),
           "trt[T.progabide]": (-0.34713, 0.06098), "lage": (0.89705, 0.11644),
           "V4": (-0.16109, 0.05458), "lbase:trt[T.progabide]": (0.56223, 0.06350)}
    for term, (b, se) in exp.items():
        assert_allclose(t.loc[term, "coef"], b, atol=5e-6)
        assert_allclose(t.loc[term, "se"], se, atol=5e-6)
    # fit$null.deviance, fit$deviance, fit$df.residual, AIC(fit)
    assert_allclose(res.null_deviance, 2521.75, atol=5e-3)
    assert_allclose(res.deviance, 869.32, atol=5e-3)
    assert res.df_resid == 230
    assert_allclose(res.aic, 1647.3, atol=0.05)
    # exp(confint.default(fit))["trtprogabide", ] = exp(b -/+ 1.959964 * se)
    assert_allclose(t.loc["trt[T.progabide]", "irr_ci_low"], np.exp(-0.34713 - 1.959964 * 0.06098), rtol=2e-4)
    assert_allclose(t.loc["trt[T.progabide]", "irr"], np.exp(-0.34713), rtol=1e-5)


def test_quine_negbin_matches_mass(quine):
    """glm.nb on quine: theta, its SE, 2 x loglik, deviance and coefficients equal MASS."""
    with pytest.warns(DataDroppedWarning, match="4 coefficients not defined"):
        res = fit_counts("Days ~ Eth*Age*Lrn*Sex", quine, family="negbin")
    # glm.nb(Days ~ Eth*Age*Lrn*Sex, quine): fit$theta, fit$SE.theta, fit$twologlik
    assert_allclose(res.theta, 1.928360145, atol=5e-9)
    assert_allclose(res.theta_se, 0.269, atol=5e-4)
    assert_allclose(res.twice_loglik, -1039.324, atol=5e-4)
    # deviance(fit); df.residual(fit)
    assert_allclose(res.deviance, 167.45, atol=5e-3)
    assert res.df_resid == 118 and len(res.aliased) == 4
    t = res.params
    # coef(summary(fit))[c("(Intercept)", "EthN", ...), 1:2]
    exp = {"Intercept": (3.0564, 0.3760), "Eth[T.N]": (-0.1386, 0.5334),
           "Age[T.F1]": (-0.6227, 0.5125), "Age[T.F2]": (-2.3632, 1.0770),
           "Age[T.F3]": (-0.3784, 0.4546), "Lrn[T.SL]": (-1.9577, 0.9967),
           "Sex[T.M]": (-0.4914, 0.5104), "Age[T.F2]:Lrn[T.SL]": (4.8585, 1.4423)}
    for term, (b, se) in exp.items():
        assert_allclose(t.loc[term, "coef"], b, atol=5e-5)
        assert_allclose(t.loc[term, "se"], se, atol=5e-5)


@pytest.mark.parametrize("formula, theta, twoll", [
    # glm.nb(Days ~ Sex/(Age + Eth*Lrn), quine): theta, twologlik
    ("Days ~ Sex/(Age + Eth*Lrn)", 1.597991, -1063.025),
    # glm.nb(Days ~ Sex/(Age + Eth*Lrn) + Sex:Age:Lrn, quine)
    ("Days ~ Sex/(Age + Eth*Lrn) + Sex:Age:Lrn", 1.686899, -1055.398),
])
def test_quine_nested_models(quine, formula, theta, twoll):
    """The nested quine fits in MASS's anova example give R's theta and 2 x loglik."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataDroppedWarning)
        res = fit_counts(formula, quine, family="negbin")
    assert_allclose(res.theta, theta, atol=5e-7)
    assert_allclose(res.twice_loglik, twoll, atol=5e-4)


def test_fixed_theta_and_hand_case():
    """Two groups: IRR is the ratio of means (hand-computed), for Poisson and fixed-theta NB."""
    d = pd.DataFrame({"y": [0, 1, 2, 4, 3, 6], "g": ["c", "c", "c", "p", "p", "p"]})
    for res in (fit_counts("y ~ g", d), fit_counts("y ~ g", d, family="negbin", theta=1.0)):
        assert_allclose(res.params.loc["g[T.p]", "irr"], 13 / 3, rtol=1e-8)
    nb = fit_counts("y ~ g", d, family="negbin", theta=1.0)
    assert nb.theta == 1.0 and np.isnan(nb.theta_se) and nb.theta_fixed
    # NB(theta=1) variance of log mean: 1/(n) * (1/mu + 1/theta) per group (saturated model)
    se = np.sqrt((1 / 1 + 1) / 3 + (1 / (13 / 3) + 1) / 3)
    assert_allclose(nb.params.loc["g[T.p]", "se"], se, rtol=1e-6)


def test_offset_recovers_rate(rng):
    """An exposure offset makes the intercept the log event rate (planted truth)."""
    n = 4000
    t = rng.uniform(0.5, 3.0, n)
    y = rng.poisson(0.8 * t)
    d = pd.DataFrame({"y": y, "logt": np.log(t), "x": rng.normal(size=n)})
    res = fit_counts("y ~ x", d, offset="logt")
    lo, hi = res.params.loc["Intercept", ["irr_ci_low", "irr_ci_high"]]
    assert lo < 0.8 < hi


def test_theta_ml_matches_slow_profile(rng):
    """theta_ml equals a brute-force maximisation of the NB log-likelihood over theta."""
    from scipy.optimize import minimize_scalar
    from scipy.special import gammaln

    mu = np.exp(rng.normal(1, 0.5, 300))
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu))

    def nll(lt):
        t = np.exp(lt)
        return -np.sum(gammaln(t + y) - gammaln(t) + t * np.log(t) + y * np.log(mu) - (t + y) * np.log(t + mu))
    ref = np.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded", options={"xatol": 1e-10}).x)
    th, se, ok = theta_ml(y, mu)
    assert ok and abs(th - ref) < 1e-5 * ref


def test_bad_counts_named():
    """Negative or non-integer counts raise naming the row."""
    d = pd.DataFrame({"y": [1, 2, -1, 3], "x": [0.1, 0.2, 0.3, 0.4]}, index=list("abcd"))
    with pytest.raises(ColumnContractError, match=r"row 'c' holds -1.0 \(negative"):
        fit_counts("y ~ x", d)
    d2 = d.assign(y=[1, 2.5, 1, 3])
    with pytest.raises(ColumnContractError, match=r"row 'b' holds 2.5 \(non-integer"):
        fit_counts("y ~ x", d2)


def test_constant_predictor_and_separation():
    """A constant predictor and an all-zero level raise clear errors naming the term."""
    d = pd.DataFrame({"y": [1, 2, 0, 3, 0, 0], "x": [1.0] * 6, "g": list("aaabbb")})
    with pytest.raises(ColumnContractError, match="predictor 'x' is constant"):
        fit_counts("y ~ x", d)
    d.loc[:, "y"] = [1, 2, 3, 0, 0, 0]
    with pytest.raises(ColumnContractError, match=r"separation.*'g\[T.b\]'"):
        fit_counts("y ~ g", d)


def test_missing_rows_counted_and_input_untouched():
    """Rows with missing covariates are dropped, counted in a warning; the input is unchanged."""
    d = pd.DataFrame({"y": [1, 2, 0, 3, 4, 2], "x": [0.1, np.nan, 0.3, 0.2, np.nan, 0.5]})
    before = d.copy()
    with pytest.warns(DataDroppedWarning, match="dropped 2 of 6 rows"):
        res = fit_counts("y ~ x", d)
    assert res.n_obs == 4
    pd.testing.assert_frame_equal(d, before)
    with pytest.raises(ColumnContractError, match=r"'x' is missing at row 1"):
        fit_counts("y ~ x", d, missing="raise")


def test_unknown_column_in_formula_named():
    """A formula term that is not a column raises a ColumnContractError listing the columns."""
    d = pd.DataFrame({"y": [1, 2, 0, 3], "x": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(ColumnContractError, match=r"(?s)nonexistent.*Columns of data: \['y', 'x'\]"):
        fit_counts("y ~ nonexistent", d)


def test_underdispersed_counts_warn_and_reduce_to_poisson(rng):
    """Binomial (underdispersed) counts: theta -> infinity is reported, the fit equals Poisson."""
    d = pd.DataFrame({"y": rng.binomial(4, 0.5, 300), "x": rng.normal(size=300)})
    with pytest.warns(ConvergenceWarning, match="no overdispersion"):
        nb = fit_counts("y ~ x", d, family="negbin")
    po = fit_counts("y ~ x", d)
    assert not nb.converged and nb.theta >= 1e6
    assert_allclose(nb.params["coef"], po.params["coef"], atol=1e-5)
    assert_allclose(nb.twice_loglik, po.twice_loglik, atol=1e-2)


def test_pearson_dispersion_equals_statsmodels_quasi(epil):
    """dispersion='pearson' (R's quasipoisson summary) equals statsmodels GLM with scale='X2'."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    res = fit_counts("y ~ lbase*trt + lage + V4", epil, dispersion="pearson")
    ref = smf.glm("y ~ lbase*trt + lage + V4", epil, family=sm.families.Poisson()).fit(scale="X2")
    assert_allclose(res.params["se"].to_numpy(), ref.bse.to_numpy(), rtol=1e-6)
    assert_allclose(res.pearson_chi2 / res.df_resid, ref.scale, rtol=1e-8)
    assert "t" in res.params.columns and res.dispersion == "pearson"
