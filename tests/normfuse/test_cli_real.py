"""The command line on real files: FreeSurfer folders, FCON1000 and COBRE tables.

These are a new user's first steps (README "Your own study" / "Subcommands"); each test
pins a friction that was found and fixed. They read ../shared/data in place and skip
without it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normfuse._pipeline_inputs import parse_where, select_rows
from normfuse.cli import main
from normfuse.config import ConfigError, parse_config
from normfuse.errors import InputFormatError
from normfuse.pipeline import read_volumes

SEX01 = ["--sex-codes", "0=F", "1=M"]


def _err(capsys) -> str:
    return capsys.readouterr().err


def _controls_file(controls_dir, name):
    """A file of ../shared/data/controls, or skip naming it."""
    p = controls_dir / name
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture
def fcon(controls_dir):
    return _controls_file(controls_dir, "fcon1000.csv")


@pytest.fixture
def cobre_parts(controls_dir, tmp_path):
    """COBRE split as a user would with awk: half the controls adapt, half are held out."""
    d = pd.read_csv(_controls_file(controls_dir, "cobre.csv"))
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


# ----------------------------------------------------------------- --where and --join


def _table(rng):
    n = 40
    return pd.DataFrame({
        "subject_id": [f"s{i:02d}" for i in range(n)],
        "group": pd.array(rng.choice(["Control", "SZ", "MS"], n).tolist(), dtype=object),
        "age": np.round(rng.uniform(18, 80, n), 1),
        "sitenum": rng.integers(1, 4, n),
        "Left-Thalamus": rng.normal(7000, 500, n),
    }, index=pd.RangeIndex(100, 100 + n))


def test_where_every_operator_matches_a_plain_mask(rng):
    """Each operator keeps exactly the rows a hand-written mask keeps, in order, index kept."""
    df = _table(rng)
    df.loc[df.index[3], "group"] = None
    df.loc[df.index[5], "age"] = np.nan
    before = df.copy()
    g, a, s = df["group"], df["age"], df["sitenum"]
    cases = {
        "group=Control": g == "Control",
        "group!=SZ": (g != "SZ") & g.notna(),           # a missing cell meets no expression
        "group=Control,MS": g.isin(["Control", "MS"]),
        "group!=Control,MS": g.notna() & ~g.isin(["Control", "MS"]),
        "sitenum=2": s == 2,                           # numbers compare as text: 2 reads '2'
        "sitenum=1,3": s.isin([1, 3]),
        "age<40": a < 40, "age<=40.5": a <= 40.5, "age>60": a > 60, "age>=60": a >= 60,
        " age >= 60 ": a >= 60,
    }
    for expr, mask in cases.items():
        got = select_rows(df, [expr])
        want = df.loc[mask.fillna(False).to_numpy(dtype=bool)]
        pd.testing.assert_frame_equal(got, want, obj=expr)
    both = select_rows(df, ["group=Control", "age<50"])       # all must hold
    pd.testing.assert_frame_equal(both, df.loc[((g == "Control") & (a < 50)).to_numpy()])
    pd.testing.assert_frame_equal(df, before)                    # input unchanged


def test_where_grammar_parses_and_refuses_malformed():
    """Every operator parses; malformed expressions are refused naming the expression."""
    f = parse_where("site=Oulu,Leiden")
    assert (f.column, f.op, f.values, f.number) == ("site", "=", ("Oulu", "Leiden"), None)
    assert parse_where("sex!=F").op == "!="
    for expr, op, num in (("age<3", "<", 3.0), ("age<=3.5", "<=", 3.5), ("age>-1", ">", -1.0),
                          ("age>=1e2", ">=", 100.0)):
        f = parse_where(expr)
        assert (f.column, f.op, f.number) == ("age", op, num)
    bad = {"age": "no operator", "=3": "no COLUMN", "age=": "no value", "age==3": "'==' is not",
           "age=>3": "'=>' is not", "age>old": "needs a number", "site=a,,b": "empty value",
           "age<nan": "needs a number"}
    for expr, words in bad.items():
        with pytest.raises(InputFormatError, match="--where") as ei:
            parse_where(expr)
        assert repr(expr) in str(ei.value) and words in str(ei.value), expr


def test_where_data_errors_name_expression_file_and_columns(rng):
    """Unknown column (near miss), text column with '<', an empty selection: all named."""
    df = _table(rng)
    with pytest.raises(InputFormatError, match=r"'grup=SZ'.*in t\.csv.*'subject_id'.*did you "
                       r"mean 'group'\?"):
        select_rows(df, ["grup=SZ"], source="t.csv")
    with pytest.raises(InputFormatError, match=r"did you mean 'age'\?"):
        select_rows(df, ["Age>3"], source="t.csv")
    with pytest.raises(InputFormatError, match=r"'group<3'.*'group' in t\.csv is not numeric"):
        select_rows(df, ["group<3"], source="t.csv")
    with pytest.raises(InputFormatError, match=r"'group=control' leaves no rows of 40 in t\.csv "
                       r"\(column 'group' holds \['Control', 'MS', 'SZ'\]"):
        select_rows(df, ["group=control"], source="t.csv")
    n_sz = int((df["group"] == "SZ").sum())
    with pytest.raises(InputFormatError, match=rf"'age>200' leaves no rows of {n_sz} in"):
        select_rows(df, ["group=SZ", "age>200"], source="t.csv")


def test_where_logs_kept_and_dropped(rng, caplog):
    """Each expression logs rows kept and dropped; a listed value matching nothing is said."""
    df = _table(rng)
    n_c = int((df["group"] == "Control").sum())
    with caplog.at_level("WARNING", logger="normfuse"):
        select_rows(df, ["group=Control,Patient"])
    text = caplog.text
    assert f"kept {n_c} of 40 rows (dropped {40 - n_c})" in text
    assert "['Patient'] match no row" in text


def test_join_adds_columns_and_refuses_missing_ids(tmp_path, caplog):
    """--join adds a split column by sub_id; ids missing there are counted with examples."""
    vols = pd.DataFrame({"subject_id": ["a", "b", "c", "d"], "age": [30.0, 40, 50, 60],
                         "sex": ["F", "M", "F", "M"], "site": "X", "Left-Thalamus": 7000.0})
    vols.to_csv(tmp_path / "v.csv", index=False)
    pd.DataFrame({"sub_id": ["d", "c", "b", "a"], "split": ["test", "train", "train", "test"],
                  "age": 99.0}).to_csv(tmp_path / "split.csv", index=False)
    v = read_volumes([str(tmp_path / "v.csv")], join=[str(tmp_path / "split.csv")],
                     where=["split=train"])
    assert list(v["subject_id"]) == ["b", "c"] and list(v["age"]) == [40.0, 50.0]  # own age kept
    pd.DataFrame({"sub_id": ["a", "b"], "split": "train"}).to_csv(tmp_path / "s2.csv", index=False)
    with pytest.raises(InputFormatError, match=r"s2\.csv: .*2 of 4 scans have no row here "
                       r"\(matched on subject_id\); e\.g\. \['c', 'd'\]"):
        read_volumes([str(tmp_path / "v.csv")], join=[str(tmp_path / "s2.csv")])
    pd.DataFrame({"sub_id": ["a", "a", "b", "c", "d"], "split": "x"}).to_csv(
        tmp_path / "s3.csv", index=False)
    with pytest.raises(InputFormatError, match=r"repeats 1 id.*\['a'\]"):
        read_volumes([str(tmp_path / "v.csv")], join=[str(tmp_path / "s3.csv")])


def test_where_malformed_on_the_command_line_exits_2(tmp_path, capsys):
    """A malformed --where is one line on stderr, exit 2, before any file is read."""
    rc = main(["normative", "fit", str(tmp_path / "absent.csv"), "--where", "age=>3",
               "--out", str(tmp_path / "m")])
    err = _err(capsys)
    assert rc == 2 and "--where 'age=>3'" in err and err.count("\n") == 1


@pytest.fixture
def fcon_split(controls_dir):
    return _controls_file(controls_dir, "fcon1000_split_seed42.csv")


def test_fcon1000_fit_on_train_evaluate_on_test(fcon, fcon_split, tmp_path):
    """--join the split file, fit on split=train: equals a Python fit on the same 754 rows."""
    from normative.model import NormativeModel
    from normfuse.pipeline import _regions

    m = tmp_path / "m"
    join = ["--join", str(fcon_split)]
    assert main(["-q", "normative", "fit", str(fcon), *SEX01, *join, "--where", "split=train",
                 "--out", str(m)]) == 0
    assert main(["-q", "normative", "score", str(m), str(fcon), *SEX01, *join,
                 "--where", "split=test", "--out", str(tmp_path / "dev.csv")]) == 0
    assert main(["-q", "normative", "evaluate", str(m), str(fcon), *SEX01, *join,
                 "--where", "split=test", "--out", str(tmp_path / "met.csv")]) == 0
    # the same in Python, with the split read by pandas (counts in the file: 754 train, 324 test)
    split = pd.read_csv(fcon_split).set_index("sub_id")["split"]
    v = read_volumes([str(fcon)], sex_codes=["0=F", "1=M"])
    role = split.reindex(v["subject_id"].astype(str)).to_numpy()
    train, test = v.loc[role == "train"], v.loc[role == "test"]
    assert len(train) == 754 and len(test) == 324
    py = NormativeModel(_regions({"normative": {"regions": []}}, v)).fit(train)
    dev = pd.read_csv(tmp_path / "dev.csv")
    assert list(dev["subject_id"]) == list(test["subject_id"].astype(str))
    rows = [0, 1, 100, 323]
    z_py = py.transform(test.iloc[rows])
    np.testing.assert_allclose(dev.iloc[rows][list(py.responses_)].to_numpy(dtype=float),
                               z_py.to_numpy(), rtol=0, atol=1e-10)
    met = pd.read_csv(tmp_path / "met.csv")
    assert (met["n"] == 324).all() and set(met["region"]) == set(py.responses_)


def test_cobre_groups_by_where_equal_the_awk_split(fcon, cobre_parts, controls_dir, tmp_path):
    """--where group=SZ / group!=SZ on cobre.csv scores exactly the rows split off by hand."""
    m, a = tmp_path / "m", tmp_path / "adapted"
    cobre = str(controls_dir / "cobre.csv")
    assert main(["-q", "normative", "fit", str(fcon), *SEX01, "--out", str(m)]) == 0
    assert main(["-q", "normative", "adapt", str(m), cobre, *SEX01, "--where", "group=Control",
                 "--where", "age<=40", "--out", str(a)]) == 0
    assert main(["-q", "normative", "score", str(a), cobre, *SEX01, "--where", "group=SZ",
                 "--out", str(tmp_path / "sz_where.csv")]) == 0
    assert main(["-q", "normative", "score", str(a), str(cobre_parts["sz"]), *SEX01,
                 "--out", str(tmp_path / "sz_file.csv")]) == 0
    assert main(["-q", "normative", "score", str(a), cobre, *SEX01, "--where", "group!=SZ",
                 "--out", str(tmp_path / "ctrl.csv")]) == 0
    w, f = pd.read_csv(tmp_path / "sz_where.csv"), pd.read_csv(tmp_path / "sz_file.csv")
    assert len(w) == 61 and len(pd.read_csv(tmp_path / "ctrl.csv")) == 63   # cobre.csv groups
    pd.testing.assert_frame_equal(w, f)


def test_collect_where_on_a_demographics_column(fs_data, tmp_path):
    """freesurfer collect --where sex=F keeps the scans the participants table marks F."""
    sd, subs = _subjects(fs_data)
    sex = (["F", "M"] * len(subs))[:len(subs)]
    pd.DataFrame({"participant_id": subs, "age": 30.0, "sex": sex, "site": "A"}).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "v.csv"
    assert main(["-q", "freesurfer", "collect", str(sd), "--atlases", "aseg", "--demographics",
                 str(tmp_path / "participants.tsv"), "--where", "sex=F", "--out", str(out)]) == 0
    assert list(pd.read_csv(out)["subject_id"]) == [s for s, x in zip(subs, sex, strict=True)
                                                    if x == "F"]


# ----------------------------------------------------------------- study.toml where / join
def _split_config(fcon, fcon_split, **over):
    """FCON1000's test half as patients and held-out controls, its train half as reference."""
    vol = {"tables": [str(fcon)], "sex_codes": ["0=F", "1=M"], "join": [str(fcon_split)]}
    raw = {"patients": {**vol, "where": ["split=test"]},
           "reference": {**vol, "where": ["split=train"], "holdout_fraction": 0.0},
           "controls": {**vol, "where": ["split=test"]},
           "clinical": {"visits": "visits.csv"}}       # not read by collect/normative
    for sec, kv in over.items():
        raw[sec] = {**raw[sec], **kv}
    return parse_config(raw, source="study.toml")


def test_run_stages_fit_on_the_where_selected_train_rows(fcon, fcon_split):
    """[reference] join + where split=train: the 754 train rows, Z equal to a Python fit."""
    from normative.model import NormativeModel
    from normfuse.pipeline import _regions, stage_collect, stage_normative

    cfg = _split_config(fcon, fcon_split)
    ctx = {"tables": stage_collect(cfg, {})["tables"]}
    ref, pat = ctx["tables"]["volumes_reference"], ctx["tables"]["volumes_patients"]
    # counts in fcon1000_split_seed42.csv: 754 train, 324 test
    assert len(ref) == 754 and len(pat) == 324 and len(ctx["tables"]["volumes_controls"]) == 324
    assert set(ref["split"]) == {"train"} and set(pat["split"]) == {"test"}
    res = stage_normative(cfg, ctx)
    # the same split by pandas, fitted in Python with the stage's settings
    split = pd.read_csv(fcon_split).set_index("sub_id")["split"]
    v = read_volumes([str(fcon)], sex_codes=["0=F", "1=M"])
    role = split.reindex(v["subject_id"].astype(str)).to_numpy()
    train, test = v.loc[role == "train"], v.loc[role == "test"]
    assert list(ref.index) == list(train.index) and list(pat.index) == list(test.index)
    regions = _regions(cfg, train, test)
    py = NormativeModel(regions, likelihood="shash", device="cpu").fit(train)
    dev = res["tables"]["deviations"]
    rows = [0, 1, 100, 323]
    np.testing.assert_allclose(dev.iloc[rows][regions].to_numpy(dtype=float),
                               py.transform(test.iloc[rows]).to_numpy(), rtol=0, atol=1e-10)
    cc = res["tables"]["critical_counts"].set_index("group")
    assert int(cc.loc["local controls (not in fit or adaptation)", "n"]) == 324
    assert "held-out reference controls" not in cc.index          # holdout_fraction = 0


def test_run_where_unknown_column_names_section_key_and_fix(fcon, fcon_split):
    """A misspelt column in [reference] where names the key, the files and the near miss."""
    from normfuse.pipeline import stage_collect

    cfg = _split_config(fcon, fcon_split, reference={"where": ["splt=train"]})
    with pytest.raises(InputFormatError, match=r"\[reference\] where = 'splt=train': no column "
                       r"'splt' in .*fcon1000\.csv, .*fcon1000_split_seed42\.csv .*did you mean "
                       r"'split'\?"):
        stage_collect(cfg, {})
    cfg = _split_config(fcon, fcon_split, controls={"join": [], "where": ["fold=test"]})
    with pytest.raises(InputFormatError, match=r"\[controls\] where = 'fold=test': no column "
                       r".*add it with \[controls\] join = \[\"FILE\"\]"):
        stage_collect(cfg, {})
    cfg = _split_config(fcon, fcon_split, patients={"where": ["split=trian"]})
    with pytest.raises(InputFormatError, match=r"\[patients\] where = 'split=trian' leaves no "
                       r"rows of 1078 .*\['test', 'train'\]"):
        stage_collect(cfg, {})


def test_run_malformed_where_exits_2_naming_the_key(tmp_path, capsys):
    """normfuse run with where = ["split"] stops at load: exit 2, one line with section/key."""
    (tmp_path / "study.toml").write_text(
        '[patients]\ntables = ["p.csv"]\n[reference]\ntables = ["r.csv"]\n'
        'where = ["split"]\n[clinical]\nvisits = "v.csv"\n')
    rc = main(["run", str(tmp_path / "study.toml"), "--out", str(tmp_path / "out")])
    err = _err(capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "study.toml: [reference] where = 'split': no operator" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
