"""PcnBackend: pcntoolkit 1.3 warped BLR behind the normfuse backend interface.

Slow (pcntoolkit's import takes 6-9 s, each BLR fit seconds), so 3 regions only and
one fit shared by the module.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy.stats import norm

from normfuse.errors import ColumnContractError, UnknownSiteError

pytestmark = [pytest.mark.slow, pytest.mark.shared]

REGIONS = ["Left-Thalamus", "Left-Hippocampus", "Brain-Stem"]


@pytest.fixture(scope="module")
def pcn():
    """pcntoolkit, or skip with the reason."""
    return pytest.importorskip(
        "pcntoolkit", reason="pcntoolkit not importable; install with pip install 'normfuse[pcn]'"
    )


@pytest.fixture(scope="module")
def split(controls_dir):
    """The seed-42 benchmark split in the volumes contract."""
    from benchmarks._pcn_reference import load_benchmark_split

    return load_benchmark_split(controls_dir.parent)


@pytest.fixture(scope="module")
def fitted(pcn, split, tmp_path_factory):
    """PcnBackend fitted on the train split (3 regions), with its own workdir."""
    from normative._pcn import PcnBackend

    train, _, _ = split
    workdir = tmp_path_factory.mktemp("pcn_work")
    return PcnBackend(REGIONS, workdir=workdir).fit(train), workdir


def test_split_loader_contract(split):
    """The benchmark split has 754/324 rows, F/M sex and FreeSurfer 7 names."""
    train, test, responses = split
    # PROVENANCE.md: 754 train / 324 test, 18 subcortical regions
    assert (len(train), len(test), len(responses)) == (754, 324, 18)
    assert "Left-Thalamus" in responses and "Left-Thalamus-Proper" not in train.columns
    assert set(train["sex"]) == {"F", "M"}
    assert train.index.name == "subject_id" and not train.index.intersection(test.index).size


def test_test_split_z_calibrated(fitted, split):
    """Held-out test Z are finite and calibrated like pcntoolkit's published run."""
    model, _ = fitted
    _, test, _ = split
    z = model.transform(test)
    assert z.shape == (324, 3) and np.isfinite(z).all()
    # PROVENANCE.md, BLR + SinhArcsinh warp, 18 regions: pooled test Z sd 0.99, |Z|>1.96 4.8 %
    assert 0.9 < z.std(ddof=1) < 1.15
    assert 0.02 < np.mean(np.abs(z) > 1.96) < 0.09


def test_matches_pcntoolkit_own_predictions(fitted, split, pcn):
    """Z and mean equal pcntoolkit's compute_zscores / compute_yhat on the same model."""
    model, _ = fitted
    _, test, _ = split
    sub = test.iloc[:40]
    z = model.transform(sub)
    mean, sd = model.predict(sub)
    from pcntoolkit.util.output import Output

    Output.set_show_messages(False)
    try:
        data = pcn.NormData.from_dataframe(
            "check", sub.reset_index(drop=True), covariates=["age", "icv"],
            batch_effects=["sex", "site"], response_vars=REGIONS,
        )
        nm = model.model_
        nm.compute_zscores(data)
        nm.compute_yhat(data)
    finally:
        Output.set_show_messages(True)
    for j, r in enumerate(REGIONS):
        assert_allclose(z[:, j], data["Z"].sel(response_vars=r).values, rtol=1e-10, atol=1e-10)
        assert_allclose(mean[:, j], data["Yhat"].sel(response_vars=r).values, rtol=1e-10)
    assert (sd > 0).all() and np.isfinite(sd).all()


def test_centiles_invert_z(fitted, split):
    """The centile at q = Phi(Z) of each subject reproduces the observed volume."""
    model, _ = fitted
    _, test, _ = split
    sub = test.iloc[:5]
    z = model.transform(sub)
    for i in range(len(sub)):
        c = model.centiles(sub.iloc[[i]], norm.cdf(z[i]))  # (R quantiles, 1 row, R regions)
        assert_allclose(np.diag(c[:, 0, :]), sub[REGIONS].to_numpy()[i], rtol=1e-8)
    q = model.centiles(sub, [0.05, 0.5, 0.95])
    assert q.shape == (3, 5, 3) and (np.diff(q, axis=0) > 0).all()


def test_no_files_left_and_input_unchanged(fitted, split, tmp_path, monkeypatch):
    """Predicting leaves no files in cwd or the workdir and does not mutate the input."""
    model, workdir = fitted
    _, test, _ = split
    monkeypatch.chdir(tmp_path)
    before = test.copy()
    model.predict(test.iloc[:10])
    model.transform(test.iloc[:10])
    pd.testing.assert_frame_equal(test, before)
    assert list(tmp_path.iterdir()) == [] and list(workdir.iterdir()) == []


def test_transfer_recentres_adaptation_cells(fitted, split):
    """After transfer, Z of the adaptation controls have mean 0, sd 1 in every cell."""
    model, _ = fitted
    _, test, _ = split
    adapt = test[test["site"].isin(["Oulu", "Milwaukee_b"])]
    new = model.transfer(adapt)
    z = new.transform(adapt)
    # BLR.transfer shifts by the cell's mean warped residual and scales the predictive sd
    # by (residual sd, ddof=0) / mean(predictive sd): exact up to the small spread of the
    # posterior part of each subject's predictive sd
    for _, idx in adapt.groupby(["sex", "site"]).indices.items():
        assert_allclose(z[idx].mean(axis=0), 0.0, atol=5e-3)
        assert_allclose(z[idx].std(axis=0), 1.0, rtol=1e-2)
    mean, sd = new.predict(adapt)
    assert np.isfinite(mean).all() and (sd > 0).all()
    with pytest.raises(UnknownSiteError, match="Beijing_Zang"):
        new.transform(test[test["site"] == "Beijing_Zang"])
    assert model.cells_ is None  # the reference model is unchanged


def test_errors_name_the_problem(fitted, split):
    """Unknown sites, 0/1 sex codes and missing columns raise with the fix."""
    model, _ = fitted
    _, test, _ = split
    with pytest.raises(UnknownSiteError, match=r"\['Nowhere'\].*transfer"):
        model.transform(test.iloc[:3].assign(site="Nowhere"))
    with pytest.raises(ColumnContractError, match="'sex' must hold 'F' or 'M'"):
        model.transform(test.iloc[:3].assign(sex=[0, 1, 0]))
    with pytest.raises(ColumnContractError, match=r"Missing: \['icv'\]"):
        model.predict(test.drop(columns="icv"))
