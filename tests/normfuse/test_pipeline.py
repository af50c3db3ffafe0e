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
