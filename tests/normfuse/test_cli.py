"""The normfuse command line: demo end to end, resume/--force/refuse, bad input, subcommands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normfuse import pipeline
from normfuse.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--patients", "30", "--controls", "600", "--seed", "3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo run (30 patients) shared by the tests of this module.

    It runs with a relative ``--out``, as ``make demo`` does (a relative output folder
    once had its data paths resolved twice).
    """
    parent = tmp_path_factory.mktemp("demo")
    old = os.getcwd()
    os.chdir(parent)
    try:
        assert main(["-q", "demo", "--out", "out", *SMALL]) == 0
    finally:
        os.chdir(old)
    return parent / "out"


def test_demo_writes_everything(demo):
    """The demo writes tables (CSV + Parquet), models, report, manifest and its study.toml."""
    man = json.loads((demo / "manifest.json").read_text())
    assert man["finished_stages"] == list(pipeline.STAGES)
    assert set(man["timings"]) == set(pipeline.STAGES)
    assert man["seeds"] == {"study": 3, "simulation": 3}
    assert man["package_versions"]["numpy"] == np.__version__
    subjects = str(demo / "data" / "subjects")
    assert len(man["input_hashes"][subjects]) == 64
    for name in ("deviations", "deviations_both", "critical_counts", "count_models",
                 "mixed_model", "survival", "analysis_table", "model_metrics"):
        a = pd.read_parquet(demo / "tables" / f"{name}.parquet")
        b = pd.read_csv(demo / "tables" / f"{name}.csv")
        assert len(a) == len(b) > 0
    assert (demo / "models" / "normative" / "model.json").is_file()
    assert (demo / "models" / "xgb_deviations").is_dir()
    assert "<html" in (demo / "report.html").read_text()[:200]
    assert not [p for p in demo.iterdir() if p.name.startswith(".stage-")]
    # the written template runs as a study config
    from normfuse.config import load_config

    cfg = load_config(demo / "study.toml")
    assert cfg == man["config"]


def test_demo_numbers_are_consistent(demo):
    """Counts follow the Z table; both-tail counts >= lower-tail; 30 patients, 2 adapted sites."""
    dev = pd.read_parquet(demo / "tables" / "deviations.parquet")
    both = pd.read_parquet(demo / "tables" / "deviations_both.parquet")
    assert dev["subject_id"].nunique() == 30
    z = dev.drop(columns=["subject_id", "session_id", "n_crit", "n_crit_neg", "n_crit_pos",
                          "age_out_of_range", "scan_date", "age", "sex", "site", "icv"])
    assert (dev["n_crit"].to_numpy() == (z.to_numpy() < -1.96).sum(1)).all()
    assert (both["n_crit"] >= dev["n_crit"]).all()
    from normative.model import NormativeModel

    m = NormativeModel.load(demo / "models" / "normative")
    assert {"site01", "site02"} <= set(map(str, m.sites_)) | set(
        map(str, getattr(m.design_, "extra_sites", ())))
    cc = pd.read_parquet(demo / "tables" / "critical_counts.parquet")
    assert cc["group"].tolist()[0] == "held-out reference controls"


def test_rerun_resumes_and_force_reruns(demo, capsys):
    """A re-run resumes every finished stage; --force re-runs them."""
    before = (demo / "tables" / "deviations.parquet").stat().st_mtime_ns
    assert main(["demo", "--out", str(demo), *SMALL]) == 0
    err = capsys.readouterr().err
    assert "normative 0.0s (resumed)" in err
    assert (demo / "tables" / "deviations.parquet").stat().st_mtime_ns == before


def test_refuses_other_settings_and_foreign_folder(demo, tmp_path, capsys):
    """Another seed into the same folder, or a non-empty foreign folder, is refused."""
    assert main(["demo", "--out", str(demo), "--patients", "30", "--seed", "4"]) == 2
    assert "--force" in capsys.readouterr().err
    (tmp_path / "mine.txt").write_text("x")
    cfg = json.loads((demo / "manifest.json").read_text())["config"]
    with pytest.raises(pipeline.OutputFolderError, match="not empty"):
        pipeline.run_pipeline(cfg, tmp_path, quiet=True)


def test_unwritable_output(demo, tmp_path, capsys):
    """An output path under a regular file fails with one line and exit code 2."""
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["run", str(demo / "study.toml"), "--out", str(f / "sub")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not writable" in err[0]


def test_interrupted_stage_leaves_no_partial_files(demo, tmp_path, monkeypatch, capsys):
    """A stage that raises (or Ctrl-C) leaves no result files and no staging folder."""
    cfg = json.loads((demo / "manifest.json").read_text())["config"]
    out = tmp_path / "run"

    def boom(config, ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline.STAGE_FUNCS, "normative", boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(cfg, out, quiet=True)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    # the finished collect stage is kept (complete files), nothing of the interrupted one
    assert "tables/deviations.parquet" not in files
    assert not [f for f in files if ".stage-" in f or ".tmp" in f]
    man = json.loads((out / "manifest.json").read_text())
    assert man["finished_stages"] == ["collect"] and man["failed_stage"] == "normative"
    # the CLI reports an interrupt with exit code 130
    toml = demo / "study.toml"
    assert main(["run", str(toml), "--out", str(tmp_path / "run2")]) == 130


def test_missing_inputs_and_bad_config(tmp_path, demo, capsys):
    """Missing files, wrong file types and config errors: exit 2, one line naming the problem."""
    text = (demo / "study.toml").read_text()
    cases = {
        "missing": text.replace('subjects_dir = "data/subjects"', 'subjects_dir = "nowhere"'),
        "unknown": text.replace("[normative]", "[normative]\ntial = 1"),
        "wrongtype": text.replace('seed = 3', 'seed = "three"'),
        "badci": text.replace('ci = "auto"', 'ci = "bootstrap"'),
        "tsvsource": text.replace('source = "data/ehr.duckdb"', 'source = "data/participants.tsv"'),
        "nodemo": text.replace('"data/participants.tsv"', '"data/participantz.tsv"'),
    }
    assert cases["tsvsource"] != text and cases["nodemo"] != text
    assert cases["badci"] != text
    for name, body in cases.items():
        p = demo / f"{name}.toml"
        p.write_text(body)
        rc = main(["run", str(p), "--out", str(tmp_path / name)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, (name, err)
        assert {"missing": "nowhere", "unknown": "tial", "wrongtype": "seed",
                "badci": "[models] ci = 'bootstrap' is not one of 'auto', 'delong', "
                         "'cluster_bootstrap'; fix the value. Did you mean 'cluster_bootstrap'?",
                "tsvsource": "[clinical] source = 'data/participants.tsv' has suffix '.tsv'",
                "nodemo": "[patients] demographics = 'data/participantz.tsv' not found",
                }[name] in err[0]
        # refused before any stage: no output folder, so a corrected config runs there
        assert not (tmp_path / name).exists()
    bad = tmp_path / "vols.xlsx"
    bad.write_text("x")
    rc = main(["normative", "score", str(demo / "models" / "normative"), str(bad),
               "--out", str(tmp_path / "z.csv")])
    assert rc == 2 and "expected .csv, .tsv, .txt or .parquet" in capsys.readouterr().err
    assert not (tmp_path / "z.csv").exists()


def test_models_ci_reaches_compare_models(demo, tmp_path):
    """[models] ci goes to compare_models: its ci_method is in model_comparison and the manifest."""
    from normfuse.config import load_config, to_toml

    man = json.loads((demo / "manifest.json").read_text())
    # the demo has several index visits per patient, so 'auto' picks the cluster bootstrap
    assert man["config"]["models"]["ci"] == "auto"
    info = man["stage_info"]["models"]
    assert info["ci"] == "auto" and info["ci_method"] == "cluster_bootstrap"
    assert info["max_rows_per_patient"] > 1
    comp = pd.read_parquet(demo / "tables" / "model_comparison.parquet")
    ran = comp["skipped"].fillna("").astype(str) == ""
    assert ran.any() and set(comp.loc[ran, "ci_method"]) == {"cluster_bootstrap"}
    # asking for DeLong on the same cohort gives DeLong (a small, fast model set)
    cfg = load_config(demo / "study.toml")
    cfg["models"].update(ci="delong", compare=["dev_count_logistic", "dev_xgb"], ablations=False,
                         n_estimators=20)
    cfg["features"].update(notes=False, ehr=False)
    toml = demo / "delong.toml"
    toml.write_text(to_toml(cfg, relative_to=demo))
    out = tmp_path / "delong"
    assert main(["-q", "run", str(toml), "--out", str(out), "--until", "models"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["models"]["ci"] == "delong"
    assert man["stage_info"]["models"]["ci"] == "delong"
    assert man["stage_info"]["models"]["ci_method"] == "delong"
    comp = pd.read_parquet(out / "tables" / "model_comparison.parquet")
    assert comp["model"].tolist() == ["dev_count_logistic", "dev_xgb"]
    assert set(comp["ci_method"]) == {"delong"}


def test_subcommands_files_in_files_out(demo, tmp_path):
    """freesurfer collect -> normative fit -> adapt -> score/evaluate, each from files."""
    data = demo / "data"
    vols = tmp_path / "patients.parquet"
    assert main(["-q", "freesurfer", "collect", str(data / "subjects"), "--demographics",
                 str(data / "participants.tsv"), "--out", str(vols)]) == 0
    v = pd.read_parquet(vols)
    assert v["subject_id"].nunique() == 30 and v["session_id"].str.startswith("ses-").all()
    ref = [str(data / f"reference_controls_{s}") for s in
           ("aseg.txt", "lh.aparc.volume.txt", "rh.aparc.volume.txt")]
    regs = ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus"]
    model = tmp_path / "model"
    assert main(["-q", "normative", "fit", *ref, "--demographics",
                 str(data / "reference_controls.tsv"), "--likelihood", "normal",
                 "--regions", *regs, "--exclude-sites", "site01", "site02", "--out",
                 str(model)]) == 0
    loc = [str(data / f"matched_controls_{s}") for s in ("aseg.txt",)]
    adapted = tmp_path / "adapted"
    assert main(["-q", "normative", "adapt", str(model), *loc, "--demographics",
                 str(data / "matched_controls.tsv"), "--out", str(adapted)]) == 0
    z = tmp_path / "z.csv"
    assert main(["-q", "normative", "score", str(adapted), str(vols), "--tail", "lower",
                 "--out", str(z)]) == 0
    zz = pd.read_csv(z)
    assert len(zz) == len(v) and (zz["n_crit"] == (zz[regs] < -1.96).sum(1)).all()
    ev = tmp_path / "ev.csv"
    assert main(["-q", "normative", "evaluate", str(adapted), *loc, "--demographics",
                 str(data / "matched_controls.tsv"), "--out", str(ev)]) == 0
    assert pd.read_csv(ev)["region"].tolist() == regs
    # the stage subcommands resume from a finished run folder
    assert main(["-q", "analyses", "run", str(demo / "study.toml"), "--out", str(demo)]) == 0
    assert main(["-q", "report", str(demo / "study.toml"), "--out", str(demo)]) == 0


def test_exit_code_via_subprocess(tmp_path):
    """The installed entry point exits 2 with one line on a missing config."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "normfuse.cli", "run", str(tmp_path / "x.toml")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"normfuse: error: {tmp_path / 'x.toml'}: config file not found; pass the path of your "
        "study.toml (`normfuse demo` writes a template)."]


@pytest.mark.slow
def test_resumed_run_exits_cleanly_every_time(demo):
    """Re-running into a finished folder exits 0 every time (no abort in native teardown)."""
    # Before console_main ended with os._exit, about 1 in 40 of these runs aborted at
    # interpreter exit ("terminate called without an active exception", rc 134) in
    # pyarrow's thread pools; runs go 3 at a time because the race shows under load.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "normfuse.cli", "run", str(demo / "study.toml"), "--out",
           str(demo), "--quiet"]
    results = []
    for _ in range(10):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env, cwd=demo) for _ in range(3)]
        results += [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    bad = [(rc, err[:300]) for rc, err in results if rc != 0 or err.strip()]
    assert len(results) == 30 and not bad, bad
    # the resume really happened: every stage is still finished and nothing was re-run
    man = json.loads((demo / "manifest.json").read_text())
    assert man["finished_stages"] == list(pipeline.STAGES)


def test_model_contract_errors_name_the_table(demo, tmp_path, capsys):
    """normative fit/adapt/score/evaluate on a table without the contract name it, lists capped."""
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    model = str(demo / "models" / "normative")
    need = "required columns are missing: ['age', 'sex', 'icv', 'site']; present: "
    lacks = f"the table lacks 90 region column(s) the model {model} was fitted on: ['Left-"
    for argv, who, text in (
            (["fit", str(junk)], "NormativeModel.fit", need),
            (["adapt", model, str(junk)], "NormativeModel.adapt", need),
            (["score", model, str(junk)], "NormativeModel.transform", lacks),
            (["evaluate", model, str(junk)], "NormativeModel.score", lacks)):
        rc = main(["normative", *argv, "--out", str(tmp_path / "o.csv")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, (argv, err)
        assert err[0].startswith(f"normfuse: error: {junk}: {who}: {text}"), err[0]
        if text is lacks:     # 90 regions: 10 shown, the rest counted
            assert "'Left-VentralDC', 'Left-Cerebellum-Cortex'] ... and 80 more; its columns: " \
                "['a', 'b', 'session_id']" in err[0] and len(err[0]) < 650
    assert not (tmp_path / "o.csv").exists()
    # --exclude-sites on a table without a site column: a named error, not a KeyError
    rc = main(["normative", "fit", str(junk), "--exclude-sites", "s1", "--out", str(tmp_path / "m")])
    assert rc == 2 and f"{junk}: --exclude-sites needs a 'site' column" in capsys.readouterr().err


def test_ehr_notices_given_once_per_run_not_per_fold(demo, tmp_path, caplog):
    """The whole-cohort EHR notices are warnings once; per-fold refits repeat them at DEBUG."""
    import logging

    from normfuse.config import load_config, to_toml

    cfg = load_config(demo / "study.toml")
    cfg["models"].update(compare=["dev_count_logistic", "ehr_xgb"], ablations=False,
                         n_estimators=10, n_splits=3)
    cfg["features"].update(notes=False)
    toml = demo / "ehr_notices.toml"
    toml.write_text(to_toml(cfg, relative_to=demo))
    with caplog.at_level(logging.DEBUG, logger="normfuse"):
        assert main(["-vv", "run", str(toml), "--out", str(tmp_path / "o"), "--until",
                     "models"]) == 0
    ehr = [r for r in caplog.records if r.name.endswith("features.ehr")]
    warn = [r.getMessage() for r in ehr if r.levelno >= logging.WARNING]
    debug = [r.getMessage() for r in ehr if r.levelno == logging.DEBUG]
    censored = [m for m in warn if "left-censored" in m]
    # one whole-cohort fit in the features stage; summaries and 3 fold refits at DEBUG
    assert len(censored) == 1 and censored[0].startswith("EHRFeaturizer.fit: "), warn
    assert len([m for m in debug if "left-censored" in m]) >= 1 + 3 * 2, debug
    assert len(warn) == len(set(warn)), warn          # nothing said twice at WARNING
    assert not [m for m in warn + debug if "see log for examples" in m]
