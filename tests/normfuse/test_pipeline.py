"""Pipeline helpers: volume readers with demographics, folder-name splitting, hashing, errors."""
from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from normfuse.errors import InputFormatError
from normfuse.pipeline import _split_session_folders, file_digest, read_volumes


def _vols(ids):
    return pd.DataFrame({"subject_id": ids, "session_id": [None] * len(ids), "age": float("nan"),
                         "sex": None, "site": None, "icv": 1.5e6, "volume_kind": "pv_corrected",
                         "Left-Thalamus": [8000.0 + i for i in range(len(ids))]})


def test_split_session_folders():
    """<subject>_<ses-X> folder names split into subject_id and session_id; others untouched."""
    v = _split_session_folders(_vols(["sub-01_ses-01", "sub-01_ses-02", "sub-2_ses-b"]))
    assert v["subject_id"].tolist() == ["sub-01", "sub-01", "sub-2"]
    assert v["session_id"].tolist() == ["ses-01", "ses-02", "ses-b"]
    same = _split_session_folders(_vols(["bert", "sub-01_ses-01"]))
    assert same["subject_id"].tolist() == ["bert", "sub-01_ses-01"]


def test_read_volumes_joins_tables_and_demographics(tmp_path, rng):
    """Two CSV tables join on subject_id; age/sex/site/scan_date come from demographics."""
    ids = [f"s{i}" for i in range(5)]
    a = _vols(ids).drop(columns="session_id")
    b = pd.DataFrame({"subject_id": ids[::-1], "Right-Thalamus": rng.normal(8000, 500, 5)})
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_parquet(tmp_path / "b.parquet")
    demo = pd.DataFrame({"subject_id": ids, "age": [30, 40, 50, 60, 70], "sex": list("FMFMF"),
                         "site": "A", "scan_date": [f"2020-01-0{i + 1}" for i in range(5)]})
    demo.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    v = read_volumes([tmp_path / "a.csv", tmp_path / "b.parquet"], str(tmp_path / "d.tsv"))
    assert v["subject_id"].tolist() == ids
    assert v["Right-Thalamus"].tolist() == b.set_index("subject_id").loc[ids, "Right-Thalamus"].tolist()
    assert v["age"].tolist() == [30.0, 40.0, 50.0, 60.0, 70.0]
    assert v["scan_date"].iloc[4] == pd.Timestamp("2020-01-05")


def test_read_volumes_errors(tmp_path):
    """Missing files and unsupported formats raise InputFormatError naming the path."""
    with pytest.raises(InputFormatError, match="nope.csv"):
        read_volumes([str(tmp_path / "nope.csv")])
    (tmp_path / "v.xlsx").write_text("x")
    with pytest.raises(InputFormatError, match=r"suffix '\.xlsx'"):
        read_volumes([str(tmp_path / "v.xlsx")])


def test_file_digest_file_and_folder(tmp_path):
    """A file's digest is its SHA-256; a folder's changes when any file changes."""
    f = tmp_path / "a.txt"
    f.write_bytes(b"abc")
    assert file_digest(f) == hashlib.sha256(b"abc").hexdigest()
    d0 = file_digest(tmp_path)
    f.write_bytes(b"abd")
    assert file_digest(tmp_path) != d0


@pytest.mark.slow
def test_pipeline_recovers_planted_effects(tmp_path):
    """On a simulated cohort the pipeline's LMM and NB estimates cover the planted effects."""
    from normfuse.pipeline import demo_config, run_pipeline
    from normfuse.synthetic import simulate_cohort, write_cohort

    c = simulate_cohort(n_patients=150, n_controls_reference=900, n_matched_controls=190,
                        seed=5)
    write_cohort(c, tmp_path / "data")
    cfg = demo_config(tmp_path / "data", seed=5, n_local=20)
    cfg["models"]["enabled"] = False
    cfg["features"]["notes"] = False
    res = run_pipeline(cfg, tmp_path / "out", quiet=True, stages=["analyses"])
    assert res.skipped == () and "report" not in res.timings
    # EDSS points per critical deviation: planted BETA_NCRIT = 0.24
    lo, hi = res.results["mixed"].params.loc["n_crit", ["ci_low", "ci_high"]]
    assert lo < 0.24 < hi
    # IRR of critical-deviation counts, patients vs controls: realised in the true Z
    nb = res.results["counts_theta_ml"].params.iloc[1]
    assert nb["irr_ci_low"] < c.truth.irr["realised"] < nb["irr_ci_high"]
    # held-out controls: expected count near nominal 90 * 0.025 (lower tail)
    cc = res.tables["critical_counts"].set_index("group")
    assert abs(cc.loc["held-out reference controls", "mean_n_crit"] - 2.25) < 1.0


_OMOP_SQL = """
CREATE TABLE person (person_id BIGINT, gender_concept_id INTEGER, year_of_birth INTEGER,
                     person_source_value VARCHAR);
INSERT INTO person VALUES (2, 8507, 1975, NULL), (1, 8532, 1980, 'sub-001');
CREATE TABLE visit_occurrence (visit_occurrence_id BIGINT, person_id BIGINT,
    visit_start_date DATE, visit_start_datetime TIMESTAMP, visit_end_date DATE,
    visit_end_datetime TIMESTAMP);
INSERT INTO visit_occurrence VALUES (10, 1, '2020-01-01', NULL, '2020-01-01', NULL),
                                    (20, 2, '2020-03-01', NULL, '2020-03-01', NULL);
CREATE TABLE measurement (measurement_id BIGINT, person_id BIGINT, visit_occurrence_id BIGINT,
    measurement_concept_id INTEGER, measurement_date DATE, measurement_datetime TIMESTAMP,
    measurement_source_value VARCHAR, value_as_number DOUBLE, operator_concept_id INTEGER,
    unit_source_value VARCHAR);
INSERT INTO measurement VALUES (1, 2, 20, 3020460, '2020-03-01', NULL, 'crp', 4.0, NULL, 'mg/L'),
                               (2, 1, 10, 3020460, '2020-01-01', NULL, 'crp', 5.0, NULL, 'mg/L');
CREATE TABLE drug_exposure (drug_exposure_id BIGINT, person_id BIGINT, visit_occurrence_id BIGINT,
    drug_concept_id INTEGER, drug_exposure_start_date DATE, drug_exposure_start_datetime TIMESTAMP,
    drug_source_value VARCHAR, quantity DOUBLE);
CREATE TABLE note (note_id BIGINT, person_id BIGINT, note_date DATE, note_datetime TIMESTAMP,
                   note_text VARCHAR);
INSERT INTO note VALUES (1, 1, '2020-01-01', NULL, 'Optic neuritis.');
CREATE TABLE observation (observation_id BIGINT, person_id BIGINT, observation_concept_id INTEGER,
    observation_date DATE, observation_source_value VARCHAR, value_as_number DOUBLE);
INSERT INTO observation VALUES (1, 1, 0, '2020-01-01', 'EDSS', 2.0),
                               (2, 2, 0, '2020-03-01', 'EDSS', 3.5);
"""


def test_clinical_maps_omop_person_ids_to_subject_ids(tmp_path):
    """OMOP person_id becomes person_source_value (the MRI subject id); without one, str(person_id)."""
    import duckdb

    from normfuse.config import parse_config
    from normfuse.pipeline import _clinical

    db = tmp_path / "ehr.duckdb"
    con = duckdb.connect(str(db))
    con.execute(_OMOP_SQL)
    con.close()
    cfg = parse_config({"patients": {"subjects_dir": "s"}, "reference": {"tables": ["r.txt"]},
                        "clinical": {"source": str(db)}}, base_dir=tmp_path)
    clin = _clinical(cfg)
    # person 1 has person_source_value 'sub-001'; person 2 has none and keeps '2'
    assert clin["visits"]["patient_id"].tolist() == ["sub-001", "2"]
    assert clin["visits"]["edss"].tolist() == [2.0, 3.5]
    assert sorted(clin["events"]["patient_id"]) == ["2", "sub-001"]
    assert clin["encounters"].set_index("encounter_id")["patient_id"].to_dict() == \
        {10: "sub-001", 20: "2"}
    assert clin["notes"]["patient_id"].tolist() == ["sub-001"]


def test_pipeline_names_stay_importable_and_light():
    """normfuse.pipeline re-exports its names from the private modules, and imports no heavy library."""
    import subprocess
    import sys

    import normfuse.pipeline as p
    from normfuse import _pipeline_run

    for name in p.__all__:
        assert hasattr(p, name), name
    for obj in (p.PipelineResults, p.OutputFolderError, p.run_pipeline, p.read_volumes,
                p.file_digest, p.demo_config):
        assert obj.__module__ == "normfuse.pipeline", obj
    # one stage table: patching normfuse.pipeline.STAGE_FUNCS patches the runner's
    assert p.STAGE_FUNCS is _pipeline_run.STAGE_FUNCS
    assert tuple(p.STAGE_FUNCS) == p.STAGES
    code = ("import sys, normfuse.pipeline\n"
            "print(','.join(m for m in ('torch', 'xgboost', 'matplotlib', 'pcntoolkit', 'duckdb',"
            " 'nilearn', 'statsmodels', 'lifelines', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
