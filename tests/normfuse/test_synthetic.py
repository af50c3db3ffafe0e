"""Tests of the simulated MS cohort: shape, planted effects, and the files it writes.

References: the published cohort description (362 patients, 953 scans, age 38.8 +- 9.7,
70.5 % female, follow-up <= 12 y, thalamus critical in ~25 %, +0.24 EDSS per critical
deviation), the planted truth, the real FreeSurfer files in ../shared/data/freesurfer
and the real fcon1000 controls.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from normfuse.synthetic import (
    BETA_NCRIT,
    CORTICAL_REGIONS,
    EDSS_STEPS,
    REGIONS,
    SUBCORTICAL_REGIONS,
    round_edss,
    simulate_cohort,
    write_cohort,
)
from normfuse.synthetic._volumes import region_model
from normfuse.synthetic.writers import GLOBAL_TABLE_MEASURES


@pytest.fixture(scope="module")
def cohort():
    """The default (published-size) cohort."""
    return simulate_cohort(seed=0)


@pytest.fixture(scope="module")
def big():
    """A large cohort without EHR and notes, for effect-size recovery."""
    return simulate_cohort(n_patients=4000, n_controls_reference=500, seed=11, ehr=False,
                           notes=False)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A small cohort written to disk."""
    c = simulate_cohort(n_patients=12, n_controls_reference=30, n_matched_controls=8, seed=5)
    out = tmp_path_factory.mktemp("syn") / "cohort"
    return c, write_cohort(c, out)


def _parse_stats_table(path):
    """Minimal reader: (measures by short name, rows split on whitespace)."""
    measures, rows = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# Measure "):
            parts = [s.strip() for s in line[len("# Measure "):].split(",")]
            measures[parts[1]] = float(parts[3])
        elif not line.startswith("#") and line.strip():
            rows.append(line.split())
    return measures, rows


# ---- determinism and sizes -------------------------------------------------------------

def test_same_seed_same_cohort():
    """Equal arguments give identical tables; another seed gives different ones."""
    a = simulate_cohort(n_patients=20, n_controls_reference=40, seed=7)
    b = simulate_cohort(n_patients=20, n_controls_reference=40, seed=7)
    c = simulate_cohort(n_patients=20, n_controls_reference=40, seed=8)
    for name in ("reference_controls", "patient_volumes", "matched_controls", "visits",
                 "events", "notes", "demographics"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    pd.testing.assert_frame_equal(a.truth.phi, b.truth.phi)
    assert not a.visits["edss"].equals(c.visits["edss"])


def test_sizes_are_parameters():
    """Every size argument sets the size of its table."""
    c = simulate_cohort(n_patients=17, n_controls_reference=33, n_matched_controls=9,
                        n_sites=3, n_patient_sites=1, seed=2)
    assert c.demographics.shape[0] == 17
    assert c.patient_volumes["subject_id"].nunique() == 17
    assert len(c.reference_controls) == 33 and len(c.matched_controls) == 9
    assert set(c.reference_controls["site"]) <= {"site01", "site02", "site03"}
    assert set(c.patient_volumes["site"]) == {"site01"}
    assert set(c.matched_controls["site"]) == {"site01"}
    assert len(c.notes) == len(c.visits)


def test_bad_arguments_are_named():
    """Invalid sizes and rates raise ValueError naming the argument."""
    with pytest.raises(ValueError, match="n_patients=0"):
        simulate_cohort(n_patients=0)
    with pytest.raises(ValueError, match="n_patient_sites=4"):
        simulate_cohort(n_patients=5, n_sites=3, n_patient_sites=4)
    with pytest.raises(ValueError, match="messy_rate=2"):
        simulate_cohort(n_patients=5, n_controls_reference=5, messy_rate=2)


# ---- published shape ----------------------------------------------------------------------

def test_published_cohort_shape(cohort):
    """Defaults reproduce the published cohort: 362 patients, ~953 scans, age, sex, follow-up."""
    d = cohort.demographics
    assert len(d) == 362
    # published: 953 scans of 362 patients; Poisson variation of the extra scans (sd ~24)
    assert abs(len(cohort.patient_volumes) - 953) <= 0.06 * 953
    # published: age 38.8 +- 9.7 (stratified draw rescaled to these moments, bounded 18-75)
    assert abs(d["age_baseline"].mean() - 38.8) < 0.2
    assert abs(d["age_baseline"].std() - 9.7) < 0.2
    assert d["age_baseline"].between(18, 75).all()
    # published: 70.5 % female -> round(0.705 * 362) = 255 women
    assert (d["sex"] == "F").sum() == 255
    assert d["follow_up_years"].max() <= 12.0
    assert d["follow_up_years"].max() > 9.0
    pv = cohort.patient_volumes
    assert list(pv.columns[:6]) == ["subject_id", "session_id", "age", "sex", "site", "icv"]
    assert set(REGIONS) <= set(pv.columns) and len(SUBCORTICAL_REGIONS) == 22
    assert len(CORTICAL_REGIONS) == 68 and "lh_superiorfrontal_volume" in pv.columns
    assert (pv["volume_kind"] == "pv_corrected").all()
    assert pv.groupby("subject_id")["session_id"].first().eq("ses-01").all()


def test_subject_ids_are_distinct_between_sets(cohort):
    """Matched controls are not in the reference set, and neither overlaps patients."""
    ref = set(cohort.reference_controls["subject_id"])
    mat = set(cohort.matched_controls["subject_id"])
    pat = set(cohort.patient_volumes["subject_id"])
    assert not (ref & mat) and not (ref & pat) and not (mat & pat)


def test_matched_controls_match_their_patient(cohort):
    """Matched controls share sex and site and are within a few years of their patient."""
    m = cohort.matched_controls.merge(cohort.demographics, left_on="matched_patient_id",
                                      right_on="patient_id", suffixes=("", "_p"))
    assert (m["sex"] == m["sex_p"]).all() and (m["site"] == m["site_p"]).all()
    assert (m["age"] - m["age_baseline"]).abs().median() < 2.0
    assert (np.log(m["icv"]) - np.log(cohort.truth.patients.set_index("patient_id").loc[
        m["patient_id"], "icv"].to_numpy())).abs().max() < 0.15


# ---- planted brain effects ---------------------------------------------------------------

def test_truth_z_matches_the_volumes(cohort):
    """Inverting the control model on the simulated volumes recovers the recorded true Z."""
    model = region_model()
    pv = cohort.patient_volumes
    cols = list(model.regions)
    site_off = cohort.truth.site_effects["site_offset"].loc[pv["site"].to_numpy(str), cols].to_numpy()
    site_sc = cohort.truth.site_effects["site_scale"].loc[pv["site"].to_numpy(str), cols].to_numpy()
    age = pv["age"].to_numpy(float)
    # the written age is rounded to 0.01 y; recompute from the scan date for the slow check
    mu = model.mean_log(age, (pv["sex"] == "M").to_numpy(float),
                        np.log(pv["icv"].to_numpy(float) / model.icv_ref))
    resid = (np.log(pv[cols].to_numpy(float)) - mu - site_off) / (model.sd_log(age) * site_sc)
    z = np.sinh(np.arcsinh(resid * model.shash_sd + model.shash_mean) - model.eps)
    np.testing.assert_allclose(z, cohort.truth.z_patients[cols].to_numpy(), atol=0.02)


def test_thalamus_critical_in_a_quarter_of_patients(big):
    """Left thalamus is critical (true Z < -1.96) at baseline in ~25 % of patients, the most of any region."""
    z = big.truth.z_patients
    base = z[z["session_id"] == "ses-01"]
    frac = (base["Left-Thalamus"] < -1.96).mean()
    # planted 0.25; binomial se with n = 4000 is 0.007
    assert abs(frac - 0.25) < 0.025
    lower = [r for r in REGIONS if big.truth.regions.loc[r, "direction"] < 0]
    fracs = (base[lower] < -1.96).mean()
    assert fracs.idxmax() in ("Left-Thalamus", "Right-Thalamus")
    assert fracs[["Left-Hippocampus", "Left-Putamen"]].min() > 0.08


def test_controls_are_standard_normal(big):
    """Reference controls' true Z has mean 0, SD 1 and 5 % beyond +-1.96 (planted)."""
    z = big.truth.z_reference[list(REGIONS)].to_numpy()
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert abs((np.abs(z) > 1.96).mean() - 0.05) < 0.005


def test_faster_thalamic_atrophy_recovered(big):
    """Within-patient slope of thalamic Z on years equals the planted -0.10 SD/y x atrophy factor."""
    z = big.truth.z_patients
    pv = big.patient_volumes
    pat = big.truth.patients.set_index("patient_id")
    years = (pv["scan_date"] - pv.groupby("subject_id")["scan_date"].transform("min")).dt.days / 365.25
    g = pv["subject_id"]
    tc = years - years.groupby(g).transform("mean")
    zc = z["Left-Thalamus"] - z["Left-Thalamus"].groupby(g).transform("mean")
    slope = float((tc * zc).sum() / (tc**2).sum())
    af = pat.loc[g.to_numpy(str), "atrophy_factor"].to_numpy()
    expected = -0.10 * float((af * tc**2).sum() / (tc**2).sum())
    assert slope == pytest.approx(expected, abs=0.01)
    assert expected < -0.10


def test_irr_of_critical_counts(big):
    """Realised patients/controls ratio of lower-tail critical counts matches the implied IRR."""
    irr = big.truth.irr
    assert irr["expected"] > 1.5
    assert irr["realised"] == pytest.approx(irr["expected"], rel=0.08)


# ---- disability --------------------------------------------------------------------------

def test_round_edss_hand_cases():
    """Latent values map to the real EDSS scale (no 0.5 step), bounded to [0, 9.5]."""
    got = round_edss(np.array([-1.0, 0.2, 0.49, 0.51, 0.76, 1.24, 1.26, 6.3, 9.9]))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.5, 6.5, 9.5])
    assert 0.5 not in EDSS_STEPS and EDSS_STEPS[-1] == 9.5 and EDSS_STEPS.size == 19


def test_visits_contract(cohort):
    """Visits have EDSS on the real scale, boolean relapses and bounded PASAT/FSS."""
    v = cohort.visits
    assert list(v.columns[:4]) == ["patient_id", "visit_date", "edss", "relapse"]
    assert set(v["edss"].unique()) <= set(EDSS_STEPS.tolist())
    assert v["relapse"].dtype == bool and v["relapse"].any()
    assert v["pasat"].dropna().between(0, 60).all() and v["fss"].dropna().between(1, 7).all()
    assert v.groupby("patient_id")["visit_date"].is_monotonic_increasing.all()


def test_edss_slope_per_critical_deviation(big):
    """OLS of baseline EDSS on the true critical count recovers the planted +0.24."""
    v = big.visits
    lat = big.truth.visit_latent
    first = ~v["patient_id"].duplicated()
    x = lat.loc[first, "n_crit"].to_numpy(float)
    y = v.loc[first, "edss"].to_numpy(float)
    X = np.column_stack([np.ones_like(x), x])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    # planted BETA_NCRIT = 0.24; rounding to half steps adds noise, not bias
    assert BETA_NCRIT == 0.24
    assert beta[1] == pytest.approx(0.24, abs=0.03)


def test_progression_emerges_from_trajectories(big):
    """Progressive patients worsen faster, and 6-month confirmed progression occurs."""
    v = big.visits.assign(years=big.truth.visit_latent["years"].to_numpy())
    pat = big.truth.patients.set_index("patient_id")
    g = v.groupby("patient_id", sort=False)
    change = (g["edss"].last() - g["edss"].first()) / g["years"].last().clip(lower=0.5)
    prog = pat.loc[change.index, "progressive"].to_numpy()
    assert change[prog].mean() > change[~prog].mean() + 0.1
    # confirmed progression: a rise of >= 1.0 (>= 1.5 from 0) sustained at a visit >= 0.5 y later
    base = g["edss"].transform("first")
    need = np.where(base == 0, 1.5, 1.0)
    up = (v["edss"] - base) >= need
    last_up_years = v["years"].where(up).groupby(v["patient_id"]).agg(["min", "max"])
    cdp = (last_up_years["max"] - last_up_years["min"]) >= 0.5
    assert 0.1 < cdp.mean() < 0.9


# ---- EHR ------------------------------------------------------------------------------

def test_events_contract_and_messy_values(cohort):
    """Events follow the contract: string values (some messy), units, times inside encounters."""
    ev = cohort.events
    assert list(ev.columns) == ["patient_id", "encounter_id", "time", "table", "variable",
                                "value", "unit"]
    assert pd.api.types.is_string_dtype(ev["value"])
    assert set(ev["table"].unique()) == {"lab", "vital", "med"}
    vals = ev["value"].dropna()
    assert (vals == "pending").any() and vals.str.startswith("  ").any()
    assert (vals == "<5").any() and ev["value"].isna().any()
    units = ev.groupby("variable")["unit"].first()
    assert units["lymphocytes_abs"] == "10^9/L" and units["vitamin_d_25oh"] == "ng/mL"
    enc = cohort.encounters.set_index("encounter_id")
    st = enc.loc[ev["encounter_id"], "start"].to_numpy()
    en = enc.loc[ev["encounter_id"], "end"].to_numpy()
    t = ev["time"].to_numpy()
    assert ((t >= st) & (t <= en)).all()
    for drug in ("baclofen", "gabapentin", "prednisone", "ocrelizumab", "natalizumab",
                 "fingolimod", "dimethyl fumarate"):
        assert (ev["variable"] == drug).any(), drug


def test_ehr_informative_variables(cohort):
    """Vitamin D falls with latent EDSS; fingolimod lowers lymphocytes; baclofen users are more disabled."""
    ev = cohort.events
    lat = cohort.truth.visit_latent["latent_edss"].to_numpy()
    enc = cohort.encounters
    clinic = enc[enc["visit_row"] >= 0].set_index("encounter_id")["visit_row"]
    vd = ev[(ev["variable"] == "vitamin_d_25oh") & ev["encounter_id"].isin(clinic.index)]
    num = pd.to_numeric(vd["value"].str.strip(), errors="coerce")
    ok = num.notna().to_numpy()
    x = lat[clinic.loc[vd["encounter_id"]].to_numpy()][ok]
    slope = np.polyfit(x, num.to_numpy()[ok], 1)[0]
    assert slope == pytest.approx(-2.0, abs=0.6)  # planted -2 ng/mL per EDSS point
    ly = ev[ev["variable"] == "lymphocytes_abs"].merge(cohort.demographics[["patient_id", "dmt"]])
    ly_num = pd.to_numeric(ly["value"].str.strip(), errors="coerce")
    med = ly_num.groupby(ly["dmt"]).median()
    assert med["fingolimod"] < 0.5 * med["none"]  # planted x0.35
    users = set(ev.loc[ev["variable"] == "baclofen", "patient_id"])
    last = cohort.visits.groupby("patient_id")["edss"].max()
    assert last[last.index.isin(users)].mean() > last[~last.index.isin(users)].mean() + 1.0


# ---- notes ------------------------------------------------------------------------------

def test_notes_carry_every_planted_phi_token(cohort):
    """Every PHI token listed in truth.phi occurs in its note, and all kinds are planted."""
    notes = cohort.notes["text"].to_numpy(str)
    phi = cohort.truth.phi
    found = np.array([tok in notes[row] for row, tok in zip(phi["note_row"], phi["token"], strict=True)])
    assert found.all()
    assert set(phi["kind"]) == {"name", "dob", "mrn", "phone", "email", "address", "date"}
    text = " ".join(notes[:400])
    assert "MRN: " in text and "@" in text
    assert any(s in text for s in ("(", "+1 "))


def test_notes_cues_track_edss(cohort):
    """Wheelchair cues appear only at EDSS >= 7, negations and abbreviations occur."""
    v = cohort.visits
    enc = cohort.encounters.set_index("encounter_id")
    vrow = enc.loc[cohort.notes["encounter_id"], "visit_row"].to_numpy()
    edss = v["edss"].to_numpy()[vrow]
    text = cohort.notes["text"]
    wc = text.str.contains("Wheelchair bound|w/c for most|Restricted to wheelchair", regex=True)
    assert wc.any() and (edss[wc.to_numpy()] >= 7).all()
    indep = text.str.contains("Ambulates independently|Gait normal|Walks unassisted", regex=True)
    assert (edss[indep.to_numpy()] <= 1.5).all()
    assert text.str.contains("Denies falls").any() and text.str.contains(" pt ").any()
    assert text.str.contains("b/l").any()


# ---- writers ------------------------------------------------------------------------------

def test_aseg_stats_roundtrip(written):
    """aseg.stats gives back every contract volume and eTIV exactly."""
    c, out = written
    pv = c.patient_volumes
    for i in (0, len(pv) - 1):
        row = pv.iloc[i]
        path = out["subjects"] / f"{row['subject_id']}_{row['session_id']}" / "stats" / "aseg.stats"
        measures, rows = _parse_stats_table(path)
        assert measures["eTIV"] == row["icv"]
        vol = {r[4]: float(r[3]) for r in rows}
        assert len(rows) == 45
        for r in SUBCORTICAL_REGIONS:
            assert vol[r] == row[r], r
        for h in ("lh", "rh"):
            _, arows = _parse_stats_table(path.with_name(f"{h}.aparc.stats"))
            gv = {r[0]: float(r[3]) for r in arows}
            assert len(arows) == 34
            for parcel, v in gv.items():
                assert v == row[f"{h}_{parcel}_volume"]


def test_aseg_stats_layout_matches_freesurfer(written, fs_data):
    """The written aseg.stats/aparc.stats have FreeSurfer 7.2's table header and row layout."""
    _, out = written
    path = next(out["subjects"].iterdir()) / "stats" / "aseg.stats"
    ours = path.read_text().splitlines()
    bert = (fs_data / "bert_fs7.2" / "stats" / "aseg.stats").read_text().splitlines()

    def pick(lines):
        return [ln for ln in lines if ln.startswith(("# ColHeaders", "# TableCol", "# NRows",
                                                   "# NTableCols"))]

    assert pick(ours) == pick(bert)
    assert [ln.split(",")[1] for ln in ours if ln.startswith("# Measure")] == \
        [ln.split(",")[1] for ln in bert if ln.startswith("# Measure")]
    # same fixed-width columns: field end positions of the data rows agree with bert's
    o = [ln for ln in ours if not ln.startswith("#")]
    b = [ln for ln in bert if not ln.startswith("#")]
    assert [x.split()[1:2] + x.split()[4:5] for x in o] == [x.split()[1:2] + x.split()[4:5] for x in b]
    assert len(o[0]) == len(b[0]) and o[4].index("Left-Thalamus") == b[4].index("Left-Thalamus")
    ap = (path.with_name("lh.aparc.stats")).read_text().splitlines()
    bap = (fs_data / "bert_fs7.2" / "stats" / "lh.aparc.stats").read_text().splitlines()
    assert [ln for ln in ap if ln.startswith(("# TableCol", "# ColHeaders"))] == \
        [ln for ln in bap if ln.startswith(("# TableCol", "# ColHeaders"))]
    rows_ap = [ln for ln in ap if not ln.startswith("#")]
    rows_b = [m for m in bap if not m.startswith("#")]
    assert [ln.split()[0] for ln in rows_ap] == [m.split()[0] for m in rows_b]
    assert [len(ln) for ln in rows_ap] == [len(m) for m in rows_b]


def test_asegstats2table_matches_real_table_columns(written, fs_data):
    """The controls' table has the columns (and order) of a real FS7 asegstats2table output."""
    c, out = written
    ours = pd.read_csv(out["reference_controls_aseg.txt"], sep="\t")
    real = pd.read_csv(fs_data / "tables_fs7_long" / "aseg_stats.txt", sep="\t", nrows=1)
    assert list(ours.columns) == list(real.columns)
    ref = c.reference_controls
    assert ours["Measure:volume"].tolist() == ref["subject_id"].tolist()
    for r in SUBCORTICAL_REGIONS:
        np.testing.assert_array_equal(ours[r].to_numpy(), ref[r].to_numpy())
    np.testing.assert_array_equal(ours["EstimatedTotalIntraCranialVol"], ref["icv"])
    real_lh = pd.read_csv(fs_data / "tables_fs7_long" / "aparc_stats_13900_LH.txt", sep="\t", nrows=1)
    lh = pd.read_csv(out["reference_controls_lh.aparc.volume.txt"], sep="\t")
    expected = [c_.replace("thickness", "volume") for c_ in real_lh.columns
                if c_ != "lh_MeanThickness_thickness"]
    assert list(lh.columns) == expected
    np.testing.assert_array_equal(lh["lh_insula_volume"], ref["lh_insula_volume"])
    assert set(GLOBAL_TABLE_MEASURES) <= set(ours.columns)


def test_duckdb_has_omop_tables(written):
    """ehr.duckdb holds OMOP-shaped tables whose rows match the cohort."""
    import duckdb

    c, out = written
    con = duckdb.connect(str(out["duckdb"]), read_only=True)
    try:
        cols = {t: [r[0] for r in con.execute(f'DESCRIBE "{t}"').fetchall()]
                for t in ("person", "visit_occurrence", "measurement", "drug_exposure", "note",
                          "observation")}
        need = {"person": ["person_id", "gender_concept_id", "year_of_birth", "person_source_value"],
                "visit_occurrence": ["visit_occurrence_id", "person_id", "visit_start_datetime"],
                "measurement": ["measurement_source_value", "value_source_value",
                                "value_as_number", "unit_source_value", "visit_occurrence_id"],
                "drug_exposure": ["drug_source_value", "drug_exposure_start_date"],
                "note": ["note_text", "note_datetime", "person_id"],
                "observation": ["observation_source_value", "value_as_number"]}
        for t, cs in need.items():
            assert set(cs) <= set(cols[t]), t
        n_meas = con.execute("select count(*) from measurement").fetchone()[0]
        n_drug = con.execute("select count(*) from drug_exposure").fetchone()[0]
        assert n_meas + n_drug == len(c.events)
        assert con.execute("select count(*) from note").fetchone()[0] == len(c.notes)
        n_edss = con.execute(
            "select count(*) from observation where observation_source_value = 'EDSS'").fetchone()[0]
        assert n_edss == len(c.visits)
        lt = con.execute("select value_as_number, operator_concept_id from measurement "
                         "where value_source_value = '<5' limit 1").fetchone()
        assert lt == (5.0, 4171756.0)
        n_rel = con.execute("select count(*) from observation where observation_source_value = "
                            "'MS relapse' and value_as_number = 1").fetchone()[0]
        assert n_rel == int(c.visits["relapse"].sum())
        vit = con.execute("select distinct measurement_concept_id from measurement "
                          "where measurement_type_concept_id = 44818701").fetchall()
        assert {v[0] for v in vit} <= {3004249, 3012888, 3027018, 3025315, 3038553, 3020891}
    finally:
        con.close()


def test_exports_read_back(written):
    """CSV and Parquet exports read back to the cohort's tables."""
    c, out = written
    ev = pd.read_parquet(out["events_parquet"])
    pd.testing.assert_frame_equal(ev.astype({k: "string" for k in ("patient_id", "table", "variable",
                                                                   "value", "unit")}),
                                  c.events.astype({k: "string" for k in ("patient_id", "table",
                                                                         "variable", "value", "unit")}),
                                  check_dtype=False)
    notes = pd.read_csv(out["notes_csv"])
    assert notes["text"].tolist() == c.notes["text"].tolist()
    part = pd.read_csv(out["participants"], sep="\t")
    assert list(part.columns) == ["subject_id", "session_id", "age", "sex", "site", "scan_date"]
    manifest = json.loads((out["root"] / "normfuse_synthetic.json").read_text())
    assert manifest["seed"] == 5 and manifest["n_scans"] == len(c.patient_volumes)


def test_write_refuses_foreign_folder(tmp_path):
    """write_cohort never replaces a folder it did not write, and needs overwrite=True otherwise."""
    c = simulate_cohort(n_patients=3, n_controls_reference=5, seed=1, ehr=False, notes=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not written by write_cohort"):
        write_cohort(c, tmp_path / "mine")
    assert (tmp_path / "mine" / "keep.txt").exists()
    write_cohort(c, tmp_path / "new", exports=(), duckdb_file=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_cohort(c, tmp_path / "new")
    write_cohort(c, tmp_path / "new", overwrite=True, exports=(), duckdb_file=False)


# ---- parameters against the real controls ---------------------------------------------------

def test_params_reproduce_from_derive_script(shared_data):
    """Re-running derive_params on ../shared/data gives the shipped parameter file."""
    from normfuse.synthetic.derive_params import DEFAULT_OUT, derive

    fresh = json.loads(json.dumps(derive(shared_data)))
    shipped = json.loads(DEFAULT_OUT.read_text())
    for r in ("Left-Thalamus", "Right-Hippocampus", "lhCortexVol"):
        for k in ("intercept", "log_sd0", "skew", "site_sd", "loading"):
            assert fresh["regions"][r][k] == pytest.approx(shipped["regions"][r][k], rel=1e-9)
    assert fresh["icv"] == pytest.approx(shipped["icv"])


def test_control_curves_follow_fcon1000(controls_dir):
    """Simulated controls' median thalamus/hippocampus volume by age band is within 6 % of fcon1000's."""
    real = pd.read_csv(controls_dir / "fcon1000.csv")
    sim = simulate_cohort(n_patients=1, n_controls_reference=6000, n_sites=23, seed=4,
                          reference_age_range=(8, 85), ehr=False, notes=False).reference_controls
    for fs6, fs7 in (("Left-Thalamus-Proper", "Left-Thalamus"), ("Left-Hippocampus", "Left-Hippocampus"),
                     ("Right-Putamen", "Right-Putamen")):
        for lo, hi in ((18, 25), (25, 40), (40, 85)):
            r = real.loc[real["age"].between(lo, hi), fs6].median()
            s = sim.loc[sim["age"].between(lo, hi), fs7].median()
            assert s == pytest.approx(r, rel=0.06), (fs7, lo, hi)


# ---- result objects and properties ------------------------------------------------------

def test_summary_and_text(cohort):
    """summary() returns numbers (a DataFrame), to_text() formats them."""
    s = cohort.summary()
    assert isinstance(s, pd.DataFrame) and s.loc["patients", "value"] == 362
    assert s.loc["patient scans", "value"] == len(cohort.patient_volumes)
    assert "Synthetic MS cohort" in cohort.to_text()
    t = cohort.truth.summary()
    assert list(t.index) == list(REGIONS)
    assert t.loc["Left-Thalamus", "realised_prevalence"] == pytest.approx(0.25, abs=0.07)


def test_round_edss_properties(rng):
    """round_edss always lands on the scale, is monotone, and is within 0.5 of the bounded value."""
    x = np.sort(rng.uniform(-2, 12, 5000))
    y = round_edss(x)
    assert np.isin(y, EDSS_STEPS).all()
    assert (np.diff(y) >= 0).all()
    assert (np.abs(y - np.clip(x, 0, 9.5)) <= 0.5 + 1e-12).all()


def test_writing_leaves_the_cohort_unchanged(written):
    """write_cohort does not mutate the cohort it writes."""
    c, _ = written
    again = simulate_cohort(n_patients=12, n_controls_reference=30, n_matched_controls=8, seed=5)
    for name in ("patient_volumes", "reference_controls", "events", "notes", "visits"):
        pd.testing.assert_frame_equal(getattr(c, name), getattr(again, name))
