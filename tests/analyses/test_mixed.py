"""Mixed models against lme4's sleepstudy fits; OLS, regional models with BH FDR, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from analyses._common import bh_fdr
from analyses.mixed import fit_mixed, fit_ols, fit_regional
from normfuse.errors import ColumnContractError, ConvergenceWarning


@pytest.fixture(scope="module")
def sleep(references):
    return pd.read_csv(references / "lme4_sleepstudy.csv")


def test_sleepstudy_reml_correlated(sleep):
    """lmer(Reaction ~ Days + (Days | Subject)) REML: fixed effects, SEs, variances, criterion."""
    res = fit_mixed("Reaction ~ Days", sleep, group="Subject", random_slope="Days")
    # fixef(fm1); sqrt(diag(vcov(fm1)))
    assert_allclose(res.params["coef"], [251.40510, 10.46729], atol=5e-6)
    assert_allclose(res.params["se"], [6.825, 1.546], atol=5e-4)
    # REMLcrit(fm1) = 1743.6282722424; ours is a slightly better optimum (lower by 2.8e-7)
    assert res.reml_criterion <= 1743.6282722424
    assert_allclose(res.reml_criterion, 1743.6282722424, atol=1e-6)
    v = res.variance
    # VarCorr(fm1): 612.100 (sd 24.7407), 35.072 (5.9221), cov 9.604 (corr 0.066), 654.940 (25.5918).
    # lme4 stops where the REML surface is flat; at our (lower) optimum the variances agree to 2e-5.
    assert_allclose(v["variance"], [612.100, 35.072, 654.940], rtol=2e-5)
    assert_allclose(v["sd"], [24.7407, 5.9221, 25.5918], rtol=1.2e-5)
    assert_allclose(v.loc["Days", "cov"], 9.604, atol=5e-4)
    assert_allclose(v.loc["Days", "corr"], 0.066, atol=5e-4)
    assert res.converged and not res.boundary and res.n_groups == 18


def test_satterthwaite_df_balanced_design(sleep):
    """Satterthwaite df equal the exact balanced-design values lmerTest prints (17, 17; 161)."""
    # summary(lmerTest::lmer(Reaction ~ Days + (Days | Subject), sleepstudy)): df 17.000, 17.000;
    # Pr(>|t|) for Days 3.26e-06. Balanced design: the tests reduce to one-sample t on
    # per-subject fits, so df = 18 - 1 exactly.
    res = fit_mixed("Reaction ~ Days", sleep, group="Subject", random_slope="Days")
    assert_allclose(res.params["df"], [17.0, 17.0], atol=5e-4)
    assert_allclose(res.params.loc["Days", "p"], 3.26e-06, atol=5e-9)
    # lmer(Reaction ~ Days + (1 | Subject)): the within-subject Days effect has df = 180 - 18 - 1
    ri = fit_mixed("Reaction ~ Days", sleep, group="Subject")
    assert_allclose(ri.params.loc["Days", "df"], 161.0, atol=5e-4)
    z = fit_mixed("Reaction ~ Days", sleep, group="Subject", ddf="normal")
    assert "z" in z.params.columns and "df" not in z.params.columns


def test_sleepstudy_ml(sleep):
    """ML refit (REML = FALSE): logLik, AIC, BIC and deviance equal lme4."""
    res = fit_mixed("Reaction ~ Days", sleep, group="Subject", random_slope="Days", reml=False)
    # logLik(fm1ML); AIC(fm1ML); BIC(fm1ML); deviance(fm1ML)
    assert_allclose(res.llf, -875.9697, atol=5e-5)
    assert_allclose(res.aic, 1763.9393, atol=5e-5)
    assert_allclose(res.bic, 1783.0971, atol=5e-5)
    assert_allclose(res.deviance, 1751.9393, atol=5e-5)
    assert np.isnan(res.reml_criterion)


def test_sleepstudy_uncorrelated(sleep):
    """lmer(Reaction ~ Days + (Days || Subject)) REML: variances and criterion equal lme4."""
    res = fit_mixed("Reaction ~ Days", sleep, group="Subject", random_slope="Days", correlated=False)
    # VarCorr(fm2): 627.56905, 35.85838, residual 653.58350; REMLcrit(fm2) 1743.669
    assert_allclose(res.variance["variance"], [627.56905, 35.85838, 653.58350], rtol=1e-5)
    assert_allclose(res.reml_criterion, 1743.669, atol=5e-4)
    assert "corr" not in res.variance.columns


def test_random_intercept_matches_statsmodels(sleep):
    """Random-intercept REML equals statsmodels MixedLM (independent implementation)."""
    import statsmodels.formula.api as smf

    res = fit_mixed("Reaction ~ Days", sleep, group="Subject")
    sm = smf.mixedlm("Reaction ~ Days", sleep, groups="Subject").fit(reml=True)
    assert_allclose(res.params["coef"], sm.fe_params, rtol=1e-8)
    assert_allclose(res.params["se"], sm.bse_fe, rtol=1e-4)
    assert_allclose(res.variance.loc["Residual", "variance"], sm.scale, rtol=1e-4)
    assert_allclose(res.llf, sm.llf, rtol=1e-9)


def test_boundary_fit_warns(rng):
    """Identical group means (no between-subject variance) give a boundary fit warning and flag."""
    n, g = 200, 40
    d = pd.DataFrame({"y": rng.normal(size=n), "id": np.repeat(np.arange(g), n // g)})
    d["y"] = d["y"] - d.groupby("id")["y"].transform("mean")
    with pytest.warns(ConvergenceWarning, match="boundary"):
        res = fit_mixed("y ~ 1", d, group="id")
    assert res.boundary and res.variance.loc["Intercept", "variance"] < 1e-6


def test_single_observation_groups():
    """Singleton groups are kept; all-singleton data is refused with a pointer to fit_ols."""
    d = pd.DataFrame({"y": [1.0, 2.0, 3.0, 2.5], "x": [0.0, 1.0, 2.0, 1.5], "id": [1, 2, 3, 4]})
    with pytest.raises(ColumnContractError, match="single observation.*fit_ols"):
        fit_mixed("y ~ x", d, group="id")


def test_ols_hand_case():
    """OLS on a line with known residuals: slope, SE and R^2 by hand."""
    d = pd.DataFrame({"y": [1.0, 3.0, 2.0, 5.0], "x": [0.0, 1.0, 2.0, 3.0]})
    res = fit_ols("y ~ x", d)
    # lm(y ~ x): slope = Sxy/Sxx = 5.5/5 = 1.1; rss = 2.7, s2 = 1.35, se = sqrt(1.35/5)
    assert_allclose(res.params.loc["x", "coef"], 1.1)
    assert_allclose(res.params.loc["x", "se"], np.sqrt(1.35 / 5))
    assert_allclose(res.r2, 1 - 2.7 / 8.75)


def test_bh_fdr_matches_r():
    """BH adjustment equals R's p.adjust(..., "BH") on four p-values."""
    # p.adjust(c(0.01, 0.04, 0.03, 0.2), "BH") = 0.04 0.05333333 0.05333333 0.20
    assert_allclose(bh_fdr([0.01, 0.04, 0.03, 0.2]), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_regional_models_find_planted_region(rng):
    """With EDSS driven by one region, that region survives FDR and null ones mostly do not."""
    n_pat, n_vis = 80, 3
    regs = ["Left-Thalamus", "Left-Hippocampus", "Right-Putamen", "Brain-Stem"]
    z = rng.normal(size=(n_pat, len(regs)))
    pid = np.repeat(np.arange(n_pat), n_vis)
    u = rng.normal(0, 0.7, n_pat)
    edss = 3 - 0.6 * z[pid, 0] + u[pid] + rng.normal(0, 0.5, n_pat * n_vis)
    d = pd.DataFrame(z[pid], columns=regs).assign(edss=edss, pid=pid)
    before = d.copy()
    res = fit_regional(d, regs, "edss ~ {region}", group="pid")
    t = res.summary()
    assert t.loc["Left-Thalamus", "p_fdr"] < 1e-6 and t.loc["Left-Thalamus", "coef"] < 0
    assert (t["p_fdr"] >= t["p"]).all()
    pd.testing.assert_frame_equal(d, before)
    with pytest.raises(ColumnContractError, match="region 'flat' is constant"):
        fit_regional(d.assign(flat=1.0), ["flat"], "edss ~ {region}")
    ols = fit_regional(d.loc[np.arange(0, len(d), n_vis)], regs, "edss ~ {region}")
    assert ols.model == "OLS" and ols.summary().loc["Left-Thalamus", "p_fdr"] < 0.01


def test_singleton_groups_kept_and_logged(rng, caplog):
    """Groups with one observation are kept (as lme4) and their number is logged."""
    import logging

    n_g = 30
    ids = np.r_[np.repeat(np.arange(n_g), 3), np.arange(n_g, n_g + 5)]
    u = rng.normal(0, 1, n_g + 5)
    d = pd.DataFrame({"id": ids, "x": rng.normal(size=ids.size)})
    d["y"] = 1 + 0.5 * d["x"] + u[ids] + rng.normal(0, 0.5, ids.size)
    with caplog.at_level(logging.INFO, logger="normfuse"):
        res = fit_mixed("y ~ x", d, group="id")
    assert res.n_groups == n_g + 5 and res.n_obs == ids.size
    assert "5 of 35 groups" in caplog.text
