"""Tests of chunked many-response fitting, concatenation and chunked transform."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from normative import many
from normative.many import concat_models, fit_chunked, response_names, transform_chunked
from normative.model import NormativeModel
from normative.simulate import simulate_controls, true_zscores
from normfuse.errors import ColumnContractError, DataDroppedWarning, OutOfRangeWarning

COV = ["age", "sex", "icv", "site"]
ARRAYS = ["beta_", "gamma_", "eps_", "tau_", "cov_beta_", "cov_gamma_", "y_mean_", "y_sd_",
          "site_prior_sd_", "converged_"]


@pytest.fixture(scope="module")
def sim():
    """600 simulated controls, 12 regions, 4 sites, with the planted truth; held-out rows."""
    ref, truth, _ = simulate_controls(600, 12, n_sites=4, seed=21, return_truth=True)
    test = simulate_controls(300, 12, n_sites=4, seed=22, truth=truth)
    cols = list(truth["regions"])
    return ref, test, truth, cols


@pytest.fixture(scope="module")
def chunked(sim):
    """The 12 regions fitted in chunks of 5 (5 + 5 + 2)."""
    ref, _, _, cols = sim
    return fit_chunked(ref, cols, chunk_size=5)


def test_chunked_fit_matches_single_fit(sim, chunked):
    """Chunks concatenated give the joint fit's Z to optimiser tolerance."""
    ref, test, _, cols = sim
    full = NormativeModel(responses=cols).fit(ref)
    assert chunked.responses_ == cols
    for a in ARRAYS:
        assert getattr(chunked, a).shape == getattr(full, a).shape, a
    # each response runs its own Newton steps and stops its own empirical-Bayes rounds,
    # so its fit does not depend on which others share its batch; what remains is the
    # stopping tolerance (rounding in products of other widths can take a response one
    # Newton step further): about 1e-7 here
    assert_allclose(chunked.beta_, full.beta_, atol=1e-6)
    assert_allclose(chunked.site_prior_sd_, full.site_prior_sd_, rtol=1e-5)
    assert_allclose(chunked.transform(test).to_numpy(), full.transform(test).to_numpy(), atol=1e-6)


def test_chunked_fit_recovers_planted_z(sim, chunked):
    """Held-out Z of the chunked model track the planted deviations (r > 0.95)."""
    _, test, truth, cols = sim
    z = chunked.transform(test).to_numpy()
    zt = true_zscores(test, truth)
    r = [np.corrcoef(z[:, j], zt[:, j])[0, 1] for j in range(len(cols))]
    # 600 controls at 4 sites: site offsets are estimated with noise, hence not ~1
    assert min(r) > 0.95 and np.mean(r) > 0.97
    assert abs(float(z.std()) - 1.0) < 0.08


def test_concat_equals_its_parts(sim, chunked):
    """Each chunk's arrays sit unchanged in the concatenated model, in order."""
    ref, test, _, cols = sim
    parts = [NormativeModel(responses=cols[s:s + 5]).fit(ref) for s in (0, 5, 10)]
    cat = concat_models(parts)
    for a in ARRAYS:
        assert_array_equal(getattr(cat, a), getattr(chunked, a))
    assert_array_equal(cat.transform(test)[cols[5:10]].to_numpy(),
                       parts[1].transform(test).to_numpy())
    assert cat.n_iter_ == max(p.n_iter_ for p in parts)


def test_array_input_equals_column_input(sim, chunked):
    """A numpy (or memmap) response array gives exactly the column-name fit."""
    ref, _, _, cols = sim
    m = fit_chunked(ref[COV], ref[cols].to_numpy(), names=cols, chunk_size=5)
    for a in ARRAYS:
        assert_array_equal(getattr(m, a), getattr(chunked, a))
    unnamed = fit_chunked(ref[COV], ref[cols].to_numpy(), chunk_size=7)
    assert unnamed.responses_ == response_names(12) == [f"r{j:05d}" for j in range(12)]


def test_transform_chunked_equals_transform(sim, chunked, monkeypatch, tmp_path):
    """Row- and response-blocked Z equal model.transform exactly; out= fills a memmap."""
    _, test, _, cols = sim
    want = chunked.transform(test).to_numpy()
    monkeypatch.setattr(many, "_TRANSFORM_BUDGET", 8 * 14 * 5 * 70)   # force ~70-row blocks
    got = transform_chunked(chunked, test[COV], test[cols].to_numpy(), chunk_size=5)
    assert_array_equal(got, want)
    mm = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32,
                                   shape=want.shape)
    transform_chunked(chunked, test[COV], test[cols].to_numpy(), chunk_size=4, out=mm)
    assert_allclose(np.asarray(mm), want, rtol=1e-6, atol=1e-6)


def test_transform_chunked_nan_and_out_of_range(sim, chunked):
    """NaN responses give NaN Z; out-of-range ages warn once for all blocks."""
    _, test, _, cols = sim
    cov = test[COV].copy()
    cov.loc[cov.index[0], "age"] = 120.0
    Y = test[cols].to_numpy().copy()
    Y[3, 7] = np.nan
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Z = transform_chunked(chunked, cov, Y, chunk_size=5)
    assert sum(issubclass(x.category, OutOfRangeWarning) for x in w) == 1
    assert np.isnan(Z[3, 7]) and np.isfinite(np.delete(Z.ravel(), 3 * 12 + 7)).all()


def test_concatenated_model_save_load(sim, chunked, tmp_path):
    """A concatenated model saves and loads (JSON + npz) with identical Z."""
    _, test, _, _ = sim
    chunked.save(tmp_path / "m")
    back = NormativeModel.load(tmp_path / "m")
    assert_array_equal(back.transform(test).to_numpy(), chunked.transform(test).to_numpy())


def test_inputs_not_mutated(sim):
    """fit_chunked leaves the controls frame and the response array untouched."""
    ref, _, _, cols = sim
    before = ref.copy()
    Y = ref[cols].to_numpy()
    Y0 = Y.copy()
    fit_chunked(ref[COV], Y, names=cols, chunk_size=6, likelihood="normal")
    assert ref.equals(before)
    assert_array_equal(Y, Y0)


def test_concat_rejects_different_designs(sim):
    """Chunks fitted on different rows (other knots/age range) cannot be concatenated."""
    ref, _, _, cols = sim
    a = NormativeModel(responses=cols[:2], likelihood="normal").fit(ref)
    b = NormativeModel(responses=cols[2:4], likelihood="normal").fit(ref.iloc[:400])
    with pytest.raises(ValueError, match="different design"):
        concat_models([a, b])
    c = NormativeModel(responses=cols[2:4], likelihood="shash").fit(ref)
    with pytest.raises(ValueError, match=r"parameters \['likelihood'\]"):
        concat_models([a, c])
    with pytest.raises(ValueError, match="more than one model"):
        concat_models([a, a])


def test_fit_chunked_input_errors(sim):
    """Shape, name and chunk-size mistakes raise errors that name the fix."""
    ref, _, _, cols = sim
    Y = ref[cols].to_numpy()
    with pytest.raises(ValueError, match="600 rows"):
        fit_chunked(ref[COV].iloc[:500], Y)
    with pytest.raises(ColumnContractError, match=r"\['age'\]"):
        fit_chunked(ref[COV], Y[:, :2], names=["age", "x"])
    with pytest.raises(ValueError, match="chunk_size=0"):
        fit_chunked(ref[COV], Y, chunk_size=0)
    with pytest.raises(ColumnContractError, match="Missing"):
        fit_chunked(ref[["age", "sex", "site"]], Y)
    bad = ref.copy()
    bad[cols[0]] = bad[cols[0]].astype(object)
    bad.loc[bad.index[4], cols[0]] = "n/a"
    with pytest.raises(ColumnContractError, match=r"'n/a'"):
        fit_chunked(bad, cols, chunk_size=5)


def test_chunks_fitted_side_by_side_equal_one_after_another(sim, monkeypatch):
    """n_jobs=2 fits two chunks at once on threads: the same numbers as n_jobs=1."""
    ref, _, _, cols = sim
    seen = []
    real = many._fit_block

    def spy(*args):
        import threading

        seen.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(many, "_fit_block", spy)
    one = fit_chunked(ref, cols, chunk_size=3, n_jobs=1)
    assert len(set(seen)) == 1
    seen.clear()
    two = fit_chunked(ref, cols, chunk_size=3, n_jobs=2)
    assert len(seen) == 4 and len(set(seen)) == 2          # 4 chunks on 2 worker threads
    for a in ARRAYS:
        assert_array_equal(getattr(two, a), getattr(one, a), err_msg=a)


def test_constant_and_sparse_responses_are_left_out(sim, tmp_path):
    """A medial-wall-like constant column and a sparse one: counted, left out, NaN Z.

    The other responses equal a fit of those columns alone (same chunks: bit for bit);
    predictions, centiles, score, save/load, adaptation and transform_chunked all keep
    the left-out responses NaN.
    """
    ref, test, _, cols = sim
    keep = [0, 2, 3, 5, 6]
    Y = ref[cols[:7]].to_numpy().copy()
    Y[:, 1] = 0.0                       # constant across every control (medial wall)
    Y[9:, 4] = np.nan                   # 9 observed values: too few
    with pytest.warns(DataDroppedWarning, match=r"2 of 7 responses .*'r00001', 'r00004'"):
        nm = fit_chunked(ref[COV], Y, chunk_size=2)
    assert nm.responses_ == response_names(7)
    assert_array_equal(nm.modelled_, [True, False, True, True, False, True, True])
    assert_array_equal(nm.converged_, nm.modelled_)
    alone = fit_chunked(ref[COV], Y[:, keep], names=[nm.responses_[j] for j in keep], chunk_size=2)
    Yt = test[cols[:7]].to_numpy()
    Z = transform_chunked(nm, test[COV], Yt, chunk_size=3)
    assert np.isnan(Z[:, [1, 4]]).all() and np.isfinite(Z[:, keep]).all()
    # the same fits; the transform's blocks differ (chunk_size 3 vs 1000): rounding only
    assert_allclose(Z[:, keep], transform_chunked(alone, test[COV], Yt[:, keep]), atol=1e-12)
    assert_array_equal(nm.beta_[:, keep], alone.beta_)
    frame = test[COV].join(pd.DataFrame(Yt, index=test.index, columns=nm.responses_))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # NaN responses raise no numpy warnings
        mean, sd = nm.predict(frame)
        cen = nm.centiles(frame)
        sc = nm.score(frame)
    assert mean.iloc[:, [1, 4]].isna().all().all() and mean.iloc[:, keep].notna().all().all()
    assert sd.iloc[:, [1, 4]].isna().all().all()
    assert cen[nm.responses_[1]].isna().all().all() and cen[nm.responses_[0]].notna().all().all()
    assert sc.loc[["r00001", "r00004"]].drop(columns="n").isna().all().all()
    assert (sc.loc[["r00001", "r00004"], "n"] == 0).all()
    assert_allclose(sc.iloc[keep].to_numpy(), alone.score(frame).to_numpy())
    nm.save(tmp_path / "m")
    back = NormativeModel.load(tmp_path / "m")
    assert_array_equal(back.modelled_, nm.modelled_)
    assert_array_equal(back.transform(frame).to_numpy(), nm.transform(frame).to_numpy())
    # a new site adapted from 40 controls: the modelled responses are the same as
    # adapting the model of those responses alone
    local = frame.iloc[:40].assign(site="new")
    za = nm.adapt(local).transform(local)
    assert za.iloc[:, [1, 4]].isna().all().all()
    assert_allclose(za.iloc[:, keep].to_numpy(), alone.adapt(local).transform(local).to_numpy(),
                    atol=1e-10)
    # nothing to fit at all
    with pytest.raises(ColumnContractError, match="none of the 2 responses"):
        fit_chunked(ref[COV], Y[:, [1, 4]])


def test_saves_without_the_modelled_array_load_as_all_modelled(sim, chunked):
    """Older saves (no 'modelled' array) load with every response modelled."""
    _, test, _, _ = sim
    meta = {"params": chunked.get_params(), "responses": chunked.responses_,
            "design": chunked.design_.to_dict(), "sites": chunked.sites_,
            "n_reference_sites": chunked.n_reference_sites_, "volume_kind": chunked.volume_kind_,
            "n_iter": chunked.n_iter_}
    arrays = {k[:-1]: np.asarray(getattr(chunked, k)) for k in many._RESPONSE_ARRAYS
              if k not in ("modelled_", "converged_")}
    arrays["converged"] = chunked.converged_
    arrays["site_prior_sd"] = chunked.site_prior_sd_
    old = NormativeModel._from_state(meta, arrays, {})
    assert old.modelled_.all() and old.modelled_.shape == (len(chunked.responses_),)
    assert_array_equal(old.transform(test).to_numpy(), chunked.transform(test).to_numpy())


@pytest.mark.gpu
def test_fit_chunked_cuda_matches_cpu(sim):
    """On a GPU, chunked fits give the CPU Z to float tolerance (skipped without CUDA)."""
    from normfuse.device import cuda_available

    if not cuda_available():
        pytest.skip("needs a CUDA device visible to torch (none here); runs on GPU machines")
    ref, test, _, cols = sim
    cpu = fit_chunked(ref, cols, chunk_size=5)
    gpu = fit_chunked(ref, cols, chunk_size=5, device="cuda")
    assert_allclose(gpu.transform(test).to_numpy(), cpu.transform(test).to_numpy(), atol=1e-6)


def test_engine_response_fit_does_not_depend_on_its_batch():
    """Empirical-Bayes rounds stop per response: a response fitted alone equals its joint fit.

    Three responses whose site-effect variances settle after different numbers of rounds
    (strong, no and weak site effects). Stopping all of them together gave differences of
    3e-4 in the coefficients of the weak one.
    """
    from normative import _engine

    rng = np.random.default_rng(0)
    n, S = 400, 6
    site = rng.integers(0, S, n)
    X = np.c_[np.ones(n), rng.normal(size=n), np.eye(S)[site]]
    lin = 0.5 * X[:, 1]
    Y = np.c_[lin + 0.8 * rng.normal(size=S)[site] + rng.normal(size=n),
              lin + rng.normal(size=n),
              0.3 * rng.normal(size=S)[site] + rng.normal(size=n)]
    args = (np.ones((n, 1)), np.r_[False, False, np.ones(S, bool)], np.zeros(1, bool))
    joint = _engine.fit(np, X, args[0], Y, np.ones_like(Y), args[1], args[2], shape=False, eb_rounds=30)
    for r in range(3):
        alone = _engine.fit(np, X, args[0], Y[:, [r]], np.ones((n, 1)), args[1], args[2], shape=False,
                            eb_rounds=30)
        assert_allclose(alone.beta[:, 0], joint.beta[:, r], atol=1e-6)
        assert_allclose(alone.tau_loc[0], joint.tau_loc[r], rtol=1e-6)
