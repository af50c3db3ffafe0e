"""Dask paths on a loopback LocalCluster give the single-machine results."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from models.evaluate import bootstrap_ci
from models.xgb import XGBClassifierModel
from normative.many import fit_chunked
from normative.simulate import simulate_controls

pytestmark = pytest.mark.slow

ARRAYS = ["beta_", "gamma_", "eps_", "tau_", "cov_beta_", "cov_gamma_", "y_mean_", "y_sd_",
          "site_prior_sd_", "converged_"]


@pytest.fixture(scope="module")
def table():
    """1,500 patients, four features of three modalities, 10 % missing EHR values."""
    rng = np.random.default_rng(7)
    n = 1500
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["dev__a", "dev__b", "ehr__c", "demo__d"])
    X.loc[rng.random(n) < 0.1, "ehr__c"] = np.nan
    X["y"] = ((X["dev__a"] - 0.5 * X["demo__d"] + rng.normal(size=n)) > 0.4).astype(int)
    return X


def test_fit_chunked_on_cluster_equals_local(client):
    """Response chunks fitted on two workers equal the local chunked fit bit for bit."""
    df = simulate_controls(500, 10, n_sites=3, seed=5)
    cols = [c for c in df.columns if c.startswith("region_")]
    local = fit_chunked(df, cols, chunk_size=2)
    # 5 blocks > the 4 kept in flight on two workers: the submission window refills in order
    dist = fit_chunked(df, cols, chunk_size=2, client=client)
    assert dist.responses_ == local.responses_
    for a in ARRAYS:
        assert_array_equal(getattr(dist, a), getattr(local, a))
    assert_array_equal(dist.transform(df).to_numpy(), local.transform(df).to_numpy())


def test_bootstrap_on_cluster_equals_local(client, table):
    """Replicate blocks computed on workers reproduce the seeded local replicates and CI."""
    y = table["y"].to_numpy()
    s = 1.0 / (1.0 + np.exp(-table["dev__a"].to_numpy()))
    local = bootstrap_ci(y, s, n_boot=750, random_state=3)
    dist = bootstrap_ci(y, s, n_boot=750, random_state=3, client=client)
    assert_array_equal(dist.replicates.to_numpy(), local.replicates.to_numpy())
    pd.testing.assert_frame_equal(dist.summary(), local.summary())


def test_xgboost_dask_one_partition_equals_local(client, table):
    """xgboost.dask on one data partition grows the local trees: identical probabilities."""
    import dask.dataframe as dd

    kw = dict(feature_prefixes=("dev__", "ehr__", "demo__"), n_estimators=40,
              early_stopping_rounds=None, device="cpu", n_jobs=1, random_state=0)
    local = XGBClassifierModel(**kw).fit(table, "y")
    dist = XGBClassifierModel(**kw).fit_dask(client, dd.from_pandas(table, npartitions=1), "y")
    assert_array_equal(dist.predict_proba(table), local.predict_proba(table))
    assert dist.scale_pos_weight_ == local.scale_pos_weight_
    assert dist.n_missing_by_modality_ == local.n_missing_by_modality_


def test_xgboost_dask_two_workers_close_to_local(client, table):
    """Data split over two workers (merged sketches) gives nearly the local risks; NaN labels drop."""
    import dask.dataframe as dd

    from models.evaluate import auroc
    from normfuse.errors import DataDroppedWarning

    kw = dict(feature_prefixes=("dev__", "ehr__", "demo__"), n_estimators=40,
              early_stopping_rounds=None, device="cpu", n_jobs=1, random_state=0)
    local = XGBClassifierModel(**kw).fit(table, "y")
    t = table.astype({"y": float})
    t.loc[t.index[:5], "y"] = np.nan
    with pytest.warns(DataDroppedWarning, match="dropped 5 of 1500"):
        dist = XGBClassifierModel(**kw).fit_dask(client, dd.from_pandas(t, npartitions=2), "y")
    pl, pd_ = local.predict_proba(table)[:, 1], dist.predict_proba(table)[:, 1]
    assert np.corrcoef(pl, pd_)[0, 1] > 0.97
    a_l, a_d = auroc(table["y"], pl), auroc(table["y"], pd_)
    assert abs(a_l - a_d) < 0.02
    assert dist.n_train_ == 1495 and dist.n_dropped_ == 5


def test_xgboost_dask_early_stopping_on_eval_table(client, table):
    """An eval_table drives early stopping; the model saves and reloads with equal risks."""
    import tempfile

    kw = dict(feature_prefixes=("dev__", "ehr__", "demo__"), n_estimators=300,
              early_stopping_rounds=5, learning_rate=0.3, device="cpu", n_jobs=1)
    m = XGBClassifierModel(**kw).fit_dask(client, table.iloc[:1200], "y",
                                          eval_table=table.iloc[1200:])
    assert m.n_val_ == 300 and m.n_train_ == 1200
    assert m.best_iteration_ < 299 and m.validation_loss_.size > m.best_iteration_
    assert abs(m.validation_loss_.min() - m.validation_loss_[m.best_iteration_]) < 1e-12
    with tempfile.TemporaryDirectory() as d:
        m.save(f"{d}/m")
        back = XGBClassifierModel.load(f"{d}/m")
    assert_array_equal(back.predict_proba(table), m.predict_proba(table))
