"""compare_models run in worker processes (n_jobs) and on a Dask cluster (client=).

Reference: the sequential path (``n_jobs=1``) on the same table and seeds. Every path runs
the same per-(repeat, fold) job (models._compare_jobs.run_fold) with BLAS and torch held
to one thread, so XGBoost and the logistic model give identical out-of-fold risks; the
fusion networks did too in every run here (largest difference 0.0), asserted to 1e-6.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from models import _compare_jobs as J
from models.compare import compare_models
from normfuse.errors import ConvergenceWarning

XGB = {"n_estimators": 40, "learning_rate": 0.15}
FUSION = {"epochs": 6, "embed_dim": 8, "patience": 3, "batch_size": 64}
MODELS = ("dev_count_logistic", "dev_xgb", "all_xgb", "fusion_concat", "fusion_late")
FUSION_TOL = 1e-6  # observed: 0.0 (bit-identical) between all three paths


def _run(tab, **kw):
    args = dict(models=MODELS, ablations=("all_xgb",), n_splits=3, n_repeats=2, device="cpu",
                xgb_params=XGB, fusion_params=FUSION)
    args.update(kw)
    return compare_models(tab, "y", **args)


@pytest.fixture(scope="module")
def sequential(small):
    """The reference: every (repeat, fold) job in this process, one after another."""
    return _run(small)


def _assert_same(res, ref):
    o, r = res.oof_predictions, ref.oof_predictions
    fusion = o["model"].str.startswith("fusion").to_numpy()
    pd.testing.assert_frame_equal(o.drop(columns="p"), r.drop(columns="p"))
    assert_array_equal(o["p"].to_numpy()[~fusion], r["p"].to_numpy()[~fusion])  # XGBoost, logistic
    assert_allclose(o["p"].to_numpy()[fusion], r["p"].to_numpy()[fusion], rtol=0, atol=FUSION_TOL)
    num = res.table.select_dtypes("number").columns.drop("fit_seconds")
    assert_allclose(res.table[num].to_numpy(float), ref.table[num].to_numpy(float), rtol=0, atol=FUSION_TOL)
    pd.testing.assert_frame_equal(res.shap, ref.shap)
    pd.testing.assert_frame_equal(res.weights, ref.weights, check_exact=False, rtol=0, atol=FUSION_TOL)
    pd.testing.assert_frame_equal(res.folds, ref.folds)
    assert (res.table["fit_seconds"] > 0).all()


def test_n_jobs_two_equals_sequential(small, sequential):
    """Two worker processes give the sequential out-of-fold risks, table, SHAP and weights."""
    res = _run(small, n_jobs=2)
    _assert_same(res, sequential)
    assert res.settings["execution"] == "processes" and res.settings["n_workers"] == 2
    assert sequential.settings["execution"] == "sequential" and sequential.settings["n_jobs"] == 1
    assert not sequential.weights.empty and not sequential.shap.empty


@pytest.mark.slow
def test_dask_client_equals_sequential(small, sequential, client):
    """A two-worker Dask cluster (table scattered once) reproduces the sequential result."""
    res = _run(small, client=client)
    _assert_same(res, sequential)
    assert res.settings["execution"] == "dask" and res.settings["client"] is True


def test_client_with_n_jobs_is_an_error(small):
    """client= together with n_jobs > 1 names both and the fix, before any fit."""
    with pytest.raises(ValueError, match=r"client= and n_jobs=2 were both given"):
        compare_models(small, "y", models=("dev_count_logistic",), client=object(), n_jobs=2)


@pytest.mark.parametrize("bad", [0, 1.5, True, "2"])
def test_bad_n_jobs_is_an_error(small, bad):
    """n_jobs must be a non-zero integer or None (sklearn's convention)."""
    with pytest.raises(ValueError, match=r"n_jobs=.*expected a non-zero integer"):
        compare_models(small, "y", models=("dev_count_logistic",), n_jobs=bad)


def test_effective_n_jobs_follows_sklearn(monkeypatch):
    """None -> 1, k -> k, -1 -> all cores, -2 -> all but one (never below 1)."""
    import joblib

    monkeypatch.setattr(joblib, "cpu_count", lambda: 8)
    got = [J.effective_n_jobs(v, "t") for v in (None, 3, -1, -2, -20)]
    assert got == [1, 3, 8, 7, 1]


def test_cuda_jobs_run_one_after_another(caplog):
    """On a CUDA device several workers would each open a CUDA context: one job at a time, noted."""
    with caplog.at_level(logging.INFO, logger="normfuse.models.compare"):
        assert J.plan_workers(4, 10, "cuda", "compare_models") == 1
        assert J.plan_workers(4, 10, "cuda:1", "compare_models") == 1
    assert "run one after another on the GPU" in caplog.text
    assert J.plan_workers(4, 10, "cpu", "compare_models") == 4
    assert J.plan_workers(16, 3, "cpu", "compare_models") == 3  # never more workers than jobs


def _hooks(tab):
    """Hooks that spoil exactly the second (repeat, fold): a warning and an error inside a job."""
    ys = tab["y"]
    calls = []

    def separate(tr, te):  # perfectly separating count in fold 1's training rows
        calls.append(1)
        if len(calls) % 3 == 2:
            tr = tr.assign(**{"dev__n_crit": ys.loc[tr.index].to_numpy() * 10.0})
        return tr, te

    def no_modality(tr, te):  # one fold-1 test patient with no feature at all
        calls.append(1)
        if len(calls) % 3 == 2:
            te = te.copy()
            te.loc[te.index[0], [c for c in te.columns if "__" in c]] = np.nan
        return tr, te

    return separate, no_modality


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_worker_warnings_reach_the_caller_once(small, n_jobs):
    """A ConvergenceWarning raised inside a job is re-emitted in the caller, once, on both paths."""
    separate, _ = _hooks(small)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare_models(small, "y", models=("dev_count_logistic",), ablations=False, n_splits=3,
                       n_repeats=1, device="cpu", preprocessors=separate, n_jobs=n_jobs)
    conv = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(conv) == 1
    assert str(conv[0].message).startswith("compare_models [dev_count_logistic]: the logistic "
                                           "regression did not converge")
    assert conv[0].filename == __file__  # points at the caller, not at a worker


def test_worker_error_has_the_sequential_message(small):
    """An error inside a worker reaches the caller with the sequential type, message, repeat and fold."""
    msgs = []
    for n_jobs in (1, 2):
        _, no_modality = _hooks(small)
        with pytest.raises(ValueError, match=r"\[repeat 0, fold 1, model fusion_concat\]") as exc:
            compare_models(small, "y", models=("dev_count_logistic", "fusion_concat"), ablations=False,
                           n_splits=3, n_repeats=1, device="cpu", preprocessors=no_modality,
                           fusion_params={"epochs": 2}, n_jobs=n_jobs)
        msgs.append((type(exc.value), str(exc.value)))
    assert msgs[0] == msgs[1]
    assert "FusionData: 1 patients have no modality at all" in msgs[0][1]


def test_worker_log_records_reach_the_main_process(small, caplog):
    """INFO records logged inside worker processes are replayed in the caller's loggers."""
    t = small.copy()
    t.loc[t.index[:5], "dev__n_crit"] = np.nan  # imputed in every fold: logged by each job
    with caplog.at_level(logging.INFO, logger="normfuse"):
        compare_models(t, "y", models=("dev_count_logistic",), ablations=False, n_splits=3,
                       n_repeats=1, device="cpu", n_jobs=2)
    recs = [r for r in caplog.records if "imputed" in r.getMessage()]
    assert len(recs) == 3 and all(r.name == "normfuse.models.compare" for r in recs)
