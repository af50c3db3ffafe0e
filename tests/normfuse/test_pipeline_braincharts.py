"""Pipeline and CLI with a saved braincharts model as the normative reference.

The clinic use case: the published braincharts lifespan models (82 training sites),
adapted to the study's scanners from a few local healthy controls, score the patients.
The cohort is simulated (planted atrophy in patients); the braincharts zip is read in
place from ../shared/data/braincharts.
"""
from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from normfuse.errors import ColumnContractError, SchemaError, UnknownSiteError

_REGIONS = ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus", "Right-Hippocampus",
            "Left-Caudate", "Right-Caudate", "Left-Putamen", "Right-Putamen"]
_ZIP = "lifespan_57K_82sites.zip"


@pytest.fixture(scope="module")
def study(tmp_path_factory, braincharts_dir, small_study):
    """A small simulated cohort, a saved 8-measure braincharts model and a run through the report."""
    from normative.braincharts import import_braincharts
    from normfuse.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("braincharts")
    cfg = small_study(root, _REGIONS)
    bc = import_braincharts(braincharts_dir / _ZIP, measures=_REGIONS)
    bc.save(root / "bc")
    cfg["reference"].update(tables=[], demographics="", exclude_sites=[], model=str(root / "bc"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(cfg, root / "out", quiet=True)
    return root, cfg, res, bc


def test_deviations_equal_braincharts_adapted_to_the_study_sites(study):
    """Patients' Z are braincharts' Z after adapting to the first n_per_site local controls per site."""
    root, cfg, res, bc = study
    model = res.normative_model
    pat = res.tables["volumes_patients"]
    assert type(model).__name__ == "BrainchartsModel" and model.responses_ == _REGIONS
    # the study's sites were added after braincharts' 82 training sites
    assert model.n_reference_sites_ == 82
    assert model.adapted_sites_ == sorted(pat["site"].astype(str).unique()) == ["site01", "site02"]
    # independent route: the public API on the imported model, adaptation rows chosen by hand
    local = res.tables["volumes_adaptation"]
    first = np.concatenate([np.flatnonzero((local["site"] == s).to_numpy())[:10]
                            for s in local["site"].unique()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z_ref = bc.adapt(local.iloc[np.sort(first)]).transform(pat)
    dev = res.tables["deviations"]
    assert np.isfinite(dev[_REGIONS].to_numpy(float)).all()
    assert_allclose(dev[_REGIONS].to_numpy(float), z_ref.to_numpy(float), rtol=1e-10, atol=1e-10)


def test_planted_atrophy_shows_and_local_controls_are_calibrated(study):
    """Patients (planted atrophy) have lower Z than local controls outside the adaptation set."""
    root, cfg, res, bc = study
    zp = res.tables["deviations"][_REGIONS].to_numpy(float)
    zc = res.tables["deviations_controls"][_REGIONS].to_numpy(float)
    assert len(zc) == 60 - 20            # 10 per site went into adaptation
    assert abs(zc.mean()) < 0.35 and 0.7 < zc.std() < 1.3
    assert zp.mean() < zc.mean() - 0.3
    cc = res.tables["critical_counts"].set_index("group")
    # no held-out reference controls: the expected count comes from the local controls
    # outside the adaptation set (lower tail, |Z| > 1.96), counted here by hand
    assert list(cc.index) == ["local controls (not in fit or adaptation)", "patients, baseline scans"]
    assert cc["expected_source"].iloc[0] == "held-out controls"
    assert_allclose(cc["expected_n_crit"].iloc[0], (zc < -1.96).sum(1).mean(), rtol=1e-12)
    cal = res.tables["normative_calibration"].set_index("region")
    assert_allclose(cal.loc[_REGIONS, "z_mean"], zc.mean(0), rtol=1e-12)
    assert res.tables["normative_regions"]["region"].tolist() == _REGIONS
    assert "reference_fit_ids" not in res.tables


def test_saved_run_model_reloads_as_braincharts_and_resumes(study, tmp_path):
    """models/normative is a BrainchartsModel folder; a later run resumes the stage from it."""
    from normative.braincharts import BrainchartsModel
    from normfuse.pipeline import run_pipeline

    root, cfg, res, bc = study
    back = BrainchartsModel.load(root / "out" / "models" / "normative")
    assert back.adapted_sites_ == ["site01", "site02"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pipeline(cfg, tmp_path / "r", quiet=True, stages=["normative"])
        again = run_pipeline(cfg, tmp_path / "r", quiet=True, stages=["features"])
    assert "normative" in again.skipped
    assert isinstance(again.normative_model, BrainchartsModel)
    assert again.normative_model.adapted_sites_ == ["site01", "site02"]


def test_report_describes_braincharts(study):
    """report.html names braincharts, its source zip, the adapted sites and draws centiles."""
    root, cfg, res, bc = study
    page = (root / "out" / "report.html").read_text()
    for s in ("SinhArcsinh-warped BLR (braincharts)", _ZIP, "site01, site02",
              "Controls: local controls outside the adaptation set", "Q-Q plot",
              "age, sex, site (no ICV)", "Centile curves", "published braincharts lifespan models"):
        assert s in page, s
    assert "were fitted to healthy reference controls" not in page


def test_analyses_warns_that_loaded_model_records_no_ids(study, caplog):
    """The analyses stage still says that nothing checks overlap with the loaded model's fit."""
    from normfuse._stages_analyses import stage_analyses

    root, cfg, res, bc = study
    tables = {k: v for k, v in res.tables.items() if k != "reference_fit_ids"}
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="normfuse"):
        warnings.simplefilter("ignore")
        stage_analyses(cfg, {"tables": tables, "results": {}})
    assert any("records no subject ids" in r.getMessage() for r in caplog.records)


def test_without_adaptation_the_run_stops_pointing_to_adaptation(study, tmp_path):
    """braincharts knows none of the study's sites: no [adaptation] -> a message naming it."""
    from normfuse.pipeline import run_pipeline

    root, cfg, res, bc = study
    bad = copy.deepcopy(cfg)
    bad["adaptation"].update(tables=[], demographics="")
    with pytest.raises(UnknownSiteError) as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_pipeline(bad, tmp_path / "o", quiet=True, stages=["normative"])
    msg = str(exc.value)
    assert msg.startswith("[patients] site(s) ['site01', 'site02'] (81 scans) are not among the "
                          "sites of the braincharts reference model (82 training sites")
    assert "add an [adaptation] section" in msg and str(root / "bc") in msg


def test_regions_missing_from_the_model_are_listed(study, tmp_path):
    """[normative] regions outside the saved model's measures: the error lists them and the fix."""
    from normfuse.pipeline import run_pipeline

    root, cfg, res, bc = study
    bad = copy.deepcopy(cfg)
    bad["normative"]["regions"] = [*_REGIONS, "Left-Pallidum", "Right-Pallidum"]
    with pytest.raises(ColumnContractError,
                       match=r"(?s)\[normative\] regions lists 2 region.*"
                             r"Missing: \['Left-Pallidum', 'Right-Pallidum'\].*normfuse normative import-braincharts"):
        run_pipeline(bad, tmp_path / "o", quiet=True, stages=["normative"])


def test_adaptation_sites_the_model_knows_are_refused(study, tmp_path):
    """A saved model already adapted to site01/site02 plus [adaptation] tables: named, with the fix."""
    from normfuse.pipeline import run_pipeline

    root, cfg, res, bc = study
    again = copy.deepcopy(cfg)
    again["reference"]["model"] = str(root / "out" / "models" / "normative")
    with pytest.raises(ColumnContractError, match=r"^\[adaptation\] tables hold 20 controls from "
                                                  r"site\(s\) \['site01', 'site02'\]"):
        run_pipeline(again, tmp_path / "o", quiet=True, stages=["normative"])


def test_other_saved_kinds_are_refused_naming_folder_and_kinds(tmp_path):
    """A saved object of another kind is not a reference model: folder, kind, accepted kinds."""
    import features.ehr  # noqa: F401  (registers EHRFeaturizer)
    from normfuse._pipeline_common import load_reference_model
    from normfuse.persist import save_state

    save_state(tmp_path / "ehr", kind="EHRFeaturizer", meta={}, arrays={})
    with pytest.raises(SchemaError, match=r"\[reference\] model .*ehr holds a saved "
                                          r"'EHRFeaturizer'.*'NormativeModel' or 'BrainchartsModel'"):
        load_reference_model(tmp_path / "ehr")


def test_subset_predicts_as_the_full_model(study):
    """BrainchartsModel.subset (FS7 or braincharts names) gives the full model's Z for those columns."""
    root, cfg, res, bc = study
    model = res.normative_model
    pat = res.tables["volumes_patients"]
    sub = model.subset(["Right-Putamen", "Left-Thalamus-Proper"])
    assert sub.responses_ == ["Right-Putamen", "Left-Thalamus"]
    assert sub.measures_ == ["Right-Putamen", "Left-Thalamus-Proper"]
    full = model.transform(pat)
    assert_allclose(sub.transform(pat[["age", "sex", "site", "Right-Putamen", "Left-Thalamus"]])
                    .to_numpy(), full[["Right-Putamen", "Left-Thalamus"]].to_numpy(), rtol=1e-12)
    with pytest.raises(ColumnContractError, match=r"Missing: \['Left-Pallidum'\]"):
        model.subset(["Left-Pallidum"])


def test_cli_adapt_and_score_with_a_braincharts_folder(study, tmp_path, capsys):
    """`normfuse normative adapt/score` take a braincharts folder; Z equal the pipeline's."""
    from normfuse.cli import main

    root, cfg, res, bc = study
    pat = res.tables["volumes_patients"]
    pat.to_csv(tmp_path / "patients.csv", index=False)
    # the unadapted model: the CLI names the adapt command
    assert main(["normative", "score", str(root / "bc"), str(tmp_path / "patients.csv"),
                 "--out", str(tmp_path / "z0.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "site(s) ['site01', 'site02']" in err and "normfuse normative adapt" in err
    local = res.tables["volumes_adaptation"]
    local = local.groupby("site", sort=False).head(10)
    local.to_csv(tmp_path / "local.csv", index=False)
    assert main(["normative", "adapt", str(root / "bc"), str(tmp_path / "local.csv"),
                 "--out", str(tmp_path / "adapted"), "-q"]) == 0
    assert main(["normative", "score", str(tmp_path / "adapted"), str(tmp_path / "patients.csv"),
                 "--out", str(tmp_path / "z.csv"), "--tail", "lower", "-q"]) == 0
    z = pd.read_csv(tmp_path / "z.csv")
    dev = res.tables["deviations"]
    assert z["subject_id"].astype(str).tolist() == dev["subject_id"].astype(str).tolist()
    assert_allclose(z[_REGIONS].to_numpy(float), dev[_REGIONS].to_numpy(float), rtol=1e-9)
    assert z["n_crit"].tolist() == dev["n_crit"].tolist()
    assert main(["normative", "evaluate", str(tmp_path / "adapted"), str(tmp_path / "patients.csv"),
                 "--out", str(tmp_path / "ev.csv"), "-q"]) == 0
    assert pd.read_csv(tmp_path / "ev.csv")["region"].tolist() == _REGIONS
