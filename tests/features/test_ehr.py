"""Tests of features.ehr: value parsing, windows, filter/scaling, sequences, summaries."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from features.ehr import EHRFeaturizer, make_windows, parse_values
from normfuse import persist
from normfuse.errors import (
    ColumnContractError,
    DataDroppedWarning,
    InputFormatError,
    NotFittedError,
)

H = pd.Timedelta("1h")


def _events(rng, n_pat=30, n_enc=4, per_enc=25, variables=("crp", "hr", "sbp", "na"), rare=None):
    """Seeded events: encounters of 1-3 days spread over 3 years, random variables/values."""
    rows = []
    base = pd.Timestamp("2018-01-01")
    for p in range(n_pat):
        starts = np.sort(rng.uniform(0, 3 * 365, n_enc))
        for e, s in enumerate(starts):
            st = base + pd.Timedelta(days=float(s))
            k = per_enc
            off = np.sort(rng.uniform(0, 72, k))  # hours
            var = rng.choice(list(variables), k)
            val = rng.normal(10 + 3 * (var == "hr") + 0.05 * s, 2)
            for o, v, x in zip(off, var, val, strict=False):
                rows.append((f"P{p:03d}", f"P{p:03d}-E{e}", st + pd.Timedelta(hours=float(o)), "lab", v, x))
    ev = pd.DataFrame(rows, columns=["patient_id", "encounter_id", "time", "table", "variable", "value"])
    if rare is not None:
        rr = ev.iloc[:1].copy()
        rr["variable"] = rare
        ev = pd.concat([ev, rr], ignore_index=True)
    return ev


def _slow_windows(ev):
    """Independent reference: loop over encounters and 4-hour bins."""
    out = {}
    for eid, g in ev.groupby("encounter_id"):
        t0 = g["time"].min()
        for _, r in g.iterrows():
            w = int((r["time"] - t0) // pd.Timedelta("4h"))
            out.setdefault((eid, w), {}).setdefault(r["variable"], []).append(r["value"])
    return {k: {v: np.mean(x) for v, x in d.items()} for k, d in out.items()}


def test_parse_values_rules(caplog):
    """Numbers, padded strings, censored bounds and junk follow the documented rule."""
    s = pd.Series([" 7.2 ", "<5", "<=0.1", ">1000", "pending", None, 3, "", "1e3"], dtype=object)
    with caplog.at_level(logging.WARNING, logger="normfuse"):
        v, f = parse_values(s)
    np.testing.assert_array_equal(v, [7.2, 5, 0.1, 1000, np.nan, np.nan, 3, np.nan, 1000])
    np.testing.assert_array_equal(f, [0, -1, -1, 1, 0, 0, 0, 0, 0])
    assert "1 non-numeric" in caplog.text and "2 left-censored" in caplog.text
    v2, f2 = parse_values(s, censored="nan")
    assert np.isnan(v2[[1, 2, 3]]).all() and f2[3] == 1
    with pytest.raises(ValueError, match="censored='drop'"):
        parse_values(s, censored="drop")


def test_windows_match_slow_reference(rng):
    """Vectorised window means equal a per-encounter loop; windows never span encounters."""
    ev = _events(rng, n_pat=6, n_enc=3, per_enc=20)
    w = make_windows(ev)
    ref = _slow_windows(ev)
    assert len(w) == len(ref)
    for _, r in w.iterrows():
        d = ref[(r["encounter_id"], r["window"])]
        for v in ["crp", "hr", "sbp", "na"]:
            if v in d:
                assert r[v] == pytest.approx(d[v], rel=1e-12)
            else:
                assert np.isnan(r[v])
    # each window lies inside one encounter and 4 h
    assert ((w["time"] - w["window_start"]) < pd.Timedelta("4h")).all()
    assert w.groupby(["encounter_id", "window"]).size().max() == 1
    # sorted by patient then time
    assert w["patient_id"].is_monotonic_increasing


def test_window_boundary_hand_case():
    """Events at 0:30, 3:59 and 4:00 make two windows; a second encounter starts its own."""
    t = pd.to_datetime(["2020-01-01 00:30", "2020-01-01 03:59", "2020-01-01 04:30",
                        "2020-01-01 04:35"])
    ev = pd.DataFrame({"patient_id": "A", "encounter_id": ["e1", "e1", "e1", "e2"], "time": t,
                       "table": "vital", "variable": "hr", "value": [60, 80, 100, 50]})
    w = make_windows(ev)
    # e1: window 0 = mean(60, 80) = 70; window 1 (4:30) = 100; e2 starts at 4:35 -> 50
    assert w["hr"].tolist() == [70.0, 100.0, 50.0]
    assert w["encounter_id"].tolist() == ["e1", "e1", "e2"]
    assert w["time"].iloc[0] == pd.Timestamp("2020-01-01 03:59")


def test_encounter_table_drops_and_counts(caplog):
    """Events outside [start, end], of unknown encounters or other patients are dropped and counted."""
    ev = pd.DataFrame({
        "patient_id": ["A", "A", "A", "B", "A"],
        "encounter_id": ["e1", "e1", "e9", "e1", "e1"],
        "time": pd.to_datetime(["2020-01-01 01:00", "2020-01-03 00:00", "2020-01-01 02:00",
                                "2020-01-01 02:00", "2020-01-01 09:00"]),
        "table": "lab", "variable": "crp", "value": [1.0, 2.0, 3.0, 4.0, 5.0]})
    enc = pd.DataFrame({"encounter_id": ["e1"], "patient_id": ["A"],
                        "start": pd.to_datetime(["2020-01-01 00:00"]),
                        "end": pd.to_datetime(["2020-01-02 00:00"])})
    with caplog.at_level(logging.WARNING, logger="normfuse"), pytest.warns(DataDroppedWarning):
        w = make_windows(ev, enc)
    # windows from the encounter start: 01:00 -> window 0, 09:00 -> window 2
    assert w["window"].tolist() == [0, 2] and w["crp"].tolist() == [1.0, 5.0]
    assert "dropped 1 events: time outside" in caplog.text
    assert "dropped 1 events: encounter_id not in" in caplog.text
    assert "dropped 1 events: patient_id differs" in caplog.text


def test_bad_inputs_rejected_with_clear_messages():
    """Unknown tables, mixed time zones and unparseable timestamps raise naming the value."""
    base = dict(patient_id=["A", "A"], encounter_id=["e", "e"], variable="x", value=[1, 2])
    ev = pd.DataFrame({**base, "time": pd.to_datetime(["2020-01-01", "2020-01-02"]),
                       "table": ["lab", "labs"]})
    with pytest.raises(ColumnContractError, match=r"unknown event tables \{'labs': 1\}"):
        make_windows(ev)
    ev = pd.DataFrame({**base, "table": "lab", "time": ["2020-01-01T00:00+01:00", "2020-01-01 03:00"]})
    with pytest.raises(InputFormatError, match="mixes timestamps with a time-zone offset"):
        make_windows(ev)
    ev = pd.DataFrame({**base, "table": "lab", "time": ["2020-01-01 00:00", "yesterday"]})
    with pytest.raises(InputFormatError, match="row 1: 'yesterday'"):
        make_windows(ev)
    # 03/04/2020 is 3 April or 4 March: refused, never guessed
    ev = pd.DataFrame({**base, "table": "lab", "time": ["2020-01-01 00:00", "03/04/2020 08:00"]})
    with pytest.raises(InputFormatError, match=r"row 1: '03/04/2020 08:00'.*dayfirst=True"):
        make_windows(ev)
    # unambiguous non-ISO spellings are still read
    ev = pd.DataFrame({**base, "table": "lab", "time": ["2020-01-01 00:00", "4 March 2020"]})
    assert len(make_windows(ev)) >= 1
    ev = pd.DataFrame({**base, "table": "lab", "patient_id": ["A", "B"],
                       "time": pd.to_datetime(["2020-01-01", "2020-01-02"])})
    with pytest.raises(ColumnContractError, match="encounter_id 'e' holds events of several patients"):
        make_windows(ev)
    with pytest.raises(ColumnContractError, match=r"Missing: \['encounter_id'\]"):
        make_windows(pd.DataFrame({"patient_id": [1], "time": [1], "table": ["lab"],
                                   "variable": ["x"], "value": [1]}))


def test_all_offsets_to_utc_and_duplicates_counted(caplog):
    """Timestamps that all carry offsets go to UTC; exact duplicates are dropped and counted."""
    ev = pd.DataFrame({"patient_id": "A", "encounter_id": "e", "table": "lab", "variable": "x",
                       "time": ["2020-01-01T05:00+05:00", "2020-01-01T00:00Z", "2020-01-01T00:00Z"],
                       "value": ["1", "3", "3"]})
    with caplog.at_level(logging.WARNING, logger="normfuse"), pytest.warns(DataDroppedWarning):
        w = make_windows(ev)
    # both at 00:00 UTC, duplicate dropped -> mean(1, 3) = 2
    assert w["x"].tolist() == [2.0] and w["time"].iloc[0] == pd.Timestamp("2020-01-01")
    assert "dropped 1 events: exact duplicates" in caplog.text


def test_fit_on_training_only_and_rare_filter(rng):
    """Ranges and the rare-variable filter come from training patients only."""
    ev = _events(rng, n_pat=40, rare="zz_rare")
    train = ev[ev["patient_id"] < "P020"]
    test = ev[ev["patient_id"] >= "P020"].copy()
    test.loc[test.index[:3], "value"] = 1e4  # out-of-range values in test only
    f = EHRFeaturizer(min_patient_frac=0.10).fit(train)
    assert "zz_rare" not in f.variables_ and f.dropped_variables_["zz_rare"] == pytest.approx(1 / 20)
    wtr = make_windows(train)
    np.testing.assert_allclose(f.min_, wtr[f.variables_].min().to_numpy())
    np.testing.assert_allclose(f.max_, wtr[f.variables_].max().to_numpy())
    out = f.transform(test)
    assert np.nanmax(out[f.variables_].to_numpy()) > 1.0  # test scaled with the training range
    tr = f.transform(train)
    assert np.nanmin(tr[f.variables_].to_numpy()) == 0.0 and np.nanmax(tr[f.variables_].to_numpy()) == 1.0


def test_transform_drops_all_empty_windows():
    """A window holding only a dropped rare variable disappears after the filter."""
    ev = pd.DataFrame({"patient_id": ["A"] * 3 + ["B"] * 2 + ["C"], "encounter_id": list("aaabbc"),
                       "time": pd.to_datetime(["2020-01-01 00:00", "2020-01-01 09:00", "2020-01-01 01:00",
                                               "2020-01-01 00:00", "2020-01-02 00:00", "2020-01-01 00:00"]),
                       "table": "lab", "variable": ["x", "rare", "x", "x", "x", "x"],
                       "value": [1.0, 2, 3, 4, 5, 6]})
    f = EHRFeaturizer(min_patient_frac=0.5).fit(ev)
    assert f.variables_ == ["x"]
    assert len(make_windows(ev)) == 5 and len(f.transform(ev)) == 4


def _index(rng, ev, n=2):
    pats = sorted(ev["patient_id"].unique())
    rows = [(p, pd.Timestamp("2018-01-01") + pd.Timedelta(days=float(d)))
            for p in pats for d in rng.uniform(100, 1200, n)]
    rows.append(("NOEHR", pd.Timestamp("2020-01-01")))
    return pd.DataFrame(rows, columns=["patient_id", "index_date"], index=np.arange(len(rows))[::-1] * 3)


def test_summaries_match_slow_reference(rng):
    """Vectorised as-of summaries equal a per-row pandas loop for every stat and look-back."""
    ev = _events(rng, n_pat=12)
    idx = _index(rng, ev)
    f = EHRFeaturizer(min_patient_frac=0.0, lookbacks=("90D", "365D", "all")).fit(ev)
    w = make_windows(ev)
    got = f.summaries(idx, events=ev)
    assert got.index.equals(idx.index) and list(got.columns) == list(f.get_feature_names_out())
    got_w = f.summaries(idx, windows=w)
    pd.testing.assert_frame_equal(got, got_w)
    for i, (pid, d) in idx.iterrows():
        for v in f.variables_:
            g = w[(w["patient_id"] == pid) & w[v].notna() & (w["time"] < d)]
            for lb in ("90D", "365D", "all"):
                h = g if lb == "all" else g[g["time"] >= d - pd.Timedelta(lb)]
                x = h[v].to_numpy()
                ty = (h["time"] - pd.Timestamp("2000-01-01")).dt.total_seconds().to_numpy() / (365.25 * 86400)
                exp = {"count": len(x), "last": x[-1] if len(x) else np.nan,
                       "mean": x.mean() if len(x) else np.nan, "min": x.min() if len(x) else np.nan,
                       "max": x.max() if len(x) else np.nan,
                       "slope": np.polyfit(ty, x, 1)[0] if len(x) >= 2 else np.nan}
                for s, e in exp.items():
                    a = got.loc[i, f"ehr__{v}__{s}_{lb.lower()}"]
                    if np.isnan(e):
                        assert np.isnan(a), (pid, v, lb, s)
                    else:
                        # slope via prefix sums: ~1e-7 relative error when windows cluster in hours
                        tol = 1e-5 if s == "slope" else 1e-9
                        assert a == pytest.approx(e, rel=tol, abs=1e-9), (pid, v, lb, s)
    assert (got.loc[idx["patient_id"] == "NOEHR"].filter(like="count") == 0).all().all()


def test_slope_hand_case():
    """Values rising 2 units/year give slope 2.0 per year; last/min/max as planted."""
    t = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(5) * 73.05, unit="D")
    vals = 5 + 2 * np.arange(5) * 73.05 / 365.25
    ev = pd.DataFrame({"patient_id": "A", "encounter_id": [f"e{i}" for i in range(5)], "time": t,
                       "table": "lab", "variable": "x", "value": vals})
    f = EHRFeaturizer(lookbacks=("all",)).fit(ev)
    s = f.summaries(pd.DataFrame({"patient_id": ["A"], "index_date": [pd.Timestamp("2022-01-01")]}),
                    events=ev)
    assert s["ehr__x__slope_all"].iloc[0] == pytest.approx(2.0, rel=1e-9)
    assert s["ehr__x__last_all"].iloc[0] == pytest.approx(vals[-1])
    assert s["ehr__x__count_all"].iloc[0] == 5


def test_sequences_match_reference_and_never_leak(rng):
    """Sequences hold the max_len most recent windows strictly before the index date."""
    ev = _events(rng, n_pat=8)
    idx = _index(rng, ev)
    f = EHRFeaturizer(min_patient_frac=0.0, max_len=5).fit(ev)
    seq = f.sequences(idx, events=ev)
    w = f.transform(ev)
    assert seq.X.shape[1] == 5 and seq.X.dtype == np.float32
    for k, (pid, d) in enumerate(zip(idx["patient_id"], idx["index_date"], strict=False)):
        g = w[(w["patient_id"] == pid) & (w["time"] < d)].tail(5)
        n = len(g)
        assert seq.mask[k].sum() == n and not seq.mask[k, n:].any()
        exp = g[f.variables_].to_numpy()
        np.testing.assert_allclose(seq.X[k, :n], np.nan_to_num(exp), rtol=1e-6)
        np.testing.assert_array_equal(seq.observed[k, :n], ~np.isnan(exp))
        assert (seq.hours_before[k, :n] > 0).all()


def test_window_straddling_index_date_is_excluded():
    """A window whose last event falls after the index date is not used (future canary)."""
    ev = pd.DataFrame({"patient_id": "A", "encounter_id": "e",
                       "time": pd.to_datetime(["2020-01-01 00:00", "2020-01-01 08:00", "2020-01-01 09:00"]),
                       "table": "lab", "variable": "x", "value": [1.0, 2.0, 999.0]})
    f = EHRFeaturizer(min_patient_frac=0.0).fit(ev)
    idx = pd.DataFrame({"patient_id": ["A"], "index_date": [pd.Timestamp("2020-01-01 08:30")]})
    s = f.summaries(idx, events=ev)
    assert s["ehr__x__max_all"].iloc[0] == 1.0 and s["ehr__x__count_all"].iloc[0] == 1
    seq = f.sequences(idx, events=ev)
    assert seq.mask.sum() == 1


def test_inputs_unchanged_and_unfitted(rng):
    """Inputs are not mutated; methods before fit raise NotFittedError."""
    ev = _events(rng, n_pat=5)
    copy = ev.copy()
    f = EHRFeaturizer()
    with pytest.raises(NotFittedError):
        f.transform(ev)
    f.fit(ev).transform(ev)
    f.summaries(_index(rng, ev), events=ev)
    pd.testing.assert_frame_equal(ev, copy)


def test_save_load_roundtrip(rng, tmp_path):
    """save -> load gives identical summaries."""
    ev = _events(rng, n_pat=6)
    idx = _index(rng, ev)
    f = EHRFeaturizer(lookbacks=("30D", "all"), stats=("mean", "slope")).fit(ev)
    f.save(tmp_path / "ehr")
    g = persist.load(tmp_path / "ehr")
    pd.testing.assert_frame_equal(f.summaries(idx, events=ev), g.summaries(idx, events=ev))


def test_bad_parameters():
    """Bad parameters fail in fit naming the value."""
    ev = pd.DataFrame({"patient_id": ["A"], "encounter_id": ["e"], "time": [pd.Timestamp("2020-01-01")],
                       "table": ["lab"], "variable": ["x"], "value": [1.0]})
    with pytest.raises(ValueError, match="lookbacks='90 days please'"):
        EHRFeaturizer(lookbacks=("90 days please",)).fit(ev)
    with pytest.raises(ValueError, match="unknown stats"):
        EHRFeaturizer(stats=("median",)).fit(ev)


def test_exact_duplicates_matches_pandas(rng):
    """The hashed duplicate finder equals DataFrame.duplicated on planted duplicates."""
    from features.ehr import _exact_duplicates

    n = 5000
    cols = [rng.integers(0, 5, n), rng.integers(0, 3, n), rng.integers(0, 4, n).astype(np.int64),
            rng.choice([0.5, 1.5, np.nan], n)]
    ref = pd.DataFrame({f"c{i}": c for i, c in enumerate(cols)}).duplicated().to_numpy()
    got = _exact_duplicates(*cols)
    assert ref.sum() > 100
    np.testing.assert_array_equal(got, ref)
