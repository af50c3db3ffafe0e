"""Tests of features.cohort: index visits, labels, CDP, event times, as-of joins."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from features.cohort import (
    EDSS_STEPS,
    asof_join,
    build_cohort_table,
    build_index_visits,
    confirmed_progression,
    make_labels,
    time_to_event_table,
)
from normfuse.errors import ColumnContractError, InputFormatError

D = pd.Timestamp


def _visits(rng, n_pat=60):
    """Seeded EDSS trajectories on the real scale, visits every ~6 months, some relapses."""
    rows = []
    for p in range(n_pat):
        k = int(rng.integers(2, 14))
        gaps = rng.uniform(60, 300, k)
        dates = D("2012-01-01") + pd.to_timedelta(np.cumsum(gaps) + rng.uniform(0, 900), unit="D")
        pos = int(rng.integers(0, 10))
        for d in dates:
            pos = int(np.clip(pos + rng.choice([-2, -1, 0, 0, 1, 2, 3]), 0, len(EDSS_STEPS) - 1))
            rows.append((f"P{p:03d}", d.normalize(), EDSS_STEPS[pos], bool(rng.random() < 0.1)))
    return pd.DataFrame(rows, columns=["patient_id", "visit_date", "edss", "relapse"])


def _target(b):
    return b + (1.5 if b == 0 else 1.0 if b < 6 else 0.5)


def _slow_cdp(v, pid, idx_date, confirm_days=182, sustained=True):
    """Independent reference: plain loops over one patient's visits."""
    g = v[v["patient_id"] == pid].sort_values("visit_date")
    before = g[g["visit_date"] <= idx_date]
    if before.empty:
        return np.nan, 0
    b = before["edss"].iloc[-1]
    tgt = _target(b)
    after = g[g["visit_date"] > idx_date].reset_index(drop=True)
    if after.empty:
        return np.nan, 0
    for i in range(len(after)):
        if after["edss"][i] < tgt:
            continue
        for j in range(i + 1, len(after)):
            if (after["visit_date"][j] - after["visit_date"][i]).days >= confirm_days:
                mid = after["edss"][i + 1:j + 1] if sustained else after["edss"][j:j + 1]
                if (mid >= tgt).all():
                    return (after["visit_date"][i] - idx_date).days / 365.25, 1
                break
    return (after["visit_date"].iloc[-1] - idx_date).days / 365.25, 0


@pytest.mark.parametrize("sustained", [True, False])
def test_cdp_matches_slow_reference(rng, sustained):
    """Vectorised CDP equals a per-patient loop on seeded random trajectories."""
    v = _visits(rng)
    idx = build_index_visits(v, rule="all")
    got = confirmed_progression(v, idx, sustained=sustained)
    assert got.index.equals(idx.index)
    n_ev = 0
    for lab, (pid, d) in idx[["patient_id", "index_date"]].iterrows():
        t, e = _slow_cdp(v, pid, d, sustained=sustained)
        assert got.loc[lab, "event_cdp"] == e, (pid, d)
        n_ev += e
        if np.isnan(t):
            assert np.isnan(got.loc[lab, "time_cdp"])
        else:
            assert got.loc[lab, "time_cdp"] == pytest.approx(t, abs=1e-12)
    assert 20 < n_ev < len(idx) - 20  # both outcomes well represented


@pytest.mark.parametrize(
    ("traj", "event", "years"),
    [
        # 0 -> needs 1.5; 1.5 at day 365, confirmed 1.5 at day 550 (185 d later)
        ([(0, 0.0), (365, 1.5), (550, 1.5)], 1, 365 / 365.25),
        # 0 -> 1.0 is not enough (+1.5 needed from 0)
        ([(0, 0.0), (365, 1.0), (730, 1.0)], 0, 730 / 365.25),
        # 3.0 -> 4.0 at day 100 but confirmation only 120 d later: next >= 182 d visit drops
        ([(0, 3.0), (100, 4.0), (220, 4.0), (400, 3.0)], 0, 400 / 365.25),
        # 6.0 -> 6.5 (+0.5 suffices from 6.0), confirmed 200 d later
        ([(0, 6.0), (50, 6.5), (250, 7.0)], 1, 50 / 365.25),
        # 5.5 -> 6.0 is only +0.5 (needs +1.0 from 5.5)
        ([(0, 5.5), (50, 6.0), (250, 6.0)], 0, 250 / 365.25),
        # sustained: a dip between onset and confirmation breaks it
        ([(0, 2.0), (30, 3.0), (100, 2.0), (250, 3.0)], 0, 250 / 365.25),
        # unconfirmed at the last visit: censored there
        ([(0, 2.0), (300, 3.5)], 0, 300 / 365.25),
    ],
)
def test_cdp_hand_cases(traj, event, years):
    """Hand-worked EDSS trajectories give the planted CDP event and time."""
    v = pd.DataFrame({"patient_id": "A", "visit_date": [D("2020-01-01") + pd.Timedelta(days=d) for d, _ in traj],
                      "edss": [e for _, e in traj]})
    r = confirmed_progression(v, build_index_visits(v))
    assert r["event_cdp"].iloc[0] == event
    assert r["time_cdp"].iloc[0] == pytest.approx(years)


def test_cdp_confirmation_window_configurable():
    """A 90-day confirmation window confirms what the 182-day default does not."""
    v = pd.DataFrame({"patient_id": "A", "edss": [3.0, 4.0, 4.0, 3.0],
                      "visit_date": pd.to_datetime(["2020-01-01", "2020-04-10", "2020-08-01", "2021-01-01"])})
    idx = build_index_visits(v)
    assert confirmed_progression(v, idx)["event_cdp"].iloc[0] == 0
    assert confirmed_progression(v, idx, confirm_days=90)["event_cdp"].iloc[0] == 1


def _lab_vis():
    return pd.DataFrame({
        "patient_id": ["A"] * 3 + ["B"] * 2 + ["C"] * 2 + ["D"] * 2,
        "visit_date": pd.to_datetime(["2015-01-01", "2016-06-01", "2018-12-31",
                                      "2015-01-01", "2016-01-01",
                                      "2015-01-01", "2019-01-01",
                                      "2015-01-01", "2016-01-01"]),
        "edss": [2.0, 4.0, 3.0, 2.0, 3.0, 1.0, 6.0, 4.5, 5.0],
    })


def test_labels_rules():
    """Milestone labels follow the stated horizon, short-follow-up and already-reached rules."""
    v = _lab_vis()
    idx = build_index_visits(v)
    lab = make_labels(v, idx, thresholds=(4, 6), horizon_years=3)
    # A: 4.0 at 1.4 y -> 1; never 6 but follow-up 4 y >= 3 y -> 0
    # B: follow-up 1 y < 3 y, no event -> NaN (exclude)
    # C: 6.0 at 4.0 y, beyond the 3 y horizon; follow-up reaches horizon -> 0 for both
    # D: 4.5 at index -> milestone 4 already reached -> NaN; 6: short follow-up -> NaN
    np.testing.assert_array_equal(lab["y_edss4_3y"].to_numpy(), [1.0, np.nan, 0.0, np.nan])
    np.testing.assert_array_equal(lab["y_edss6_3y"].to_numpy(), [0.0, np.nan, 0.0, np.nan])
    neg = make_labels(v, idx, thresholds=(4,), short_followup="negative", already_reached="keep")
    # B -> 0 instead of NaN; D keeps: 5.0 at 1 y >= 4 -> 1
    np.testing.assert_array_equal(neg["y_edss4_3y"].to_numpy(), [1.0, 0.0, 0.0, 1.0])
    exc = make_labels(v, idx, thresholds=(4,), inclusive=False, horizon_years=5)
    # exclusive, 5 y: A's 4.0 no longer counts and A has only 4 y follow-up -> NaN;
    # C reaches 6.0 > 4 at 4 y -> 1; D's 4.5 > 4 at index -> already reached -> NaN
    np.testing.assert_array_equal(exc["y_edss4_5y"].to_numpy(), [np.nan, np.nan, 1.0, np.nan])
    assert lab.index.equals(idx.index)


def test_time_to_event_table_columns_and_values():
    """Event-time columns use the agreed names and years from the index date."""
    v = _lab_vis().assign(relapse=[False, False, True, False, False, False, False, False, False])
    idx = build_index_visits(v)
    tte = time_to_event_table(v, idx, milestones=(4, 6))
    assert list(tte.columns) == ["time_cdp", "event_cdp", "time_relapse", "event_relapse",
                                 "time_edss4", "event_edss4", "time_edss6", "event_edss6"]
    a = tte.iloc[0]
    assert a["event_relapse"] == 1 and a["time_relapse"] == pytest.approx((D("2018-12-31") - D("2015-01-01")).days / 365.25)
    assert a["event_edss4"] == 1 and a["time_edss4"] == pytest.approx((D("2016-06-01") - D("2015-01-01")).days / 365.25)
    # A: 2.0 -> 4.0 (+2 >= +1) at 2016-06-01, confirmed by 3.0? No: 3.0 < 3.0+? target 3.0 -> yes
    assert a["event_cdp"] == 1
    assert np.isnan(tte.iloc[3]["time_edss4"]) and tte.iloc[3]["event_edss4"] == 0  # D already >= 4


def test_index_visits_rules():
    """first/all rules and minimum follow-up keep the stated visits and their index labels."""
    v = _lab_vis()
    v.index = [f"r{i}" for i in range(len(v))]
    first = build_index_visits(v)
    assert first.index.tolist() == ["r0", "r3", "r5", "r7"]
    assert first["edss_index"].tolist() == [2.0, 2.0, 1.0, 4.5]
    assert len(build_index_visits(v, rule="all")) == len(v)
    fu = build_index_visits(v, min_followup_years=2)
    assert fu["patient_id"].tolist() == ["A", "C"]


def test_visit_validation_messages():
    """Off-scale EDSS, conflicting same-day EDSS and bad relapse values are rejected clearly."""
    v = _lab_vis()
    bad = v.assign(edss=v["edss"].where(v.index != 1, 0.5))
    with pytest.raises(ColumnContractError, match=r"EDSS 0.5 at row 1 is not on the EDSS scale"):
        build_index_visits(bad)
    bad = v.assign(edss=v["edss"].astype(object).where(v.index != 2, "worse"))
    with pytest.raises(ColumnContractError, match=r"column 'edss' must be numeric; row 2 holds 'worse'"):
        build_index_visits(bad)
    bad = v.assign(edss=v["edss"].where(v.index != 3, -np.inf))
    with pytest.raises(ColumnContractError, match=r"column 'edss' holds -inf at row 3"):
        build_index_visits(bad)
    dup = pd.concat([v, v.iloc[[0]].assign(edss=3.0)], ignore_index=True)
    with pytest.raises(ColumnContractError, match=r"patient 'A' has different EDSS values \[2.0, 3.0\]"):
        build_index_visits(dup)
    with pytest.raises(ColumnContractError, match="relapse"):
        build_index_visits(v.assign(relapse="maybe"))
    with pytest.raises(InputFormatError, match="unparseable"):
        build_index_visits(v.assign(visit_date=["not a date"] + ["2020-01-01"] * (len(v) - 1)))


def test_exact_duplicate_visits_dropped_and_counted(caplog):
    """Exact duplicate visits are dropped and the count is logged."""
    v = _lab_vis()
    v2 = pd.concat([v, v.iloc[[0, 1]]], ignore_index=True)
    with caplog.at_level(logging.WARNING, logger="normfuse"), pytest.warns(UserWarning, match="dropped 2 visits"):
        r = confirmed_progression(v2, build_index_visits(v))
    pd.testing.assert_frame_equal(r, confirmed_progression(v, build_index_visits(v)))
    assert "dropped 2 visits: exact duplicates" in caplog.text


def test_asof_join_strictly_before_and_future_canary(rng):
    """A planted 'future' canary feature dated on/after the index date never leaks."""
    n = 50
    idx = pd.DataFrame({"patient_id": np.arange(n),
                        "index_date": D("2020-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")},
                       index=rng.permutation(n) + 100)
    past = idx.assign(t=idx["index_date"] - pd.to_timedelta(rng.integers(1, 30, n), unit="D"), canary=0.0, x=1.0)
    same_day = idx.assign(t=idx["index_date"], canary=1.0, x=2.0)
    future = idx.assign(t=idx["index_date"] + pd.to_timedelta(rng.integers(0, 30, n) * 3600 + 1, unit="s"),
                        canary=1.0, x=3.0)
    tab = pd.concat([future, past, same_day]).drop(columns="index_date").sample(frac=1, random_state=1)
    out = asof_join(idx, tab, time_col="t", prefix="ehr__")
    assert out.index.equals(idx.index)
    assert (out["ehr__canary"] == 0).all() and (out["ehr__x"] == 1).all()
    win = asof_join(idx, tab, time_col="t", window_days=0.5)
    assert win["canary"].isna().all() and win["x"].isna().all()  # past rows are >= 1 day old



def test_scan_at_index_uses_a_same_day_scan_and_keeps_the_window_inclusive():
    """scan_at_index: a scan dated at the index date joins (lag 0); default strict; window edges kept."""
    idx = pd.DataFrame({"patient_id": ["A", "B", "C"],
                        "index_date": pd.to_datetime(["2015-01-01"] * 3)})
    dev = pd.DataFrame({"subject_id": ["A", "A", "B", "C"], "session_id": ["1", "2", "1", "1"],
                        # A: same day and day after; B: exactly 365 d before; C: 366 d before
                        "scan_date": pd.to_datetime(["2015-01-01", "2015-01-02", "2014-01-01",
                                                     "2013-12-31"]),
                        "n_crit": [3.0, 9.0, 4.0, 5.0]})
    at = build_cohort_table(idx, deviations=dev, scan_window_days=365, scan_at_index=True)
    # lags by hand: 0, 365 (2014-01-01 -> 2015-01-01), C outside 365
    assert at["dev__n_crit"].tolist()[:2] == [3.0, 4.0] and np.isnan(at["dev__n_crit"].iloc[2])
    assert at["dev__scan_lag_days"].tolist()[:2] == [0.0, 365.0]
    strict = build_cohort_table(idx, deviations=dev, scan_window_days=365)
    assert np.isnan(strict["dev__n_crit"].iloc[0]) and strict["dev__n_crit"].iloc[1] == 4.0
    # allow_exact on a plain as-of join: same rule
    tab = dev.rename(columns={"subject_id": "patient_id"})
    assert asof_join(idx, tab, time_col="scan_date", columns=["n_crit"],
                     allow_exact=True)["n_crit"].iloc[0] == 3.0

def _devs():
    return pd.DataFrame({"subject_id": ["A", "A", "B"], "session_id": ["s1", "s2", "s1"],
                         "scan_date": pd.to_datetime(["2014-06-01", "2015-06-01", "2010-01-01"]),
                         "age": [30.0, 31.0, 40.0], "Left-Thalamus": [-2.5, -2.8, 0.1],
                         "n_crit": [3, 4, 0], "n_crit_neg": [3, 4, 0], "n_crit_pos": [0, 0, 0]})


def test_build_cohort_table(caplog):
    """The cohort table joins deviations from the last scan within the window, demographics, labels."""
    v = _lab_vis()
    idx = build_index_visits(v)
    tte = time_to_event_table(v, idx)
    lab = make_labels(v, idx)
    demo = pd.DataFrame({"patient_id": ["A", "B", "C"], "sex": ["F", "M", "F"], "age_onset": [25.0, 30.0, 35.0]})
    ehr = pd.DataFrame({"ehr__crp__mean_all": [1.0, 2.0, np.nan, 4.0]}, index=idx.index)
    with caplog.at_level(logging.WARNING, logger="normfuse"):
        tab = build_cohort_table(idx, deviations=_devs(), scan_window_days=365, demographics=demo,
                                 ehr_summaries=ehr, labels=[lab, tte])
    assert tab.index.equals(idx.index)
    # A (index 2015-01-01): scan 2014-06-01 (214 d before) within 365 d; s2 is after -> not used
    assert tab["dev__Left-Thalamus"].iloc[0] == -2.5 and tab["dev__n_crit"].iloc[0] == 3
    assert tab["dev__scan_lag_days"].iloc[0] == 214
    # B's scan is 5 years old: outside the window -> NaN; C, D have no MRI
    assert tab["dev__n_crit"].iloc[1:].isna().all()
    assert "3 of 4 index rows have no scan" in caplog.text
    assert tab["demo__sex=F"].tolist()[:3] == [1.0, 0.0, 1.0] and np.isnan(tab["demo__age_onset"].iloc[3])
    for c in ("y_edss4_3y", "time_cdp", "event_cdp", "ehr__crp__mean_all"):
        assert c in tab.columns
    assert "dev__age" not in tab.columns


def test_cohort_table_rejects_misaligned_and_duplicates():
    """Misaligned feature tables and duplicate index rows are refused."""
    v = _lab_vis()
    idx = build_index_visits(v)
    with pytest.raises(ColumnContractError, match="indexed like index"):
        build_cohort_table(idx, ehr_summaries=pd.DataFrame({"x": [1.0]}, index=[99]))
    with pytest.raises(ColumnContractError, match="more than once"):
        build_cohort_table(pd.concat([idx, idx.iloc[[0]]]))


def test_inputs_not_mutated():
    """No function mutates its inputs."""
    v = _lab_vis().assign(relapse=False)
    v0 = v.copy()
    idx = build_index_visits(v)
    i0 = idx.copy()
    make_labels(v, idx)
    time_to_event_table(v, idx)
    build_cohort_table(idx, deviations=_devs())
    pd.testing.assert_frame_equal(v, v0)
    pd.testing.assert_frame_equal(idx, i0)


def _slow_label_tte(v, pid, d, thr, horizon=3.0):
    """Independent reference for one index row: milestone label and time/event in years."""
    g = v[(v["patient_id"] == pid)].sort_values("visit_date")
    base = g[g["visit_date"] <= d]["edss"].iloc[-1]
    after = g[g["visit_date"] > d]
    rel = after[after["relapse"]]
    t_r = ((rel["visit_date"].iloc[0] if len(rel) else after["visit_date"].iloc[-1]) - d).days / 365.25 \
        if len(after) else np.nan
    if base >= thr:  # already at the milestone: excluded
        return np.nan, np.nan, 0, t_r, int(len(rel) > 0)
    hz = d + pd.Timedelta(days=365.25 * horizon)
    hit = ((after["visit_date"] <= hz) & (after["edss"] >= thr)).any()
    full = len(after) and after["visit_date"].max() - d >= hz - d
    lab = 1.0 if hit else (0.0 if full else np.nan)
    if after.empty:
        return lab, np.nan, 0, np.nan, 0
    reach = after[after["edss"] >= thr]
    t_m = ((reach["visit_date"].iloc[0] if len(reach) else after["visit_date"].iloc[-1]) - d).days / 365.25
    return lab, t_m, int(len(reach) > 0), t_r, int(len(rel) > 0)


def test_labels_and_event_times_match_slow_reference(rng):
    """Labels and milestone/relapse times equal a per-row loop on seeded trajectories."""
    v = _visits(rng, n_pat=40)
    idx = build_index_visits(v, rule="all").iloc[::3]
    lab = make_labels(v, idx, thresholds=(4,))
    tte = time_to_event_table(v, idx, milestones=(4,))
    for k, (pid, d) in idx[["patient_id", "index_date"]].iterrows():
        y, tm, em, tr, er = _slow_label_tte(v, pid, d, 4.0)
        got = [lab.loc[k, "y_edss4_3y"], tte.loc[k, "time_edss4"], tte.loc[k, "event_edss4"],
               tte.loc[k, "time_relapse"], tte.loc[k, "event_relapse"]]
        np.testing.assert_allclose(np.array(got, dtype=float), np.array([y, tm, em, tr, er], dtype=float),
                                   rtol=0, atol=1e-12, err_msg=f"{pid} {d}")
