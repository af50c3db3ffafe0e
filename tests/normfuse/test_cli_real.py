"""The command line on real files: FreeSurfer folders, FCON1000 and COBRE tables.

These are a new user's first steps (README "Your own study" / "Subcommands"); each test
pins a friction that was found and fixed. They read ../shared/data in place and skip
without it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normfuse.cli import main
from normfuse.config import ConfigError, parse_config
from normfuse.pipeline import read_volumes

SEX01 = ["--sex-codes", "0=F", "1=M"]


def _err(capsys) -> str:
    return capsys.readouterr().err


@pytest.fixture
def fcon(controls_dir):
    p = controls_dir / "fcon1000.csv"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture
def cobre_parts(controls_dir, tmp_path):
    """COBRE split as a user would with awk: half the controls adapt, half are held out."""
    p = controls_dir / "cobre.csv"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    d = pd.read_csv(p)
    ctrl = d.loc[d["group"] == "Control"]
    parts = {"adapt": ctrl.iloc[0::2], "held": ctrl.iloc[1::2],
             "sz": d.loc[d["group"] == "SZ"]}
    out = {}
    for k, v in parts.items():
        out[k] = tmp_path / f"cobre_{k}.csv"
        v.to_csv(out[k], index=False)
    return out


def test_fcon1000_reads_as_reference_with_sex_codes(fcon):
    """FCON1000's sub_id, FS6 names, eTIV and 0/1 sex read into the volumes contract."""
    raw = pd.read_csv(fcon)
    v = read_volumes([str(fcon)], sex_codes=["0=F", "1=M"], what="reference")
    assert list(v.index) == list(raw.index)
    assert (v["subject_id"].astype(str).to_numpy() == raw["sub_id"].astype(str).to_numpy()).all()
    # counts in the file: sex 0 -> 589, sex 1 -> 489 (FCON1000 codes 0=F, 1=M)
    assert (v["sex"] == "F").sum() == 589 and (v["sex"] == "M").sum() == 489
    np.testing.assert_array_equal(v["icv"].to_numpy(dtype=float),
                                  raw["EstimatedTotalIntraCranialVol"].to_numpy(dtype=float))
    np.testing.assert_array_equal(v["Left-Thalamus"].to_numpy(dtype=float),
                                  raw["Left-Thalamus-Proper"].to_numpy(dtype=float))
    assert "Left-Thalamus-Proper" not in v.columns
    assert raw.columns[0] == "sub_id"           # the input file was read, never changed


def test_numeric_sex_without_codes_names_file_values_and_both_fixes(fcon, tmp_path, capsys):
    """Sex 0/1 without --sex-codes stops with the file, the values and the CLI/TOML fix."""
    rc = main(["normative", "fit", str(fcon), "--out", str(tmp_path / "m")])
    err = _err(capsys)
    assert rc == 2
    assert "fcon1000.csv" in err and "'sex'" in err and "['0', '1']" in err
    assert "--sex-codes 0=F 1=M" in err and 'sex_codes = ["0=F", "1=M"]' in err
    assert not (tmp_path / "m").exists()


def test_cobre_patients_deviate_more_than_held_out_controls(fcon, cobre_parts, tmp_path):
    """fit on FCON1000, adapt to COBRE controls, score: SZ patients have more critical deviations."""
    m, a = tmp_path / "m", tmp_path / "adapted"
    assert main(["-q", "normative", "fit", str(fcon), *SEX01, "--out", str(m)]) == 0
    assert main(["-q", "normative", "adapt", str(m), str(cobre_parts["adapt"]), *SEX01,
                 "--out", str(a)]) == 0
    for k in ("sz", "held"):
        assert main(["-q", "normative", "score", str(a), str(cobre_parts[k]), *SEX01,
                     "--out", str(tmp_path / f"dev_{k}.csv")]) == 0
    assert main(["-q", "normative", "evaluate", str(a), str(cobre_parts["held"]), *SEX01,
                 "--out", str(tmp_path / "metrics.csv")]) == 0
    sz = pd.read_csv(tmp_path / "dev_sz.csv")
    held = pd.read_csv(tmp_path / "dev_held.csv")
    assert len(sz) == 61 and len(held) == 31             # group counts in cobre.csv
    # measured: 2.30 (SZ) vs 1.00 (held-out controls); 22 regions, 0.05 * 22 = 1.1 expected
    assert sz["n_crit"].mean() > held["n_crit"].mean() + 0.5
    met = pd.read_csv(tmp_path / "metrics.csv")
    assert "Left-Thalamus" in set(met["region"]) and (met["n"] == 31).all()


def test_score_unknown_site_tells_the_adapt_command(fcon, cobre_parts, tmp_path, capsys):
    """Scoring a new site names it and gives the `normfuse normative adapt` command, not Python."""
    m = tmp_path / "m"
    assert main(["-q", "normative", "fit", str(fcon), *SEX01, "--out", str(m)]) == 0
    capsys.readouterr()
    rc = main(["normative", "score", str(m), str(cobre_parts["held"]), *SEX01,
               "--out", str(tmp_path / "d.csv")])
    err = _err(capsys)
    assert rc == 2 and "COBRE" in err and "normfuse normative adapt" in err
    assert "model.adapt(" not in err


def test_collect_without_aparc_suggests_atlases_option(fs_data, tmp_path, capsys):
    """A SUBJECTS_DIR with only aseg.stats: the error says --atlases aseg."""
    sd = fs_data / "ds_training_fs6"
    if not sd.is_dir():
        pytest.skip(f"{sd} not found")
    rc = main(["freesurfer", "collect", str(sd), "--out", str(tmp_path / "v.csv")])
    err = _err(capsys)
    assert rc == 2 and "lh.aparc.stats" in err and "--atlases aseg" in err


def _subjects(fs_data):
    sd = fs_data / "ds_training_fs6"
    if not sd.is_dir():
        pytest.skip(f"{sd} not found")
    return sd, sorted(p.name for p in sd.iterdir() if (p / "stats" / "aseg.stats").is_file())


def test_collect_reads_bids_participants_tsv(fs_data, tmp_path):
    """participants.tsv with BIDS participant_id and F/M fills age, sex and site."""
    sd, subs = _subjects(fs_data)
    ages = 20.0 + np.arange(len(subs))
    pd.DataFrame({"participant_id": subs, "age": ages, "sex": ["female", "M"] * (len(subs) // 2)
                  + ["F"] * (len(subs) % 2), "site": "A"}).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "v.csv"
    assert main(["-q", "freesurfer", "collect", str(sd), "--atlases", "aseg", "--demographics",
                 str(tmp_path / "participants.tsv"), "--out", str(out)]) == 0
    v = pd.read_csv(out)
    assert list(v["subject_id"]) == subs
    np.testing.assert_array_equal(v["age"].to_numpy(), ages)
    assert list(v["sex"][:2]) == ["F", "M"] and "Left-Thalamus" in v.columns


def test_collect_unmatched_ids_show_both_spellings(fs_data, tmp_path, capsys):
    """Ids spelled '01' against folders 'sub-01': the message shows both and the file."""
    sd, subs = _subjects(fs_data)
    demo = tmp_path / "demo.tsv"
    pd.DataFrame({"subject_id": [s.removeprefix("sub-") for s in subs], "age": 30.0,
                  "sex": "F", "site": "A"}).to_csv(demo, sep="\t", index=False)
    rc = main(["freesurfer", "collect", str(sd), "--atlases", "aseg", "--demographics", str(demo),
               "--out", str(tmp_path / "v.csv")])
    err = _err(capsys)
    assert rc == 2 and "demo.tsv" in err and "'sub-01'" in err and "'01'" in err
    assert "unmatched=" not in err       # no Python-only advice on the command line


def test_config_sex_codes_checked_and_named():
    """[reference] sex_codes is a known key; a bad code names the key and the fix."""
    base = {"patients": {"subjects_dir": "s"}, "reference": {"tables": ["r.csv"]},
            "clinical": {"visits": "v.csv"}}
    cfg = parse_config({**base, "reference": {"tables": ["r.csv"], "sex_codes": ["0=F", "1=M"]}})
    assert cfg["reference"]["sex_codes"] == ["0=F", "1=M"]
    with pytest.raises(ConfigError, match=r"\[reference\] sex_codes .* must be F or M"):
        parse_config({**base, "reference": {"tables": ["r.csv"], "sex_codes": ["0=female", "1=X"]}})


# ----------------------------------------------------------------- normfuse run, broken inputs
@pytest.fixture
def study(fcon, tmp_path):
    """A small study: simulated patients and clinical data, FCON1000 as the reference."""
    from normfuse.synthetic import simulate_cohort, write_cohort

    data = tmp_path / "data"
    write_cohort(simulate_cohort(n_patients=12, n_controls_reference=50, n_matched_controls=40,
                                 n_patient_sites=2, seed=3), data, overwrite=True)
    text = f"""
[patients]
subjects_dir = "data/subjects"
demographics = "data/participants.tsv"
atlases = ["aseg"]
[reference]
tables = ["{fcon}"]
sex_codes = ["0=F", "1=M"]
[adaptation]
tables = ["data/matched_controls_aseg.txt"]
demographics = "data/matched_controls.tsv"
n_per_site = 10
[clinical]
source = "data/ehr.duckdb"
"""
    return tmp_path, data, text


def _run(tmp_path, text, capsys):
    (tmp_path / "study.toml").write_text(text)
    rc = main(["-q", "run", str(tmp_path / "study.toml"), "--out", str(tmp_path / "out"),
               "--until", "normative", "--force"])
    return rc, capsys.readouterr().err


def test_run_with_fcon1000_reference_scores_patients(study, capsys):
    """The study runs to deviations with FCON1000 (FS6 names, 0/1 sex) as the reference."""
    tmp_path, _, text = study
    rc, err = _run(tmp_path, text, capsys)
    assert rc == 0, err
    cc = pd.read_csv(tmp_path / "out" / "tables" / "critical_counts.csv")
    held = cc.loc[cc["group"] == "held-out reference controls"]
    # 20 % of 1078 held out with seed 0; 22 regions, lower tail: 0.025 * 22 = 0.55 expected
    assert 150 < int(held["n"].iloc[0]) < 280
    assert 0.3 < float(held["mean_n_crit"].iloc[0]) < 0.8


def test_run_missing_file_names_the_config_key(study, capsys):
    """A misspelt path names the file and the [section] key that set it."""
    tmp_path, _, text = study
    rc, err = _run(tmp_path, text.replace("matched_controls.tsv", "matched_control.tsv"), capsys)
    assert rc == 2 and "matched_control.tsv" in err and "[adaptation] demographics" in err


def test_run_wrong_column_name_suggests_rename(study, capsys):
    """'Age' instead of 'age' in participants.tsv: the file, the column and the rename."""
    tmp_path, data, text = study
    d = pd.read_csv(data / "participants.tsv", sep="\t").rename(columns={"age": "Age"})
    d.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    rc, err = _run(tmp_path, text.replace("data/participants.tsv", "p.tsv"), capsys)
    assert rc == 2 and "p.tsv" in err and "'Age' -> 'age'" in err


def test_run_day_first_dates_refused_with_value(study, capsys):
    """scan_date as dd/mm/yyyy stops with the value and the YYYY-MM-DD fix (no silent swap)."""
    tmp_path, data, text = study
    d = pd.read_csv(data / "participants.tsv", sep="\t")
    first = pd.to_datetime(d["scan_date"]).dt.strftime("%d/%m/%Y")
    d["scan_date"] = first
    d.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    rc, err = _run(tmp_path, text.replace("data/participants.tsv", "p.tsv"), capsys)
    assert rc == 2 and "p.tsv" in err and "'scan_date'" in err and "YYYY-MM-DD" in err
    assert repr(first.iloc[0]) in err


def test_run_site_without_controls_says_add_adaptation(study, capsys):
    """Patients' sites with no controls anywhere: names the sites and the [adaptation] fix."""
    tmp_path, _, text = study
    text = text.split("[adaptation]")[0] + "[clinical]" + text.split("[clinical]")[1]
    rc, err = _run(tmp_path, text, capsys)
    assert rc == 2 and "[patients]" in err and "site01" in err and "[adaptation]" in err
    assert "model.adapt(" not in err


def test_run_visits_column_misnamed_names_file_and_key(study, capsys):
    """visits.csv with 'EDSS': the message names the file, [clinical] visits and the rename."""
    tmp_path, data, text = study
    d = pd.read_csv(data / "exports" / "visits.csv").rename(columns={"edss": "EDSS"})
    d.to_csv(tmp_path / "v.csv", index=False)
    text = text.replace('source = "data/ehr.duckdb"', 'visits = "v.csv"')
    (tmp_path / "study.toml").write_text(text)
    rc = main(["-q", "run", str(tmp_path / "study.toml"), "--out", str(tmp_path / "out"),
               "--until", "features", "--force"])
    err = capsys.readouterr().err
    assert rc == 2 and "v.csv" in err and "[clinical] visits" in err and "'EDSS' -> 'edss'" in err
    assert "rename=" not in err
