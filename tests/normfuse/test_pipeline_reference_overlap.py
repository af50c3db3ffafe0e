"""Pipeline: matched controls are never taken from the normative reference fit."""
from __future__ import annotations

import copy
import logging
import warnings

import pandas as pd
import pytest

from normfuse.errors import ColumnContractError

_REGIONS = ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus", "Right-Hippocampus",
            "Left-Putamen", "Right-Putamen"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_study):
    """A small simulated cohort written in the real formats, its demo config and a clean run."""
    from normfuse.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("overlap")
    cfg = small_study(root, _REGIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(cfg, root / "clean", quiet=True, stages=["analyses"])
    return root, cfg, res


def _overlapping(cfg):
    """The config with the matching pool pointed at the reference tables."""
    bad = copy.deepcopy(cfg)
    bad["controls"]["tables"] = list(cfg["reference"]["tables"])
    bad["controls"]["demographics"] = cfg["reference"]["demographics"]
    return bad


def test_clean_run_records_reference_fit_ids(study):
    """The fitted scans' ids are written; no matched control is among them; held-out ones are not."""
    root, cfg, res = study
    ids = res.tables["reference_fit_ids"]
    assert list(ids.columns) == ["subject_id", "session_id", "site"]
    ref = res.tables["volumes_reference"]
    fitted = ref.loc[~ref["site"].astype(str).isin(cfg["reference"]["exclude_sites"])]
    # holdout_fraction 0.2 of the non-excluded reference scans is not in the fit
    assert 0 < len(ids) < len(fitted) and set(ids["subject_id"]) < set(fitted["subject_id"].astype(str))
    assert not set(res.results["matching"].pairs["control_id"].astype(str)) & set(ids["subject_id"])
    back = pd.read_parquet(root / "clean" / "tables" / "reference_fit_ids.parquet")
    assert back["subject_id"].tolist() == ids["subject_id"].tolist()


def test_pipeline_refuses_controls_from_the_reference_fit(study):
    """[controls] tables = [reference] tables: the run stops at normative, naming ids and keys."""
    from normfuse.pipeline import run_pipeline

    root, cfg, res = study
    ids = sorted(res.tables["reference_fit_ids"]["subject_id"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ColumnContractError) as exc:
            run_pipeline(_overlapping(cfg), root / "bad", quiet=True, stages=["analyses"])
    msg = str(exc.value)
    assert msg.startswith(f"[normative] {len(ids)} matching controls ([controls] tables) were "
                          "used to fit the normative reference model ([reference] tables): "
                          + ", ".join(ids[:10]))
    assert "[controls] where" in msg and "[reference] where" in msg


def test_analyses_stage_refuses_overlap_itself(study):
    """The analyses stage re-checks the recorded ids before matching (resumed or edited runs)."""
    from normfuse._stages_analyses import stage_analyses

    root, cfg, res = study
    tables = dict(res.tables)
    ctrl_ids = sorted(tables["deviations_controls"]["subject_id"].astype(str).unique())
    tables["reference_fit_ids"] = pd.concat(
        [tables["reference_fit_ids"], pd.DataFrame({"subject_id": ctrl_ids[:2]})], ignore_index=True)
    with pytest.raises(ColumnContractError, match=rf"^\[analyses\] 2 matching controls.*"
                                                  rf"{ctrl_ids[0]}, {ctrl_ids[1]}"):
        stage_analyses(cfg, {"tables": tables, "results": {}})


def test_loaded_reference_model_logs_that_overlap_is_unchecked(study, caplog):
    """With [reference] model (no ids recorded) the run goes on and says once that nothing was checked."""
    from normfuse.pipeline import run_pipeline

    root, cfg, res = study
    loaded = _overlapping(cfg)
    loaded["reference"].update(tables=[], demographics="", exclude_sites=[],
                               model=str(root / "clean" / "models" / "normative"))
    loaded["adaptation"].update(tables=[], demographics="")   # the saved model is adapted already
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="normfuse"):
        warnings.simplefilter("ignore")
        out = run_pipeline(loaded, root / "loaded", quiet=True, stages=["analyses"])
    assert "reference_fit_ids" not in out.tables and "matching" in out.results
    hits = [r for r in caplog.records if "records no subject ids" in r.getMessage()]
    assert len(hits) == 1 and "[controls] tables" in hits[0].getMessage()
