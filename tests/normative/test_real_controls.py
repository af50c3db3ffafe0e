"""The native engine on real healthy controls (fcon1000, ../shared/data/controls).

Targets are issue 3's, measured against pcntoolkit 1.3 on the same seed-42 split
(PROVENANCE.md: warped BLR mean EXPV 0.432, MSLL -0.283, test Z sd 0.99).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from normative.metrics import z_calibration
from normative.model import NormativeModel

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def split(shared_data):
    """The seed-42 benchmark split in the volumes contract (train, test, 18 regions)."""
    from benchmarks._pcn_reference import load_benchmark_split

    return load_benchmark_split(shared_data)


@pytest.fixture(scope="module")
def native(split):
    """The default native model fitted on the 754 training controls."""
    train, _, regions = split
    return NormativeModel(regions).fit(train)


def test_heldout_quality_beats_pcntoolkit(split, native):
    """Mean EXPV >= 0.43, mean MSLL <= -0.283, pooled held-out Z sd within 1 +- 0.05."""
    _, test, _ = split
    sc = native.score(test)
    assert sc["expv"].mean() >= 0.43          # pcntoolkit warped BLR: 0.432
    assert sc["msll"].mean() <= -0.283        # pcntoolkit warped BLR: -0.283
    c = z_calibration(native.transform(test).to_numpy())
    assert abs(c["z_sd"] - 1.0) <= 0.05
    assert c["z_exkurt"] <= 0.5
    # The seed-42 test split holds subjects deviating in many regions at once (15 of 324
    # with >= 5 critical regions; 8 of the 754 training controls, in-sample). Its tail
    # fraction is 6.2 % (target 4.5-5.5 %): 6.0 % out of fold in cross-validation, 5.8 %
    # for pcntoolkit's warped BLR fitted to convergence (RESULTS.md), and only a few
    # other draws of the same split procedure reach it (test_calibration_over_resplits).
    assert c["frac_abs_z_gt"] < 0.07


def test_resplit_seed42_is_the_benchmark_split(split, shared_data):
    """The shipped split is train_test_split(test_size=0.3, stratify=sex+site, random_state=42)."""
    from benchmarks._pcn_reference import load_resplit

    train, test, _ = split
    tr42, te42 = load_resplit(shared_data, 42)
    assert tr42.index.equals(train.index) and te42.index.equals(test.index)
    tr0, te0 = load_resplit(shared_data, 0)
    assert len(te0) == 324 and not te0.index.equals(test.index)
    assert tr0.index.intersection(te0.index).empty


def test_calibration_over_resplits(split, native, shared_data):
    """Other draws of the benchmark split's procedure: mean |Z|>1.96 in 4.5-5.5 %, sd 1 +- 0.05.

    Seed 42's test set is an unlucky draw: few other seeds reach its tail fraction
    (200 seeds in RESULTS.md: 5.1 % mean, 0.5 points sd, 2 % of splits >= seed 42).
    """
    from benchmarks._pcn_reference import load_resplit

    _, test, regions = split
    fr, sd = [], []
    for seed in range(30):
        tr, te = load_resplit(shared_data, seed)
        z = NormativeModel(regions).fit(tr).transform(te)[regions].to_numpy()
        fr.append(np.mean(np.abs(z) > 1.96))
        sd.append(z.std())
    fr = np.array(fr)
    assert 0.045 <= fr.mean() <= 0.055
    assert abs(np.mean(sd) - 1.0) <= 0.05
    z42 = native.transform(test)[regions].to_numpy()
    assert np.mean(fr >= np.mean(np.abs(z42) > 1.96)) <= 0.10


def test_cross_validated_calibration(split):
    """5-fold CV over all 1078 controls: out-of-fold Z sd 1 +- 0.05, |Z|>1.96 in 4.5-5.5 %, ex. kurtosis <= 0.5."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    train, test, regions = split
    d = pd.concat([train, test])
    strat = d["site"].astype(str) + d["sex"].astype(str)
    strat = strat.where(strat.map(strat.value_counts()) >= 5, "rare")
    z = np.zeros((len(d), len(regions)))
    for a, b in StratifiedKFold(5, shuffle=True, random_state=0).split(d, strat):
        z[b] = NormativeModel(regions).fit(d.iloc[a]).transform(d.iloc[b]).to_numpy()
    c = z_calibration(z)
    assert abs(c["z_sd"] - 1.0) <= 0.05
    assert 0.045 <= c["frac_abs_z_gt"] <= 0.055
    assert c["z_exkurt"] <= 0.5


@pytest.mark.parametrize("k", [5, 10, 20])
def test_site_transfer_calibrated(shared_data, k):
    """Oulu and Milwaukee_b adapted from k controls per site x sex: |Z|>1.96 in 4-6 %, sd 1 +- 0.1 (mean of 5 draws)."""
    from benchmarks._pcn_reference import RESPONSES, load_transfer_split

    ref, _, _ = load_transfer_split(shared_data, k, 0)
    nm = NormativeModel(RESPONSES).fit(ref)
    fr, sd = [], []
    for seed in range(5):
        _, ad, ev = load_transfer_split(shared_data, k, seed)
        z = nm.adapt(ad).transform(ev).to_numpy()
        fr.append(np.mean(np.abs(z) > 1.96))
        sd.append(z.std(ddof=1))
    # pcntoolkit's warped BLR (PROVENANCE): k=5 13.8 %, k=10 8.9 %, k=20 4.7 %
    assert 0.04 <= np.mean(fr) <= 0.06
    assert abs(np.mean(sd) - 1.0) <= 0.10


def test_unknown_site_without_adaptation_is_refused(shared_data):
    """COBRE's site is not in fcon1000: transform refuses and points to adapt()."""
    from benchmarks._pcn_reference import RESPONSES, load_benchmark_split
    from normfuse.errors import UnknownSiteError

    train, _, _ = load_benchmark_split(shared_data)
    nm = NormativeModel(RESPONSES[:2]).fit(train)
    new = train.iloc[:3].assign(site="COBRE")
    with pytest.raises(UnknownSiteError, match="adapt"):
        nm.transform(new)


@pytest.mark.slow
def test_native_and_pcntoolkit_agree(split, native):
    """Native Z correlate >= 0.98 per region with pcntoolkit's warped BLR fitted to convergence.

    pcntoolkit's default optimiser (L-BFGS-B on the marginal likelihood plus an L2 penalty
    of 0.1 on the log hyperparameters, finite-difference step 0.1) stops short of the
    optimum in several regions; its own ``optimizer="powell"`` converges. Against the
    converged fit every region agrees (measured min 0.981, 3rd ventricle; median 0.993);
    against the default fit the agreement is lower where that fit is visibly worse on
    the training data itself (left hippocampus 0.93).
    """
    pytest.importorskip("pcntoolkit")
    from benchmarks._pcn_reference import run_pcn_benchmark

    train, test, regions = split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # both backends through the public class: NormativeModel(backend="pcntoolkit")
        pw = NormativeModel(regions, backend="pcntoolkit",
                            backend_options={"optimizer": "powell"}).fit(train)
        st = run_pcn_benchmark(train, test, regions)
    zn = native.transform(test).to_numpy()
    zp = pw.transform(test).to_numpy()
    corr = np.array([np.corrcoef(zn[:, j], zp[:, j])[0, 1] for j in range(len(regions))])
    assert corr.min() >= 0.98, dict(zip(regions, corr.round(4), strict=True))
    # the converged fit is the better fit of pcntoolkit's own model: higher training
    # log-likelihood (mean over regions; measured +0.05 nats per value, +0.11 in the
    # left hippocampus) and no region worse beyond optimiser tolerance
    tr_pw = pw.logpdf(train).to_numpy().mean(0)
    tr_st = st["model"].logpdf(train).mean(0)
    assert (tr_pw - tr_st).mean() > 0.02 and (tr_pw - tr_st).min() > -0.005
    # the native model predicts the held-out volumes at least as well as the stock fit
    assert native.logpdf(test).to_numpy().mean() > st["logp"].mean()


@pytest.mark.slow
def test_pcntoolkit_backend_through_the_public_class(split):
    """NormativeModel(backend="pcntoolkit") fits, scores and counts deviations like the native one."""
    pytest.importorskip("pcntoolkit")
    train, test, regions = split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nm = NormativeModel(regions[:2], backend="pcntoolkit").fit(train)
        sc = nm.score(test)
        dev = nm.deviations(test)
        cen = nm.centiles(test.iloc[:3], q=(0.1, 0.5, 0.9))
    assert sc["expv"].between(0.2, 0.8).all() and (sc["z_sd"] - 1).abs().max() < 0.15
    # log densities per original unit: finite, and higher at the predicted mean than 2 sd away
    mean, sd = nm.predict(test.iloc[:5])
    at = test.iloc[:5].copy()
    at[regions[:2]] = mean.to_numpy()
    off = at.copy()
    off[regions[:2]] = (mean + 2 * sd).to_numpy()
    lp_at, lp_off = nm.logpdf(at).to_numpy(), nm.logpdf(off).to_numpy()
    assert np.isfinite(lp_at).all() and (lp_at > lp_off + 1.0).all()
    assert {"n_crit", "age_out_of_range"} <= set(dev.columns) and len(dev) == len(test)
    lo, mid, hi = (cen.xs(q, axis=1, level="q").to_numpy() for q in (0.1, 0.5, 0.9))
    assert (lo < mid).all() and (mid < hi).all()
