"""Tests of models.evaluate against pROC, dcurves, independent slow implementations and planted truths."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from models import _kernels as K
from models.evaluate import (
    BOOT_BLOCK,
    Threshold,
    age_bands,
    auprc,
    auroc,
    bootstrap_ci,
    brier_score,
    calibration,
    choose_threshold,
    decision_curve,
    delong,
    delong_test,
    evaluate_predictions,
    metrics_at,
    roc_curve,
    subgroup_metrics,
)
from normfuse.errors import ConvergenceWarning


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def asah(references):
    """pROC's aSAH data; outcome Poor = case."""
    d = pd.read_csv(references / "pROC_aSAH.csv")
    return d, (d["outcome"] == "Poor").astype(int)


@pytest.fixture(scope="module")
def df_binary(references):
    """dcurves' df_binary data."""
    return pd.read_csv(references / "dcurves_df_binary.csv")


def _slow_delong(y, s):
    """DeLong (1988) with the O(m n) pairwise kernel, written independently."""
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    psi = (pos[:, None, :] > neg[None, :, :]) + 0.5 * (pos[:, None, :] == neg[None, :, :])
    v10 = psi.mean(axis=1)  # (m, k)
    v01 = psi.mean(axis=0)  # (n, k)
    auc = v10.mean(axis=0)
    s10 = (v10 - auc).T @ (v10 - auc) / (m - 1)
    s01 = (v01 - auc).T @ (v01 - auc) / (n - 1)
    return auc, s10 / m + s01 / n


def _sim(rng, n=300, k=3, ties=True):
    y = (rng.random(n) < 0.35).astype(int)
    s = y[:, None] * rng.uniform(0.2, 1.0, k) + rng.normal(size=(n, k))
    if ties:
        s = np.round(s, 1)
    return y, s


# --------------------------------------------------------------------------- pROC aSAH
@pytest.mark.shared
def test_delong_matches_proc_asah(asah):
    """AUCs, DeLong variances, covariance and the ndka CI equal pROC on aSAH."""
    d, y = asah
    r = delong(y, d[["wfns", "ndka", "s100b"]])
    # roc(aSAH$outcome, aSAH$wfns)$auc etc.
    assert_allclose(r.auc, [0.823678861788618, 0.611957994579946, 0.731368563685637], rtol=1e-12)
    # var(roc(aSAH$outcome, aSAH$wfns), method = "delong") etc.
    assert_allclose(np.diag(r.cov), [0.00146991470882363, 0.0031908105493913, 0.00266868245717244],
                    rtol=1e-10)
    # cov(roc_wfns, roc_ndka, method = "delong")
    assert r.cov[0, 1] == pytest.approx(-0.000532967856762438, rel=1e-10)
    # ci.auc(roc(aSAH$outcome, aSAH$ndka), method = "delong")
    assert_allclose(r.ci[1], [0.501244999271703, 0.722670989888189], rtol=1e-10)
    tab = r.summary()
    assert list(tab.index) == ["wfns", "ndka", "s100b"]
    assert (tab["n_pos"] == 41).all() and (tab["n_neg"] == 72).all()


@pytest.mark.shared
def test_paired_delong_matches_proc_asah(asah):
    """Paired DeLong Z, p and CI of the difference equal pROC's roc.test on aSAH."""
    d, y = asah
    t = delong_test(y, d["wfns"], d["s100b"])
    # roc.test(roc_wfns, roc_s100b, method = "delong")
    assert t.z == pytest.approx(2.20898359144091, rel=1e-10)
    assert t.p_value == pytest.approx(0.0271757822291882, rel=1e-9)
    assert (t.ci_low, t.ci_high) == pytest.approx((0.0104061769564846, 0.174214419249478), rel=1e-9)
    # roc.test(roc_wfns, roc_ndka, method = "delong")
    t2 = delong(y, d[["wfns", "ndka"]]).compare("wfns", "ndka")
    assert t2.z == pytest.approx(2.79777591868904, rel=1e-10)
    assert t2.p_value == pytest.approx(0.00514557970691098, rel=1e-9)
    assert t.names == ("wfns", "s100b")
    pw = delong(y, d[["wfns", "ndka", "s100b"]]).pairwise()
    assert pw.loc["wfns - s100b", "z"] == pytest.approx(t.z)


@pytest.mark.shared
def test_youden_matches_proc_asah(asah):
    """The Youden cut of s100b gives pROC's sensitivity/specificity and midpoint 0.205."""
    d, y = asah
    t = choose_threshold(y, d["s100b"])
    # coords(roc(aSAH$outcome, aSAH$s100b), "best", best.method = "youden")
    assert t.value == pytest.approx(0.205)
    assert t.sensitivity == pytest.approx(0.6341463414634146, abs=1e-15)
    assert t.specificity == pytest.approx(0.8055555555555556, abs=1e-15)
    op = metrics_at(t, y, d["s100b"])
    assert (op.sensitivity, op.specificity) == pytest.approx((0.6341463414634146, 0.8055555555555556))
    # hand count at 0.205: 26 of 41 Poor >= 0.205; 58 of 72 Good below it
    assert (op.tp, op.fn, op.tn, op.fp) == (26, 15, 58, 14)


# --------------------------------------------------------------------------- dcurves
@pytest.mark.shared
def test_decision_curve_matches_dcurves(df_binary):
    """Net benefit of cancerpredmarker at 0.25 and famhistory at 0 equal dcurves."""
    y = df_binary["cancer"]
    r = decision_curve(y, df_binary[["cancerpredmarker"]])
    nb = r.net_benefit
    # dca(cancer ~ cancerpredmarker, df_binary) at threshold 0.25: all, none, model
    assert_allclose(nb.loc[0.25, ["all", "none", "cancerpredmarker"]], [-0.1466667, 0, 0.0640000],
                    atol=5e-8)
    assert list(nb.columns) == ["all", "none", "cancerpredmarker"] and len(nb) == 100
    # dca(cancer ~ famhistory, df_binary, thresholds = 0): all 0.140, none 0, model 0.032
    r0 = decision_curve(y, df_binary[["famhistory"]], thresholds=[0])
    assert_allclose(r0.net_benefit.loc[0.0].to_numpy(), [0.140, 0, 0.032], atol=5e-4)


def test_decision_curve_hand_case():
    """Net benefit on four patients equals the hand count; risk 0 is untreated at pt 0."""
    y = np.array([0, 1, 1, 0])
    p = np.array([0.0, 0.8, 0.6, 0.3])
    r = decision_curve(y, p, thresholds=[0.0, 0.5])
    nb = r.net_benefit
    # pt 0: treated 0.8, 0.6, 0.3 -> TP 2, FP 1, odds 0 -> NB 2/4
    assert nb.loc[0.0, "score"] == pytest.approx(0.5)
    # pt 0.5: TP 2, FP 0 -> 0.5; treat all 0.5 - 0.5 * 1 = 0
    assert nb.loc[0.5, "score"] == pytest.approx(0.5) and nb.loc[0.5, "all"] == pytest.approx(0.0)
    assert p[0] == 0.0  # input unchanged by the eps mapping
    with pytest.raises(ValueError, match="thresholds must lie in"):
        decision_curve(y, p, thresholds=[1.0])


# --------------------------------------------------------------------------- DeLong vs slow
def test_delong_equals_slow_pairwise_implementation(rng):
    """Midrank DeLong equals the O(n^2) pairwise kernel on tied random data (3 predictors)."""
    y, s = _sim(rng)
    r = delong(y, s)
    auc, cov = _slow_delong(y, s)
    assert_allclose(r.auc, auc, rtol=1e-12)
    assert_allclose(r.cov, cov, rtol=1e-10, atol=1e-16)


def test_point_metrics_equal_sklearn(rng):
    """auroc and auprc equal scikit-learn's (independent) on tied random data."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = _sim(rng, k=1)
    assert auroc(y, s[:, 0]) == pytest.approx(roc_auc_score(y, s[:, 0]), rel=1e-12)
    assert auprc(y, s[:, 0]) == pytest.approx(average_precision_score(y, s[:, 0]), rel=1e-12)
    # hand case: positives at 0.35, 0.8 -> precision 1 at recall .5, 2/3 at recall 1
    assert auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert brier_score([0, 1], [0.2, 0.6]) == pytest.approx(0.1)


def test_delong_tiny_hand_case():
    """Three events and three non-events: AUC 8/9 by counting the 9 pairs."""
    r = delong([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.6, 0.5, 0.8, 0.9])
    assert r.auc[0] == pytest.approx(8 / 9)
    assert r.summary().loc["score", "ci_high"] <= 1.0


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_equals_slow_loop(rng):
    """Vectorised stratified bootstrap equals a per-replicate sklearn loop with the same draws."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = _sim(rng, n=120, k=1)
    p = 1 / (1 + np.exp(-s[:, 0]))
    res = bootstrap_ci(y, p, n_boot=150, random_state=7)
    g = np.random.default_rng(7)
    pos, neg = p[y == 1], p[y == 0]
    reps = []
    for start in range(0, 150, BOOT_BLOCK):
        b = min(BOOT_BLOCK, 150 - start)
        ip = g.integers(0, len(pos), size=(b, len(pos)))
        ineg = g.integers(0, len(neg), size=(b, len(neg)))
        for r in range(b):
            ss = np.concatenate([pos[ip[r]], neg[ineg[r]]])
            yy = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            reps.append([roc_auc_score(yy, ss), average_precision_score(yy, ss),
                         np.mean((ss - yy) ** 2)])
    assert_allclose(res.replicates[["auroc", "auprc", "brier"]].to_numpy(), np.array(reps), rtol=1e-12)
    tab = res.summary()
    assert tab.loc["auroc", "estimate"] == pytest.approx(roc_auc_score(y, p))
    assert tab.loc["auroc", "ci_low"] < tab.loc["auroc", "estimate"] < tab.loc["auroc", "ci_high"]
    again = bootstrap_ci(y, p, n_boot=150, random_state=7)
    pd.testing.assert_frame_equal(again.replicates, res.replicates)


def test_bootstrap_ci_covers_planted_auc():
    """With a known binormal AUC, the 95 % bootstrap CI on 400 patients covers it."""
    from scipy.stats import norm

    g = np.random.default_rng(3)
    y = np.r_[np.ones(200, int), np.zeros(200, int)]
    s = np.r_[g.normal(1.0, 1, 200), g.normal(0, 1, 200)]
    true_auc = norm.cdf(1.0 / np.sqrt(2))  # binormal AUC = Phi(d / sqrt 2) = 0.760
    tab = bootstrap_ci(y, s, metrics=("auroc",), n_boot=500, random_state=1).summary()
    assert tab.loc["auroc", "ci_low"] < true_auc < tab.loc["auroc", "ci_high"]
    # the bootstrap SE agrees with DeLong's analytic SE within 15 %
    assert tab.loc["auroc", "se"] == pytest.approx(delong(y, s).se[0], rel=0.15)


# --------------------------------------------------------------------------- ROC curve
def test_roc_curve_band_kernel_equals_slow(rng):
    """The sensitivity-at-fixed-FPR kernel equals a direct loop on random tied data."""
    pos = np.round(rng.normal(1, 1, size=(4, 30)), 1)
    neg = np.round(rng.normal(0, 1, size=(4, 50)), 1)
    grid = np.linspace(0, 1, 21)
    fast = K.tpr_at_fpr_rows(pos, neg, grid)
    slow = np.empty_like(fast)
    for b in range(4):
        cand = np.r_[np.unique(np.r_[pos[b], neg[b]]), np.inf]
        tpr = np.array([(pos[b] >= c).mean() for c in cand])
        fpr = np.array([(neg[b] >= c).mean() for c in cand])
        for j, f in enumerate(grid):
            slow[b, j] = tpr[fpr <= f + 1e-12].max()
    assert_allclose(fast, slow)


def test_roc_curve_hand_case_and_auc():
    """The ROC points of a 4-patient example and the AUC match a hand count."""
    r = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_boot=20)
    assert r.fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert r.tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert r.auc == pytest.approx(0.75)
    assert np.all(r.band_low <= r.band_high)
    assert "AUC 0.750" in r.to_text()


# --------------------------------------------------------------------------- calibration
def test_calibration_recovers_planted_miscalibration():
    """Risks that are too extreme (true slope 0.6) and too low (offset +0.5) are recovered."""
    g = np.random.default_rng(11)
    lp = g.normal(-0.5, 1.5, 40_000)
    p = 1 / (1 + np.exp(-lp))
    y_slope = (g.random(lp.size) < 1 / (1 + np.exp(-0.6 * lp))).astype(int)
    c = calibration(y_slope, p)
    assert c.slope == pytest.approx(0.6, abs=3 * c.slope_se)
    assert c.slope_se < 0.02
    y_int = (g.random(lp.size) < 1 / (1 + np.exp(-(0.5 + lp)))).astype(int)
    c2 = calibration(y_int, p)
    assert c2.intercept == pytest.approx(0.5, abs=3 * c2.intercept_se)
    assert c2.slope == pytest.approx(1.0, abs=3 * c2.slope_se)
    assert c2.observed / c2.expected > 1  # risks too low -> O/E above 1
    assert c2.bins["n"].sum() == lp.size and len(c2.bins) == 10


def test_calibration_equals_statsmodels_glm(rng):
    """Slope/intercept and SEs equal statsmodels' binomial GLM (R's glm) fits."""
    import statsmodels.api as sm

    p = rng.uniform(0.02, 0.98, 500)
    y = (rng.random(500) < p ** 1.3).astype(int)
    c = calibration(y, p)
    lp = np.log(p / (1 - p))
    # glm(y ~ qlogis(p), binomial)
    f1 = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    # glm(y ~ 1 + offset(qlogis(p)), binomial)
    f2 = sm.GLM(y, np.ones((500, 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert c.slope == pytest.approx(f1.params[1], rel=1e-8)
    assert c.slope_se == pytest.approx(f1.bse[1], rel=1e-6)
    assert c.intercept == pytest.approx(f2.params[0], rel=1e-8, abs=1e-12)
    assert c.intercept_se == pytest.approx(f2.bse[0], rel=1e-6)
    tab = c.summary()
    assert list(tab.index) == ["slope", "intercept", "brier", "o_e_ratio"]


def test_calibration_separation_warns():
    """Perfect separation by the risk raises a ConvergenceWarning instead of silent nonsense."""
    with pytest.warns(ConvergenceWarning, match="separated"):
        calibration([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])


# --------------------------------------------------------------------------- thresholds
def test_threshold_is_chosen_on_validation_only(rng):
    """Test data never picks the cut: shuffling, relabelling or replacing it leaves it unchanged."""
    y_val, s_val = _sim(rng, n=200, k=1, ties=False)
    y_te, s_te = _sim(rng, n=200, k=1, ties=False)
    t = choose_threshold(y_val, s_val[:, 0])
    frozen = dataclasses.astuple(t)
    ops = []
    for variant in range(3):
        if variant == 0:
            yy, ss = y_te, s_te[:, 0]
        elif variant == 1:
            perm = rng.permutation(200)
            yy, ss = y_te[perm], s_te[perm, 0]
        else:
            yy, ss = 1 - y_te, s_te[:, 0] * 3.0  # a very different test set
        op = metrics_at(t, yy, ss)
        assert op.threshold == t.value
        ops.append(op)
    assert dataclasses.astuple(t) == frozen
    # permutation changes nothing; the altered set changes the metrics but not the cut
    assert (ops[0].tp, ops[0].fp) == (ops[1].tp, ops[1].fp)
    assert ops[2].sensitivity != ops[0].sensitivity
    # the cut chosen on test data would differ: the API never used it
    assert choose_threshold(y_te, s_te[:, 0]).value != t.value
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.value = 0.0  # type: ignore[misc]


def test_choose_threshold_equals_brute_force(rng):
    """The Youden cut maximises sens + spec over every candidate, checked by a slow loop."""
    y, s = _sim(rng, n=150, k=1)
    x = s[:, 0]
    t = choose_threshold(y, x)
    u = np.unique(x)
    cand = np.r_[-np.inf, (u[:-1] + u[1:]) / 2, np.inf]
    j = [np.mean(x[y == 1] >= c) + np.mean(x[y == 0] < c) - 1 for c in cand]
    assert t.youden == pytest.approx(max(j))
    tl = choose_threshold(y, x, method="closest.topleft")
    d = [(1 - np.mean(x[y == 1] >= c)) ** 2 + (1 - np.mean(x[y == 0] < c)) ** 2 for c in cand]
    assert (1 - tl.sensitivity) ** 2 + (1 - tl.specificity) ** 2 == pytest.approx(min(d))
    assert isinstance(t, Threshold) and t.summary().shape == (1, 6)


def test_operating_point_exact_cis():
    """Sensitivity, PPV and their Clopper-Pearson limits match hand values."""
    op = metrics_at(0.5, [1] * 10 + [0] * 10, [0.9] * 8 + [0.1] * 2 + [0.9] * 1 + [0.1] * 9)
    tab = op.summary()
    assert tab.loc["sensitivity", "estimate"] == pytest.approx(0.8)
    assert tab.loc["ppv", "estimate"] == pytest.approx(8 / 9)
    # binom.test(8, 10)$conf.int: 0.4439045 0.9747893
    assert tab.loc["sensitivity", ["ci_low", "ci_high"]].to_list() == pytest.approx(
        [0.4439045, 0.9747893], abs=5e-8)


# --------------------------------------------------------------------------- subgroups
def test_subgroup_metrics_equal_direct_computation(rng):
    """Per-level metrics equal the functions applied to each subset; single-class levels are NaN."""
    n = 400
    y, s = _sim(rng, n=n, k=1, ties=False)
    p = 1 / (1 + np.exp(-s[:, 0]))
    sex = pd.Series(rng.choice(["F", "M"], n))
    age = pd.Series(rng.uniform(20, 75, n))
    age.iloc[:3] = np.nan
    sex_all = sex.copy()
    solo = np.where(y == 1)[0][:1]
    grp = pd.Series("big", index=range(n))
    grp.iloc[solo] = "one"
    t = Threshold(0.5, "youden", 0.5, 0.5, 0.0, 1, 1)
    res = subgroup_metrics(y, p, {"sex": sex, "age_band": age_bands(age), "site": grp}, threshold=t)
    tab = res.summary()
    f = (sex == "F").to_numpy()
    assert tab.loc[("sex", "F"), "auroc"] == pytest.approx(auroc(y[f], p[f]))
    assert tab.loc[("sex", "F"), "sensitivity"] == pytest.approx(metrics_at(t, y[f], p[f]).sensitivity)
    assert tab.loc[("age_band", "<40"), "n_missing_group"] == 3
    assert tab.xs("age_band")["n"].sum() == n - 3
    assert np.isnan(tab.loc[("site", "one"), "auroc"]) and not tab.loc[("site", "one"), "estimable"]
    assert res.n_not_estimable == 1
    pd.testing.assert_series_equal(sex, sex_all)


def test_age_bands_labels_and_index():
    """Age bands are left-closed, labelled readably, keep the index, and missing stays missing."""
    a = pd.Series([35, 40, 59.5, 71, np.nan], index=list("abcde"))
    b = age_bands(a)
    assert list(b.index) == list("abcde")
    assert b.astype(str).tolist()[:4] == ["<40", "40-<50", "50-<60", ">=60"]
    assert pd.isna(b.iloc[4])
    with pytest.raises(ValueError, match="strictly increasing"):
        age_bands(a, edges=(50, 40))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [auroc, delong, bootstrap_ci, choose_threshold, calibration])
def test_single_class_is_a_clear_error(fn):
    """A single-class fold is refused with the counts and what to do."""
    with pytest.raises(ValueError, match="got 0 events and 5 non-events.*single-class"):
        fn([0, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5])


def test_bad_scores_and_labels_are_named():
    """NaN/inf scores name the row; non-binary outcomes name the value; lengths must agree."""
    s = pd.Series([0.1, np.nan, 0.3, 0.4], index=["p1", "p2", "p3", "p4"], name="risk")
    with pytest.raises(ValueError, match=r"column 'risk' holds nan at row 'p2'"):
        auroc([0, 1, 0, 1], s)
    with pytest.raises(ValueError, match="inf"):
        delong([0, 1, 0, 1], [0.1, np.inf, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"label 'b'\) holds 2"):
        auroc(pd.Series([0, 2, 1], index=list("abc")), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"position 1 holds 'x'"):
        auroc([0, "x", 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="has 3 rows but y_true has 4"):
        auroc([0, 1, 0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="probability"):
        brier_score([0, 1], [0.1, 1.2])
    y = pd.Series([True, False, True, False])
    assert auroc(y, [0.9, 0.1, 0.8, 0.2]) == 1.0
    with pytest.raises(ValueError, match=r"column 'risk' must be numeric; row 'p3' holds 'high'"):
        auroc([0, 1, 0, 1], pd.Series([0.1, 0.2, "high", 0.4], index=s.index, name="risk", dtype=object))


def test_misaligned_pandas_inputs_are_refused():
    """A score Series indexed differently from the outcome is an error, not a silent mismatch."""
    y = pd.Series([0, 1, 0, 1], index=["a", "b", "c", "d"])
    p = pd.Series([0.1, 0.9, 0.2, 0.8], index=["a", "b", "c", "d"])
    assert auroc(y, p) == 1.0
    with pytest.raises(ValueError, match="different indexes"):
        auroc(y, p.iloc[::-1])
    with pytest.raises(ValueError, match="clash"):
        decision_curve(y, {"all": p.to_numpy()})


def test_results_are_frozen_and_readonly(rng):
    """Result objects cannot be modified (fields frozen, arrays read-only)."""
    y, s = _sim(rng, n=80, k=2)
    r = delong(y, s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.auc = None  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        r.auc[0] = 0.5
    assert "AUROC (DeLong)" in r.to_text() and "<table" in r._repr_html_()


# --------------------------------------------------------------------------- plots
def test_plots_draw_expected_artists(rng):
    """ROC, calibration and decision-curve plots draw the expected lines and labels (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, s = _sim(rng, n=200, k=1, ties=False)
    p = 1 / (1 + np.exp(-s[:, 0]))
    ax = roc_curve(y, p, n_boot=50).plot()
    assert len(ax.lines) == 2 and len(ax.collections) == 1
    assert ax.get_xlabel().startswith("1 - specificity")
    assert ax.get_legend().get_texts()[0].get_text().startswith("score: AUC")
    plt.close("all")
    ax = calibration(y, p).plot()
    assert len(ax.lines) == 2 and "slope" in ax.get_legend().get_texts()[1].get_text()
    plt.close("all")
    ax = decision_curve(y, {"model": p, "half": p / 2}).plot()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Treat all", "Treat none", "model", "half"]
    assert ax.get_ylabel() == "Net benefit"
    plt.close("all")


# --------------------------------------------------------------------------- one call
def test_evaluate_predictions_uses_validation_cut_and_matches_parts(rng):
    """The one-call evaluation takes its cut from validation data and reports the parts' numbers."""
    y, s = _sim(rng, n=600, k=1, ties=False)
    p = 1 / (1 + np.exp(-s[:, 0]))
    sex = rng.choice(["F", "M"], 300)
    r = evaluate_predictions(y[300:], p[300:], y_val=y[:300], p_val=p[:300], n_boot=200,
                             groups={"sex": sex})
    tab = r.summary()
    t = choose_threshold(y[:300], p[:300])
    assert r.threshold == t and tab.loc["threshold", "estimate"] == t.value
    assert tab.loc["auroc", "estimate"] == pytest.approx(auroc(y[300:], p[300:]))
    assert tab.loc["sensitivity", "estimate"] == pytest.approx(metrics_at(t, y[300:], p[300:]).sensitivity)
    assert tab.loc["calibration_slope", "estimate"] == pytest.approx(calibration(y[300:], p[300:]).slope)
    assert set(r.subgroups.summary().index.get_level_values("level")) == {"F", "M"}
    # relabelled test data change the metrics, never the cut
    r2 = evaluate_predictions(1 - y[300:], p[300:], y_val=y[:300], p_val=p[:300], n_boot=200)
    assert r2.threshold == t
    # without validation data no operating point is reported (the test set never picks one)
    r3 = evaluate_predictions(y[300:], p[300:], n_boot=200)
    assert r3.operating_point is None and "sensitivity" not in r3.summary().index
    assert "Evaluation on test data" in r3.to_text()


# --------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 60))
def test_delong_permutation_and_monotone_invariance(seed, n):
    """AUC and DeLong covariance ignore row order and strictly increasing score transforms."""
    g = np.random.default_rng(seed)
    y = np.r_[0, 0, 1, 1, g.integers(0, 2, n - 4)]
    s = np.round(g.normal(size=(n, 2)) + y[:, None], 1)
    r = delong(y, s)
    perm = g.permutation(n)
    rp = delong(y[perm], s[perm])
    rt = delong(y, np.exp(3 * s) + 1)
    assert_allclose(rp.auc, r.auc, rtol=1e-12)
    assert_allclose(rp.cov, r.cov, rtol=1e-9, atol=1e-15)
    assert_allclose(rt.auc, r.auc, rtol=1e-12)
    assert_allclose(rt.cov, r.cov, rtol=1e-9, atol=1e-15)
    # flipping the outcome mirrors the AUC
    assert_allclose(delong(1 - y, s).auc, 1 - r.auc, rtol=1e-12, atol=1e-15)


def test_weighted_tpr_at_fpr_equals_repeated_rows(rng):
    """Weighted sensitivity at FPR with integer weights equals tpr_at_fpr_rows on the repeated data."""
    n = 60
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, 1)  # ties within and across classes
    w = rng.integers(0, 4, size=(25, n)).astype(float)
    w[:, np.flatnonzero(y == 1)[0]] += 1  # at least one positive and one negative per row
    w[:, np.flatnonzero(y == 0)[0]] += 1
    grid = np.linspace(0, 1, 41)
    got = K.weighted_tpr_at_fpr_rows(s, y, w, grid)
    for b in range(w.shape[0]):  # slow reference: materialise each replicate's rows
        rep = np.repeat(np.arange(n), w[b].astype(int))
        want = K.tpr_at_fpr_rows(s[rep][y[rep] == 1][None, :], s[rep][y[rep] == 0][None, :], grid)
        np.testing.assert_array_equal(got[b], want[0])


def test_roc_band_singleton_clusters_equal_row_bootstrap(rng):
    """With one row per cluster the cluster band equals the row band bit for bit (same seed)."""
    n = 120
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, 1)
    rows = roc_curve(y, s, n_boot=230, random_state=5)
    ids = np.array([f"p{i}" for i in rng.permutation(n)])
    cl = roc_curve(y, s, n_boot=230, random_state=5, clusters=ids)
    np.testing.assert_array_equal(cl.band_low, rows.band_low)
    np.testing.assert_array_equal(cl.band_high, rows.band_high)
    other = roc_curve(y, s, n_boot=230, random_state=6, clusters=ids)
    assert not np.array_equal(other.band_low, rows.band_low)  # the seed matters
    with pytest.raises(ValueError, match="missing id at position 3"):
        roc_curve(y, s, n_boot=100, clusters=np.where(np.arange(n) == 3, None, ids))


def test_roc_cluster_auc_ci_from_the_band_replicates(rng):
    """Cluster ROC: band and AUC CI equal a slow rebuild of each replicate's repeated rows (same draws)."""
    from sklearn.metrics import roc_auc_score

    from models.evaluate import _cluster_counts

    n_pat, n_boot = 40, BOOT_BLOCK + 30  # two blocks
    y_pat = np.r_[0, 1, rng.integers(0, 2, n_pat - 2)]
    pid = np.repeat(np.arange(n_pat), rng.integers(1, 4, n_pat))
    y = y_pat[pid]
    y[np.flatnonzero(y == 1)[::3]] = 0  # a patient with an event also has event-free rows
    s = np.round(rng.normal(size=pid.size) + y, 1)
    ids = np.array([f"p{i}" for i in pid])
    r = roc_curve(y, s, n_boot=n_boot, random_state=9, clusters=ids, grid=21)
    counts = _cluster_counts(pd.factorize(ids)[0], y, n_boot, np.random.default_rng(9))
    aucs, band = np.empty(n_boot), np.empty((n_boot, 21))
    for b in range(n_boot):  # slow reference: materialise each replicate
        rows = np.repeat(np.arange(pid.size), counts[b, pd.factorize(ids)[0]])
        aucs[b] = roc_auc_score(y[rows], s[rows])
        band[b] = K.tpr_at_fpr_rows(s[rows][y[rows] == 1][None, :], s[rows][y[rows] == 0][None, :],
                                    np.linspace(0, 1, 21))[0]
    assert r.auc_ci_method == "cluster_bootstrap"
    assert_allclose(r.auc_ci, np.quantile(aucs, [0.025, 0.975]), rtol=0, atol=1e-12)
    assert_allclose(np.c_[r.band_low, r.band_high].T, np.quantile(band, [0.025, 0.975], axis=0),
                    rtol=0, atol=1e-12)
    assert r.auc == delong(y, s).auc[0]  # the point estimate stays the plain AUC
    assert "patient-cluster bootstrap" in r.to_text()


def test_roc_singleton_clusters_keep_delong_ci(rng):
    """With one row per cluster auc_ci is DeLong's exactly (pROC ci.auc method = "delong")."""
    n = 90
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + y
    cl = roc_curve(y, s, n_boot=120, clusters=np.arange(n)[::-1])
    assert cl.auc_ci_method == "delong" and cl.auc_ci == roc_curve(y, s, n_boot=120).auc_ci  # bit for bit
    assert_allclose(cl.auc_ci, delong(y, s).ci[0], rtol=1e-12)
    assert "DeLong" in cl.to_text()
