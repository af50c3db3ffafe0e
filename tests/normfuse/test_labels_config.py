"""[labels] keys of study.toml: validated, passed unchanged to make_labels/time_to_event_table.

The features stage runs on a small simulated cohort plus planted patients whose labels and
event times each key changes in a way the API documents (``features.cohort``).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from normfuse.config import SCHEMA, ConfigError, config_digest, load_config, parse_config, to_toml

Y = "y_edss4_3y"


def _d(s):
    return pd.Timestamp(s)


def _planted() -> pd.DataFrame:
    """One patient per key, each with a label/event that flips with that key (first visit 2020-01-01)."""
    rows = [
        # EDSS exactly 4.0 within 3 y, follow-up beyond 3 y: 1 with >= 4, 0 with > 4
        ("P-INC", ["2020-01-01", "2021-01-01", "2023-07-01"], [2.0, 4.0, 4.0]),
        # no milestone, 1 year of follow-up: NaN ('exclude') or 0 ('negative')
        ("P-SHORT", ["2020-01-01", "2021-01-01"], [2.0, 2.5]),
        # at the milestone at the index visit: NaN ('exclude') or labelled 1 ('keep')
        ("P-REACHED", ["2020-01-01", "2021-01-01", "2024-06-01"], [4.5, 5.0, 5.0]),
        # +1.0 from 2.0 at 2021-01-01, confirmed 120 days later: CDP with 84 days, not 182
        ("P-CONF", ["2020-01-01", "2021-01-01", "2021-05-01", "2022-01-01"],
         [2.0, 3.0, 3.0, 2.0]),
        # +0.5 only: CDP only with a 0.5 increase from baseline 2.0
        ("P-DELTA", ["2020-01-01", "2021-01-01", "2022-01-01"], [2.0, 2.5, 2.5]),
        # onset 2021-01-01, dips below at 2021-04-01, back at 2021-10-01 (>= 182 d after
        # onset), then down: CDP only when the visits in between need not stay at target
        ("P-SUS", ["2020-01-01", "2021-01-01", "2021-04-01", "2021-10-01", "2022-06-01"],
         [2.0, 3.0, 2.0, 3.0, 2.0]),
    ]
    out = []
    for pid, dates, edss in rows:
        out.append(pd.DataFrame({"patient_id": pid, "visit_date": pd.to_datetime(dates),
                                 "edss": edss, "relapse": False}))
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Visits (simulated + planted) as a Parquet file and a deviations table for the stage."""
    from normfuse.synthetic import simulate_cohort

    root = tmp_path_factory.mktemp("labels")
    c = simulate_cohort(n_patients=30, n_controls_reference=20, n_matched_controls=10, seed=3)
    visits = pd.concat([c.visits[["patient_id", "visit_date", "edss", "relapse"]], _planted()],
                       ignore_index=True)
    visits["patient_id"] = visits["patient_id"].astype(str)
    visits.to_parquet(root / "visits.parquet")
    pv = c.patient_volumes
    rng = np.random.default_rng(11)
    dev = pd.DataFrame({"subject_id": pv["subject_id"].astype(str).to_numpy(),
                        "session_id": pv["session_id"].astype(str).to_numpy(),
                        "scan_date": pd.to_datetime(pv["scan_date"]).to_numpy(),
                        "age": pv["age"].to_numpy(), "sex": pv["sex"].astype(str).to_numpy(),
                        "site": pv["site"].astype(str).to_numpy(), "icv": pv["icv"].to_numpy(),
                        "Left-Thalamus": rng.normal(0, 1, len(pv)),
                        "n_crit": rng.poisson(2, len(pv)).astype(float)})
    return root, visits, dev


def _cfg(root, **labels):
    raw = {"patients": {"tables": ["p.csv"]}, "reference": {"model": "ref"},
           "clinical": {"visits": "visits.parquet"},
           "features": {"ehr": False, "notes": False}}
    if labels:
        raw["labels"] = labels
    return parse_config(raw, base_dir=root, source="study.toml")


def _run(cohort, **labels):
    from normfuse._stages_clinical import stage_features

    root, _, dev = cohort
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = stage_features(_cfg(root, **labels), {"tables": {"deviations": dev}})
    return out["tables"]


def _api(visits, labels=None, times=None, rule="all"):
    """Labels and event times straight from features.cohort (API defaults unless given)."""
    from features.cohort import build_index_visits, make_labels, time_to_event_table

    idx = build_index_visits(visits, rule=rule)
    lab = make_labels(visits, idx, thresholds=(4.0,), horizon_years=3.0, **(labels or {}))
    tte = time_to_event_table(visits, idx, **(times or {}))
    return idx, lab, tte


def _first(table, pid, col):
    """Value of ``col`` at the planted patient's first index visit (2020-01-01)."""
    r = table.loc[(table["patient_id"] == pid).to_numpy()
                  & (table["index_date"] == _d("2020-01-01")).to_numpy(), col]
    assert len(r) == 1
    return float(r.iloc[0])


def _same_as_api(tab, visits, labels=None, times=None):
    idx, lab, tte = _api(visits, labels, times)
    assert tab.index.equals(idx.index)
    pd.testing.assert_frame_equal(tab[list(lab.columns)], lab)
    pd.testing.assert_frame_equal(tab[list(tte.columns)], tte)


def test_labels_section_defaults_equal_the_api_defaults():
    """Every [labels] default equals the default of the API argument it is passed to."""
    import inspect

    from features.cohort import confirmed_progression, make_labels, time_to_event_table

    lab = SCHEMA["labels"]
    ml = inspect.signature(make_labels).parameters
    tt = inspect.signature(time_to_event_table).parameters
    cp = inspect.signature(confirmed_progression).parameters
    assert lab["inclusive"].default is ml["inclusive"].default is tt["inclusive"].default
    assert lab["short_followup"].default == ml["short_followup"].default
    assert lab["already_reached"].default == ml["already_reached"].default \
        == tt["already_reached"].default
    assert lab["milestones"].default == [float(m) for m in tt["milestones"].default]
    assert lab["confirm_days"].default == cp["confirm_days"].default == tt["confirm_days"].default
    assert lab["deltas"].default == [list(d) for d in cp["deltas"].default]
    assert lab["sustained"].default is cp["sustained"].default is tt["sustained"].default


def test_default_run_gives_the_api_tables_unchanged(cohort):
    """With no [labels] section the stage's labels and event times equal the API called directly."""
    root, visits, _ = cohort
    t = _run(cohort)
    tab = t["analysis_table"]
    _same_as_api(tab, visits)
    # the survival table starts at each patient's first visit, API defaults
    from features.cohort import build_index_visits, time_to_event_table

    first = build_index_visits(visits, rule="first")
    want = time_to_event_table(visits, first)
    got = t["event_times"].drop(columns="patient_id")
    pd.testing.assert_frame_equal(got, want)
    assert t["event_times"]["patient_id"].tolist() == first["patient_id"].tolist()
    # the planted patients under the defaults
    assert _first(tab, "P-INC", Y) == 1.0 and np.isnan(_first(tab, "P-SHORT", Y))
    assert np.isnan(_first(tab, "P-REACHED", Y)) and np.isnan(_first(tab, "P-REACHED", "time_edss4"))
    assert [_first(tab, p, "event_cdp") for p in ("P-CONF", "P-DELTA", "P-SUS")] == [0, 0, 0]


def test_inclusive_false_drops_visits_at_exactly_the_threshold(cohort):
    """inclusive=false: EDSS 4.0 no longer reaches the 4.0 milestone (labels and event times)."""
    root, visits, _ = cohort
    tab = _run(cohort, inclusive=False)["analysis_table"]
    _same_as_api(tab, visits, {"inclusive": False}, {"inclusive": False})
    assert _first(tab, "P-INC", Y) == 0.0 and _first(tab, "P-INC", "event_edss4") == 0
    base = _run(cohort)["analysis_table"]
    changed = base[Y].fillna(-1).to_numpy() != tab[Y].fillna(-1).to_numpy()
    # every changed row has a visit at exactly 4.0 after its index date (or starts at 4.0)
    pats = set(visits.loc[visits["edss"] == 4.0, "patient_id"])
    assert changed.any() and set(tab.loc[changed, "patient_id"]) <= pats


def test_short_followup_negative_labels_short_rows_zero(cohort):
    """short_followup='negative': index rows with follow-up < horizon and no milestone get 0, not NaN."""
    root, visits, _ = cohort
    tab = _run(cohort, short_followup="negative")["analysis_table"]
    _same_as_api(tab, visits, {"short_followup": "negative"})
    assert _first(tab, "P-SHORT", Y) == 0.0
    base = _run(cohort)["analysis_table"]
    # only NaN labels change, and only to 0 (already-reached rows stay NaN)
    changed = base[Y].isna().to_numpy() & tab[Y].notna().to_numpy()
    assert changed.sum() > 1 and (tab.loc[changed, Y] == 0).all()
    had = base[Y].notna().to_numpy()
    assert (tab.loc[had, Y] == base.loc[had, Y]).all()


def test_already_reached_keep_labels_rows_at_the_milestone(cohort):
    """already_reached='keep': rows at EDSS >= 4 at the index visit get a label and event time."""
    root, visits, _ = cohort
    tab = _run(cohort, already_reached="keep")["analysis_table"]
    _same_as_api(tab, visits, {"already_reached": "keep"}, {"already_reached": "keep"})
    assert _first(tab, "P-REACHED", Y) == 1.0
    assert _first(tab, "P-REACHED", "event_edss4") == 1
    assert _first(tab, "P-REACHED", "time_edss4") == pytest.approx(366 / 365.25)
    base = _run(cohort)["analysis_table"]
    idx = _api(visits)[0]
    at = (idx["edss_index"] >= 4).to_numpy()
    # rows at the milestone: always NaN under 'exclude'; the others are untouched by 'keep'
    assert at.sum() > 1 and base.loc[at, Y].isna().all() and tab.loc[at, Y].notna().any()
    pd.testing.assert_series_equal(tab.loc[~at, Y], base.loc[~at, Y])


def test_milestones_choose_the_event_time_columns(cohort):
    """milestones=[3.5, 6.0]: time_edss3p5/event_edss3p5 appear, time_edss4/7 do not."""
    root, visits, _ = cohort
    tab = _run(cohort, milestones=[3.5, 6.0])["analysis_table"]
    _same_as_api(tab, visits, times={"milestones": (3.5, 6.0)})
    assert {"time_edss3p5", "event_edss3p5", "time_edss6"} <= set(tab.columns)
    assert not {"time_edss4", "time_edss7"} & set(tab.columns)
    # P-INC reaches 4.0 >= 3.5 one year after its first visit
    assert _first(tab, "P-INC", "time_edss3p5") == pytest.approx(366 / 365.25)


def test_confirm_days_changes_confirmed_events(cohort):
    """confirm_days=84: a +1.0 increase confirmed 120 days later counts (not with 182)."""
    root, visits, _ = cohort
    tab = _run(cohort, confirm_days=84)["analysis_table"]
    _same_as_api(tab, visits, times={"confirm_days": 84.0})
    assert _first(tab, "P-CONF", "event_cdp") == 1
    assert _first(tab, "P-CONF", "time_cdp") == pytest.approx(366 / 365.25)
    longer = _run(cohort, confirm_days=365)["analysis_table"]
    base = _run(cohort)["analysis_table"]
    assert tab["event_cdp"].sum() >= base["event_cdp"].sum() >= longer["event_cdp"].sum()
    assert tab["event_cdp"].sum() > longer["event_cdp"].sum()


def test_deltas_change_the_required_increase(cohort):
    """deltas=[[0, 0.5]]: +0.5 from any baseline is progression; P-DELTA becomes an event."""
    root, visits, _ = cohort
    tab = _run(cohort, deltas=[[0, 0.5]])["analysis_table"]
    _same_as_api(tab, visits, times={"deltas": ((0.0, 0.5),)})
    assert _first(tab, "P-DELTA", "event_cdp") == 1
    base = _run(cohort)["analysis_table"]
    assert tab["event_cdp"].sum() > base["event_cdp"].sum()


def test_sustained_false_ignores_dips_before_confirmation(cohort):
    """sustained=false: a dip below target between onset and confirmation no longer blocks CDP."""
    root, visits, _ = cohort
    tab = _run(cohort, sustained=False)["analysis_table"]
    _same_as_api(tab, visits, times={"sustained": False})
    assert _first(tab, "P-SUS", "event_cdp") == 1
    assert _first(tab, "P-SUS", "time_cdp") == pytest.approx(366 / 365.25)


def test_scan_on_the_index_day_is_used_and_the_next_day_is_not(cohort):
    """A scan dated on the index visit's day joins with lag 0; one dated the day after does not."""
    root, visits, dev = cohort
    from normfuse._stages_clinical import stage_features

    d = dev.copy()
    pid = d["subject_id"].iloc[0]
    v0 = visits.loc[visits["patient_id"] == pid, "visit_date"].min()
    keep = (d["subject_id"] == pid).to_numpy()
    d = pd.concat([d.loc[~keep], pd.DataFrame({
        "subject_id": [pid, pid], "session_id": ["a", "b"], "scan_date": [v0, v0 + pd.Timedelta(days=1)],
        "age": 40.0, "sex": "F", "site": "X", "icv": 1.5e6, "Left-Thalamus": [-3.0, 5.0],
        "n_crit": [7.0, 9.0]})], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = stage_features(_cfg(root), {"tables": {"deviations": d}})["tables"]["analysis_table"]
    r = tab.loc[((tab["patient_id"] == pid) & (tab["index_date"] == v0)).to_numpy()].iloc[0]
    assert r["dev__n_crit"] == 7.0 and r["dev__scan_lag_days"] == 0.0


@pytest.mark.parametrize("labels, match", [
    ({"inclusive": "no"}, r"\[labels\] inclusive = 'no' must be true or false"),
    ({"short_followup": "negativ"}, r"\[labels\] short_followup = 'negativ' is not one of "
     r"'exclude', 'negative'; fix the value\. Did you mean 'negative'\?$"),
    ({"already_reached": "drop"}, r"\[labels\] already_reached = 'drop' is not one of "
     r"'exclude', 'keep'; fix the value\.$"),
    ({"confirm_days": -1}, r"\[labels\] confirm_days = -1.0 is below the minimum 0"),
    ({"milestones": [4, 11]}, r"\[labels\] milestones = \[4.0, 11.0\] holds 11, outside 0-10; "
     r"every item must lie in 0-10"),
    ({"deltas": [1.5, 1.0]}, r"\[labels\] deltas = \[1.5, 1.0\] must be a list of \[number, "
     r"number\] pairs"),
    ({"deltas": [[1.0, 1.0], [6.0, 0.5]]}, r"\[labels\] deltas = \[\[1.0, 1.0\], \[6.0, 0.5\]\]: "
     r"the lowest baseline is 1, .*allowed: \[lowest baseline EDSS, increase\] pairs"),
    ({"deltas": [[0.0, 1.5], [0.0, 1.0]]}, r"\[labels\] deltas = .*baseline 0 is listed twice"),
    ({"deltas": [[0.0, -1.0]]}, r"\[labels\] deltas = .*increase -1 is not above 0"),
    ({"sustaind": True}, r"unknown key \[labels\] sustaind\. Did you mean 'sustained'\?"),
])
def test_bad_label_values_give_one_line_naming_key_value_and_allowed(tmp_path, labels, match):
    """A wrong type, choice, range or deltas shape is one line: section, key, value, allowed values."""
    with pytest.raises(ConfigError, match=match) as ei:
        _cfg(tmp_path, **labels)
    msg = str(ei.value)
    assert msg.startswith("study.toml: ") and "\n" not in msg


def test_labels_round_trip_through_toml_and_change_the_digest(tmp_path):
    """Non-default [labels] values survive to_toml/load_config; each one changes the config digest."""
    cfg = _cfg(tmp_path, inclusive=False, short_followup="negative", already_reached="keep",
               milestones=[3.5, 6], confirm_days=84, deltas=[[0, 1], [5.5, 0.5]], sustained=False)
    p = tmp_path / "study.toml"
    p.write_text(to_toml(cfg, relative_to=tmp_path))
    assert "[labels]" in p.read_text() and "deltas = [[0.0, 1.0], [5.5, 0.5]]" in p.read_text()
    assert load_config(p, check_files=False) == cfg    # the tables are not written
    base = config_digest(_cfg(tmp_path))
    for k, v in cfg["labels"].items():
        assert config_digest(_cfg(tmp_path, **{k: v})) != base, k


def test_manifest_records_the_labels_and_refuses_a_changed_one(cohort, monkeypatch):
    """manifest.json holds the [labels] values; an output folder of other labels needs --force."""
    import normfuse._pipeline_run as run
    from normfuse._pipeline_run import OutputFolderError, run_pipeline

    root, _, dev = cohort
    (root / "p.csv").write_text("x\n")
    (root / "ref").mkdir(exist_ok=True)
    stages = dict(run.STAGE_FUNCS)
    # imaging stages replaced by the fixture's deviations; the features stage is the real one
    stages["collect"] = lambda cfg, ctx: {}
    stages["normative"] = lambda cfg, ctx: {"tables": {"deviations": dev}}
    monkeypatch.setattr(run, "STAGE_FUNCS", stages)
    cfg = _cfg(root, confirm_days=84, deltas=[[0, 0.5]])
    out = root / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pipeline(cfg, out, quiet=True, stages=["features"])
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["labels"]["confirm_days"] == 84.0
    assert man["config"]["labels"]["deltas"] == [[0.0, 0.5]]
    assert man["config_digest"] == config_digest(cfg)
    with pytest.raises(OutputFolderError, match="different config"):
        run_pipeline(_cfg(root, confirm_days=182), out, quiet=True, stages=["features"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(_cfg(root), out, quiet=True, stages=["features"], force=True)
    assert json.loads((out / "manifest.json").read_text())["config"]["labels"]["confirm_days"] \
        == 182.0
    assert _first(res.tables["analysis_table"], "P-CONF", "event_cdp") == 0
