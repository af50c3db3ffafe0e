"""Survival analyses against R's survival package (lung, ovarian) and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from analyses.cox import fit_cox, ph_test
from analyses.survival import endpoint, kaplan_meier, logrank
from normfuse.errors import ColumnContractError, ConvergenceWarning, DataDroppedWarning


def _close(got, want, atol):
    """assert_allclose with one absolute tolerance per element."""
    got, want, atol = (np.asarray(v, float) for v in (got, want, atol))
    assert np.all(np.abs(got - want) <= atol + 1e-12), (got, want)

pytestmark = pytest.mark.filterwarnings("ignore::normfuse.errors.DataDroppedWarning")


@pytest.fixture(scope="module")
def lung(references):
    return pd.read_csv(references / "survival_lung.csv")


@pytest.fixture(scope="module")
def ovarian(references):
    return pd.read_csv(references / "survival_ovarian.csv")


def test_km_lung_matches_survfit(lung):
    """KM by ph.ecog equals summary(survfit(...), times = c(180, 365)) with log intervals."""
    km = kaplan_meier(lung, "time", "status", group="ph.ecog")
    at = km.survival_at([180, 365]).set_index(["group", "time"])
    # summary(survfit(Surv(time, status) ~ ph.ecog, lung), times = c(180, 365))
    r = at.loc[(0.0, 180.0)]
    assert r["n_risk"] == 52
    _close(r[["surv", "se"]], [0.841, 0.0461], [5e-4, 5e-5])
    _close(r[["ci_low", "ci_high"]], [0.7553, 0.936], [5e-5, 5e-4])
    r = at.loc[(0.0, 365.0)]
    assert_allclose(r[["surv", "ci_low", "ci_high"]].to_numpy(float), [0.535, 0.4100, 0.699], atol=5e-4)
    r = at.loc[(1.0, 365.0)]
    assert r["n_risk"] == 34
    _close(r[["surv", "se", "ci_low", "ci_high"]], [0.431, 0.0509, 0.3417, 0.543],
           [5e-4, 5e-5, 5e-5, 5e-4])
    # print(survfit(Surv(time, status) ~ ph.ecog, lung)): median and 0.95LCL/UCL
    med = km.summary()
    assert_allclose(med.loc[1.0, ["median", "ci_low", "ci_high"]].to_numpy(float), [306, 268, 429])
    assert_allclose(med.loc[2.0, ["median", "ci_low", "ci_high"]].to_numpy(float), [199, 156, 288])
    assert km.conf_type == "log"


def test_km_loglog_differs_and_hand_case():
    """Hand-computed KM (4/5, 3/5, 3/10) and the log-log interval from its formula."""
    d = pd.DataFrame({"t": [1, 2, 2, 3, 4], "e": [1, 1, 0, 1, 0]})
    km = kaplan_meier(d, "t", "e", conf_type="log-log")
    assert_allclose(km.table["surv"], [0.8, 0.6, 0.3, 0.3])
    gw = 1 / (5 * 4)                      # Greenwood sum at t=1
    s = 0.8
    w = 1.959964 * np.sqrt(gw) / abs(np.log(s))
    assert_allclose(km.table["ci_low"].iloc[0], np.exp(-np.exp(np.log(-np.log(s)) + w)), rtol=1e-6)
    assert_allclose(km.table["ci_high"].iloc[0], np.exp(-np.exp(np.log(-np.log(s)) - w)), rtol=1e-6)


def test_km_matches_slow_reference(rng):
    """KM equals a per-time loop product-limit estimate on random tied data."""
    t = rng.integers(1, 30, 200).astype(float)
    e = rng.integers(0, 2, 200)
    km = kaplan_meier(pd.DataFrame({"t": t, "e": e}), "t", "e")
    s, out = 1.0, []
    for u in np.unique(t):
        n = np.sum(t >= u)
        dd = np.sum((t == u) & (e == 1))
        s *= 1 - dd / n
        out.append(s)
    assert_allclose(km.table["surv"], out, rtol=1e-12)


def test_logrank_ovarian_matches_survdiff(ovarian):
    """Log-rank on ovarian by rx equals survdiff: O 7/5, E 5.23/6.77, chisq 1.063, p 0.303."""
    res = logrank(ovarian, "futime", "fustat", "rx")
    # survdiff(Surv(futime, fustat) ~ rx, ovarian)
    assert_allclose(res.table["observed"], [7, 5])
    assert_allclose(res.table["expected"], [5.23, 6.77], atol=5e-3)
    assert_allclose(res.chisq, 1.063, atol=5e-4)
    assert_allclose(res.p, 0.303, atol=5e-4)
    assert res.df == 1 and res.test == "log-rank"


def test_fleming_harrington_lung_inst(lung):
    """G-rho with rho = 0.5 on lung by inst equals survdiff: chisq 15.1 on 17 df, p 0.5904."""
    res = logrank(lung, "time", "status", "inst", rho=0.5)
    # survdiff(Surv(time, status) ~ inst, lung, rho = 0.5)
    assert_allclose(res.chisq, 15.1, atol=0.05)
    assert res.df == 17
    assert_allclose(res.p, 0.5904, atol=5e-5)
    assert "Fleming-Harrington" in res.test


def test_cox_lung_matches_coxph(lung):
    """coxph(Surv(time, status) ~ age + sex, lung): coefs, SEs, HR CIs, C, LR/Wald/score."""
    res = fit_cox("age + sex", lung, "time", "status")
    t = res.params
    # coef(fit); sqrt(diag(vcov(fit)))
    assert_allclose(t["coef"], [0.017045, -0.513219], atol=5e-7)
    assert_allclose(t["se"], [0.009223, 0.167458], atol=5e-7)
    # summary(fit)$conf.int
    assert_allclose(t.loc["age", ["hr_ci_low", "hr_ci_high"]].to_numpy(float), [0.9990, 1.0357], atol=5e-5)
    _close(t.loc["sex", ["hr", "hr_ci_low", "hr_ci_high"]], [0.598566, 0.4311, 0.8311],
           [5e-7, 5e-5, 5e-5])
    # summary(fit)$concordance; $logtest; $waldtest; $sctest
    assert_allclose(res.concordance, 0.603, atol=5e-4)
    assert_allclose([res.lr_test, res.wald_test, res.score_test], [14.12, 13.47, 13.72], atol=5e-3)
    assert res.df == 2 and res.converged


def test_cox_matches_independent_implementations(lung):
    """Efron equals lifelines (tight precision); Breslow equals statsmodels PHReg."""
    import statsmodels.api as sm
    from lifelines import CoxPHFitter

    d = lung[["time", "status", "age", "sex"]].assign(status=lambda x: x["status"] - 1)
    cp = CoxPHFitter().fit(d, "time", "status", fit_options=dict(precision=1e-14, r_precision=1e-15))
    res = fit_cox(["age", "sex"], lung, "time", "status")
    assert_allclose(res.params["coef"], cp.params_.to_numpy(), rtol=1e-7)
    m = sm.PHReg(d["time"].to_numpy(), d[["age", "sex"]].to_numpy(), status=d["status"].to_numpy(),
                 ties="breslow").fit()
    rb = fit_cox(["age", "sex"], lung, "time", "status", ties="breslow")
    assert_allclose(rb.params["coef"], m.params, rtol=1e-6)
    assert_allclose(rb.params["se"], m.bse, rtol=1e-6)


def test_counting_process_split_equals_unsplit(lung):
    """Splitting follow-up into (start, stop] pieces leaves the Cox fit unchanged (R semantics)."""
    d = lung.assign(id=np.arange(len(lung)))
    ev = np.sort(lung.loc[lung["status"] == 2, "time"].unique())
    c1, c2 = float(ev[40]), float(ev[80])      # cut exactly at event times: tests (start, stop]
    parts = []
    for a, b in [(0.0, c1), (c1, c2), (c2, np.inf)]:
        s = d.loc[d["time"] > a].copy()
        s["tstart"] = float(a)
        s["tstop"] = np.minimum(s["time"], b)
        s["ev"] = ((s["time"] <= b) & (s["status"] == 2)).astype(int)
        parts.append(s)
    cp = pd.concat(parts)
    for ties in ("efron", "breslow"):
        a = fit_cox("age + sex", d, "time", "status", ties=ties)
        b = fit_cox("age + sex", cp, "tstop", "ev", start="tstart", id="id", ties=ties)
        assert_allclose(b.params["coef"], a.params["coef"], rtol=1e-10)
        assert_allclose(b.params["se"], a.params["se"], rtol=1e-10)


def test_ph_test_ovarian_matches_cox_zph(ovarian):
    """cox.zph (survival >= 3.0) on ovarian: age 0.698, ecog.ps 2.371, global 3.633."""
    cox = fit_cox(["age", "ecog.ps"], ovarian, "futime", "fustat")
    res = ph_test(cox)
    # cox.zph(coxph(Surv(futime, fustat) ~ age + ecog.ps, ovarian))
    assert_allclose(res.table["chisq"], [0.698, 2.371, 3.633], atol=5e-4)
    assert list(res.table["df"]) == [1, 1, 2]
    assert "survival >= 3.0" in res.test and "km" in res.test


def test_bad_survival_input():
    """stop <= start, negative durations, bad event codes and overlapping/after-event rows raise."""
    d = pd.DataFrame({"id": [1, 1, 2, 3], "a": [0.0, 2.0, 0.0, 0.0], "b": [2.0, 1.0, 3.0, 4.0],
                      "e": [0, 1, 1, 0], "x": [0.1, 0.5, 0.3, 0.2]})
    with pytest.raises(ColumnContractError, match=r"stop > start.*row 1"):
        fit_cox(["x"], d, "b", "e", start="a")
    d2 = d.assign(b=[-1.0, 1.0, 3.0, 4.0])
    with pytest.raises(ColumnContractError, match=r"durations must be >= 0; row 0"):
        kaplan_meier(d2, "b", "e")
    with pytest.raises(ColumnContractError, match="must be 0/1"):
        logrank(d.assign(e=[0, 3, 1, 0]), "b", "e", "id")
    ov = pd.DataFrame({"id": [1, 1, 2, 3], "a": [0.0, 1.0, 0.0, 0.0], "b": [2.0, 3.0, 3.0, 4.0],
                       "e": [0, 1, 1, 0], "x": [0.1, 0.5, 0.3, 0.2]})
    with pytest.raises(ColumnContractError, match="overlapping intervals"):
        fit_cox(["x"], ov, "b", "e", start="a", id="id")
    af = ov.assign(a=[0.0, 2.0, 0.0, 0.0], e=[1, 0, 1, 0])
    with pytest.raises(ColumnContractError, match="follow-up after its event"):
        fit_cox(["x"], af, "b", "e", start="a", id="id")


def test_cox_separation_warns(rng):
    """A binary covariate with no events in one level warns of monotone likelihood."""
    n = 60
    g = np.repeat([0, 1], n // 2)
    e = np.where(g == 1, 0, rng.integers(0, 2, n))
    d = pd.DataFrame({"t": rng.exponential(1, n), "e": e, "g": g})
    with pytest.warns(ConvergenceWarning, match="monotone likelihood"):
        fit_cox(["g"], d, "t", "e")


def test_endpoint_extraction_and_event_after_censoring():
    """Endpoints come from time_/event_ columns; an event after follow-up is refused."""
    c = pd.DataFrame({"time_cdp": [1.0, 2.5, np.nan], "event_cdp": [1, 0, 0],
                      "followup": [3.0, 2.5, 4.0]}, index=["p1", "p2", "p3"])
    with pytest.warns(DataDroppedWarning, match="dropped 1 of 3"):
        ep = endpoint(c, "cdp")
    assert list(ep.index) == ["p1", "p2"] and list(ep["event"]) == [1.0, 0.0]
    bad = c.assign(time_cdp=[3.5, 2.5, 1.0])
    with pytest.raises(ColumnContractError, match="row 'p1'.*after the end of follow-up"):
        endpoint(bad, "cdp")
    with pytest.raises(ColumnContractError, match=r"Missing: \['time_relapse'"):
        endpoint(c, "relapse")
    open_ended = c.assign(followup=[np.inf, 2.5, 4.0])  # +inf follow-up (allow_inf=True) passes
    assert list(endpoint(open_ended.iloc[:2], "cdp")["event"]) == [1.0, 0.0]


def test_cox_strata_matches_lifelines(lung):
    """A stratified Cox fit (strata(sex)) equals lifelines' stratified fit at tight precision."""
    from lifelines import CoxPHFitter

    d = lung[["time", "status", "age", "sex", "ph.ecog"]].dropna().assign(status=lambda x: x["status"] - 1)
    cp = CoxPHFitter().fit(d, "time", "status", strata=["sex"],
                           fit_options=dict(precision=1e-14, r_precision=1e-15))
    res = fit_cox(["age", "ph.ecog"], d, "time", "status", strata="sex")
    assert_allclose(res.params["coef"], cp.params_.loc[["age", "ph.ecog"]].to_numpy(), rtol=1e-6)
    assert_allclose(res.params["se"], cp.standard_errors_.loc[["age", "ph.ecog"]].to_numpy(), rtol=1e-5)


def _slow_g(transform, t, e):
    """g at each death time, computed independently (lifelines KM, scipy ranks)."""
    from scipy.stats import rankdata

    deaths = t[e == 1]
    if transform == "identity":
        return lambda x: x
    if transform == "log":
        return np.log
    if transform == "rank":        # R: rank(death times), ties averaged
        ranks = dict(zip(deaths, rankdata(deaths), strict=True))
        return lambda x: ranks[x]
    from lifelines import KaplanMeierFitter

    sf = KaplanMeierFitter().fit(t, e).survival_function_.iloc[:, 0]

    def km(x):                     # 1 - KM(x-): the curve just before x
        before = sf[sf.index < x]
        return 1.0 - (float(before.iloc[-1]) if len(before) else 1.0)
    return km


@pytest.mark.parametrize("transform", ["identity", "rank", "log", "km"])
def test_ph_test_equals_slow_augmented_score(ovarian, transform):
    """The global PH test equals a slow score test on the x*g(t)-augmented model, for each g."""
    from analyses.cox import _CoxData, _loglik_grad_info

    cox = fit_cox(["age", "ecog.ps"], ovarian, "futime", "fustat", ties="breslow")
    fast = ph_test(cox, transform=transform).table.loc["GLOBAL", "chisq"]
    # slow: split follow-up at every death time, add x * g(death time) as time-varying covariates
    t, e = ovarian["futime"].to_numpy(float), ovarian["fustat"].to_numpy(float)
    g = _slow_g(transform, t, e)
    X = ovarian[["age", "ecog.ps"]].to_numpy(float)
    X = X - X.mean(0)
    rows = []
    deaths = np.unique(t[e == 1])
    for i in range(len(t)):
        lo = 0.0
        for dtime in deaths[deaths <= t[i]]:
            rows.append((lo, dtime, float(e[i] == 1 and dtime == t[i]), *X[i], *(X[i] * g(dtime))))
            lo = dtime
        if lo < t[i]:      # censored after the last death: no death in this interval, g unused
            rows.append((lo, t[i], 0.0, *X[i], *(X[i] * 0.0)))
    a = np.array(rows)
    cd = _CoxData(a[:, 3:], a[:, 1], a[:, 2], a[:, 0])
    beta = np.r_[cox.params["coef"].to_numpy(), 0.0, 0.0]
    _, U, info = _loglik_grad_info([cd], beta, efron=False)
    assert_allclose(fast, U @ np.linalg.solve(info, U), rtol=1e-8)


def test_km_loglog_equals_lifelines(lung):
    """Our conf_type='log-log' interval equals lifelines' default KM interval."""
    from lifelines import KaplanMeierFitter

    d = lung.assign(dead=(lung["status"] == 2).astype(int))
    km = kaplan_meier(d, "time", "dead", conf_type="log-log")
    kl = KaplanMeierFitter().fit(d["time"], d["dead"])
    ci = kl.confidence_interval_.reindex(km.table["time"].to_numpy())
    ok = km.table["surv"].to_numpy() < 1
    assert_allclose(km.table["ci_low"].to_numpy()[ok], ci.iloc[:, 0].to_numpy()[ok], rtol=1e-6)
    assert_allclose(km.table["ci_high"].to_numpy()[ok], ci.iloc[:, 1].to_numpy()[ok], rtol=1e-6)


def test_concordance_matches_pairwise_reference(rng):
    """The O(n log^2 n) concordance equals direct pair counting on heavily tied data."""
    from analyses.cox import _concordance, _concordance_slow

    for n, dt, dr in [(2, 0, 0), (50, 0, 0), (777, 1, 1), (1500, 2, 0)]:
        t = np.round(rng.exponential(1, n), dt)
        e = rng.integers(0, 2, n)
        r = np.round(rng.normal(size=n), dr)
        fast, slow = _concordance(t, e, r), _concordance_slow(t, e, r)
        assert (np.isnan(fast) and np.isnan(slow)) or abs(fast - slow) < 1e-12
