"""`normfuse normative import-braincharts`: the published zip to a model folder, no Python.

The braincharts zip (../shared/data/braincharts/lifespan_57K_82sites.zip) and the fcon1000
controls (../shared/data/controls/fcon1000.csv) are read in place; the tests skip without
them. The reference for every number is the Python route, `import_braincharts(...)`
(itself checked against a scalar re-implementation of braincharts' equations in
tests/normative/test_braincharts.py).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from normative.braincharts import BRAINCHARTS_82_SITES, BrainchartsModel, import_braincharts
from normfuse.cli import main

ZIP = "lifespan_57K_82sites.zip"
ARRAYS = ("m", "cov", "noise_var", "eps", "log_delta", "y_mean", "y_sd", "n_train", "site_prior",
          "adapted_offset", "adapted_offset_var", "adapted_log_scale", "adapted_log_scale_var")
# FreeSurfer 7 names, a braincharts-only spelling and a cortical-thickness measure
MEASURES = ["Left-Thalamus", "Right-Hippocampus", "EstimatedTotalIntraCranialVol",
            "lh_G&S_frontomargin_thickness"]
ASEG = ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus", "Right-Hippocampus",
        "Left-Putamen", "Right-Putamen", "Brain-Stem"]
SEX01 = ["--sex-codes", "0=F", "1=M"]


@pytest.fixture(scope="module")
def zip_path(braincharts_dir):
    """The published braincharts zip."""
    p = braincharts_dir / ZIP
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="module")
def fcon(controls_dir):
    """fcon1000 controls (FreeSurfer 6 names, sex 0=F 1=M) as shipped."""
    p = controls_dir / "fcon1000.csv"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return pd.read_csv(p)


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_same_model(a: BrainchartsModel, b: BrainchartsModel):
    assert a.responses_ == b.responses_ and a.measures_ == b.measures_
    assert a.sites_ == b.sites_ and a.n_reference_sites_ == b.n_reference_sites_
    assert a.basis_ == b.basis_ and tuple(a.age_range_) == tuple(b.age_range_)
    assert a.source_ == b.source_
    for k in ARRAYS:
        assert_array_equal(getattr(a, k + "_"), getattr(b, k + "_"), err_msg=k)


def test_import_equals_python_import_array_for_array(zip_path, fcon, tmp_path, capsys):
    """The saved folder equals import_braincharts(...) array for array; Z and predictions to 1e-12."""
    out = tmp_path / "bc"
    rc, stdout, err = _run(["normative", "import-braincharts", str(zip_path), "-o", str(out),
                            "--measures", ",".join(MEASURES)], capsys)
    assert rc == 0, err
    saved = BrainchartsModel.load(out)
    ref = import_braincharts(zip_path, measures=MEASURES)
    _assert_same_model(saved, ref)
    assert saved.responses_ == ["Left-Thalamus", "Right-Hippocampus", "eTIV",
                                "lh_G&S_frontomargin_thickness"]
    assert saved.measures_[:3] == ["Left-Thalamus-Proper", "Right-Hippocampus",
                                   "EstimatedTotalIntraCranialVol"]
    # real covariates and volumes, labelled with training sites (none of fcon1000's is one)
    rng = np.random.default_rng(5)
    rows = fcon.iloc[rng.choice(len(fcon), 40, replace=False)].copy()
    rows["sex"] = rows["sex"].map({0: "F", 1: "M"})
    rows["site"] = [BRAINCHARTS_82_SITES[i] for i in rng.choice(82, len(rows))]
    assert_allclose(saved.transform(rows).to_numpy(), ref.transform(rows).to_numpy(),
                    rtol=1e-12, atol=1e-12)
    for a, b in zip(saved.predict(rows), ref.predict(rows), strict=True):
        assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-12)
    assert_allclose(saved.centiles(rows).to_numpy(), ref.centiles(rows).to_numpy(), rtol=1e-12)
    # the summary: measures, sites, age range, output path
    assert "imported 4 braincharts measure(s) from lifespan_57K_82sites.zip" in stdout
    assert "Left-Thalamus, Right-Hippocampus, eTIV" in stdout
    assert "training sites: 82; training ages 2-100 years" in stdout
    assert f"saved to {out}" in stdout and "normfuse normative adapt" in stdout
    # --quiet: nothing on stdout
    rc, stdout, _ = _run(["-q", "normative", "import-braincharts", str(zip_path), "-o",
                          str(tmp_path / "q"), "--measures", "Left-Thalamus"], capsys)
    assert rc == 0 and stdout == ""


def test_list_prints_every_measure_and_writes_nothing(zip_path, tmp_path, capsys, monkeypatch):
    """--list: a count line, then the zip's 188 measures one per line (FS7 name beside); no files."""
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = _run(["normative", "import-braincharts", str(zip_path), "--list"], capsys)
    assert rc == 0, err
    lines = stdout.splitlines()
    # unzip -l lifespan_57K_82sites.zip | grep -c 'Models/NM_0_0_estimate.pkl'  ->  188
    assert lines[0].startswith("# 188 measures in lifespan_57K_82sites.zip")
    assert len(lines) == 1 + 188
    assert "Left-Thalamus-Proper  # Left-Thalamus" in lines
    assert "EstimatedTotalIntraCranialVol  # eTIV" in lines
    assert "Right-Hippocampus" in lines and "lh_G&S_frontomargin_thickness" in lines
    assert list(tmp_path.iterdir()) == []
    # the list, edited down, is a valid --measures-file
    f = tmp_path / "measures.txt"
    keep = [ln for ln in lines if ln.startswith(("#", "Left-Thalamus-Proper", "Brain-Stem"))]
    f.write_text("\n".join(keep) + "\n\n")
    rc, _, err = _run(["-q", "normative", "import-braincharts", str(zip_path), "-o",
                       str(tmp_path / "bc"), "--measures-file", str(f)], capsys)
    assert rc == 0, err
    _assert_same_model(BrainchartsModel.load(tmp_path / "bc"),
                       import_braincharts(zip_path, measures=["Brain-Stem", "Left-Thalamus"]))
    # --list with an output is refused (it writes nothing)
    rc, _, err = _run(["normative", "import-braincharts", str(zip_path), "--list", "-o",
                       str(tmp_path / "x")], capsys)
    assert rc == 2 and "--list prints the measures" in err and not (tmp_path / "x").exists()


def test_unknown_measure_lists_close_names_and_writes_nothing(zip_path, tmp_path, capsys):
    """A misspelt measure: exit 2, the close names and the --list command; no folder, no temp files."""
    out = tmp_path / "bc"
    rc, stdout, err = _run(["normative", "import-braincharts", str(zip_path), "-o", str(out),
                            "--measures", "Left-Thalamus,Right-Hipocampus,cortex_thing"], capsys)
    assert rc == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith(f"normfuse: error: {zip_path}: 2 measure(s)")
    assert "'Right-Hipocampus' (close: Right-Hippocampus" in err
    assert "'cortex_thing' (close: none)" in err
    assert f"normfuse normative import-braincharts {zip_path} --list" in err
    assert list(tmp_path.iterdir()) == []
    # an earlier model in that folder survives a failed import unchanged
    assert main(["-q", "normative", "import-braincharts", str(zip_path), "-o", str(out),
                 "--measures", "Brain-Stem"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = _run(["normative", "import-braincharts", str(zip_path), "-o", str(out),
                       "--measures", "Brain-Stemm,Left-Thalamus"], capsys)
    assert rc == 2 and "'Brain-Stemm' (close: Brain-Stem" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bc"]


def test_bad_inputs_name_the_file_and_exit_2(zip_path, tmp_path, capsys):
    """Missing zip, a non-zip, no -o, an -o that is not a model folder, bad measure lists: exit 2, named."""
    cases = []
    cases.append((["normative", "import-braincharts", str(tmp_path / "no.zip"), "-o",
                   str(tmp_path / "m")], [f"{tmp_path / 'no.zip'}: braincharts zip not found"]))
    notzip = tmp_path / "models.zip"
    notzip.write_bytes(b"PK not really")
    cases.append((["normative", "import-braincharts", str(notzip), "-o", str(tmp_path / "m")],
                  [f"{notzip}: not a zip archive"]))
    cases.append((["normative", "import-braincharts", str(zip_path)], ["-o/--out FOLDER"]))
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    cases.append((["normative", "import-braincharts", str(zip_path), "-o", str(afile)],
                  [f"{afile}: exists and is not a saved normfuse model folder"]))
    cases.append((["normative", "import-braincharts", str(zip_path), "-o", str(tmp_path / "m"),
                   "--measures-file", str(tmp_path / "none.txt")],
                  [f"{tmp_path / 'none.txt'}: --measures-file not found"]))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    cases.append((["normative", "import-braincharts", str(zip_path), "-o", str(tmp_path / "m"),
                   "--measures-file", str(empty)], [f"{empty}: --measures-file names no measure"]))
    cases.append((["normative", "import-braincharts", str(zip_path), "-o", str(tmp_path / "m"),
                   "--measures", " , "], ["names no measure"]))
    cases.append((["normative", "import-braincharts", str(zip_path), "-o", str(tmp_path / "m"),
                   "--measures", "Left-Thalamus,Left-Thalamus-Proper"],
                  ["name the same model twice: ['Left-Thalamus-Proper']"]))
    cases.append((["normative", "import-braincharts", str(zip_path), "--measures", "A",
                   "--measures-file", str(empty)], ["not allowed with argument"]))
    for args, needles in cases:
        rc, _, err = _run(args, capsys)
        assert rc == 2, (args, err)
        for n in needles:
            assert n in err, (n, err)
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "models.zip", "notes.txt"]


def test_site_ids_file_gives_the_default_model(zip_path, braincharts_dir, tmp_path, capsys):
    """--site-ids site_ids_ct_82sites.txt (the published list) gives the default 82-site model."""
    ids = braincharts_dir / "site_ids_ct_82sites.txt"
    if not ids.is_file():
        pytest.skip(f"{ids} not found")
    rc, _, err = _run(["-q", "normative", "import-braincharts", str(zip_path), "-o",
                       str(tmp_path / "bc"), "--measures", "Brain-Stem", "--site-ids", str(ids)],
                      capsys)
    assert rc == 0, err
    _assert_same_model(BrainchartsModel.load(tmp_path / "bc"),
                       import_braincharts(zip_path, measures=["Brain-Stem"]))


def test_imported_folder_adapts_and_scores_an_fcon1000_site(zip_path, fcon, tmp_path, capsys):
    """import-braincharts -> normative adapt (15 Oulu controls) -> score the other Oulu controls.

    The Z equal the Python route (import_braincharts, adapt, deviations on the same rows)
    to 1e-10, and the held-out controls are roughly calibrated.
    """
    oulu = fcon.loc[fcon["site"] == "Oulu"]
    local, held = oulu.iloc[:15], oulu.iloc[15:]
    local.to_csv(tmp_path / "local.csv", index=False)
    held.to_csv(tmp_path / "held.csv", index=False)
    bc, adapted = tmp_path / "bc", tmp_path / "adapted"
    assert main(["-q", "normative", "import-braincharts", str(zip_path), "-o", str(bc),
                 "--measures", ",".join(ASEG)]) == 0
    rc, _, err = _run(["-q", "normative", "adapt", str(bc), str(tmp_path / "local.csv"), *SEX01,
                       "--out", str(adapted)], capsys)
    assert rc == 0, err
    rc, _, err = _run(["-q", "normative", "score", str(adapted), str(tmp_path / "held.csv"),
                       *SEX01, "--out", str(tmp_path / "z.csv")], capsys)
    assert rc == 0, err
    z = pd.read_csv(tmp_path / "z.csv")
    assert json.loads((adapted / "model.json").read_text())["kind"] == "BrainchartsModel"
    assert BrainchartsModel.load(adapted).adapted_sites_ == ["Oulu"]
    # the Python route on the same rows (FreeSurfer 6 names and 0/1 sex as in the file)
    py_local = local.assign(sex=local["sex"].map({0: "F", 1: "M"}))
    py_held = held.assign(sex=held["sex"].map({0: "F", 1: "M"}))
    ref = import_braincharts(zip_path, measures=ASEG).adapt(py_local).deviations(py_held)
    assert z["subject_id"].astype(str).tolist() == held["sub_id"].astype(str).tolist()
    assert_allclose(z[ASEG].to_numpy(float), ref[ASEG].to_numpy(float), rtol=0, atol=1e-10)
    assert z["n_crit"].tolist() == ref["n_crit"].tolist()
    # 87 held-out Oulu controls x 7 regions: centred, spread about 1 (measured: mean -0.055, sd 1.063)
    zz = z[ASEG].to_numpy(float)
    assert abs(zz.mean()) < 0.3 and 0.75 < zz.std() < 1.25


def _readme_block(name: str) -> str:
    """The ```bash block under ``<!-- cli-test: NAME -->`` in README.md."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- cli-test: {name} -->\n```bash\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no cli-test block {name!r}"
    return m.group(1)


def test_readme_braincharts_commands_run_as_written(zip_path, fcon, tmp_path, monkeypatch, capsys):
    """The README's braincharts commands run as written (zip and CSV names pointed at real files)."""
    monkeypatch.chdir(tmp_path)
    oulu = fcon.loc[fcon["site"] == "Oulu"]
    oulu.iloc[:20].to_csv("local_controls.csv", index=False)
    oulu.iloc[20:].to_csv("patients.csv", index=False)       # stand-ins for the patients
    block = _readme_block("braincharts")
    assert block.count("lifespan_57K_82sites.zip") == 2
    lines = block.replace("\\\n", " ").replace("lifespan_57K_82sites.zip", str(zip_path))
    commands = [ln for ln in lines.splitlines() if ln.strip()]
    assert len(commands) == 4
    for cmd in commands:
        words = shlex.split(cmd)
        stdout_to = None
        if ">" in words:
            i = words.index(">")
            words, stdout_to = words[:i], words[i + 1]
        assert words[0] == "normfuse"
        rc = main(words[1:])
        out = capsys.readouterr()
        assert rc == 0, (cmd, out.err)
        if stdout_to:
            Path(stdout_to).write_text(out.out)
    assert len(Path("measures.txt").read_text().splitlines()) == 1 + 188
    bc = BrainchartsModel.load("braincharts")
    assert bc.responses_ == ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus",
                             "Right-Hippocampus", "eTIV"]
    assert BrainchartsModel.load("adapted").adapted_sites_ == ["Oulu"]
    dev = pd.read_csv("deviations.csv")
    assert len(dev) == len(oulu) - 20 and np.isfinite(dev[bc.responses_].to_numpy(float)).all()
