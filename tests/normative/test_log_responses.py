"""Responses modelled on the log scale (``NormativeModel(log_responses=...)``)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from normative import _shash
from normative.model import NormativeModel
from normative.simulate import simulate_controls
from normfuse.errors import ColumnContractError, SchemaError

REGIONS = ["Left-Lateral-Ventricle", "Left-Thalamus"]
pytestmark = pytest.mark.filterwarnings("ignore::normfuse.errors.OutOfRangeWarning")


def _multiplicative(n, seed, site_offsets=(-0.5, -0.2, 0.0, 0.25, 0.6), sd=0.3):
    """Ventricle-like volumes: log y = f(age) + 0.8 log(icv) + site offset + sd * N(0, 1)."""
    rng = np.random.default_rng(seed)
    S = len(site_offsets)
    site = rng.integers(0, S, n)
    age = rng.uniform(20, 80, n)
    male = rng.random(n) < 0.5
    icv = rng.normal(1.45e6, 1.1e5, n)
    z = rng.standard_normal(n)
    logy = (np.log(8000.0) + 0.02 * (age - 40) + 2e-4 * (age - 40) ** 2 + 0.05 * male
            + 0.8 * np.log(icv / 1.45e6) + np.asarray(site_offsets)[site] + sd * z)
    thal = 7500 + 4e-3 * (icv - 1.45e6) - 15 * (age - 40) + 350 * rng.standard_normal(n)
    df = pd.DataFrame({"age": age, "sex": np.where(male, "M", "F"),
                       "site": np.array([f"s{k}" for k in site], dtype=object), "icv": icv,
                       "Left-Lateral-Ventricle": np.exp(logy), "Left-Thalamus": thal},
                      index=pd.Index([f"sub-{seed}-{i:05d}" for i in range(n)], name="subject_id"))
    return df, z


@pytest.fixture(scope="module")
def planted():
    """Reference and held-out controls with multiplicative (log-scale) structure in the ventricle."""
    ref, _ = _multiplicative(3000, 1)
    test, z = _multiplicative(2000, 2)
    return ref, test, z


def test_log_model_equals_raw_model_fitted_on_log_values(planted):
    """log_responses=[r] gives the Z of a plain model fitted on log(r); logpdf differs by the Jacobian -log(y); centiles by exp."""
    ref, test, _ = planted
    r = "Left-Lateral-Ventricle"
    a = NormativeModel([r], log_responses=[r]).fit(ref)
    b = NormativeModel([r], log_responses=None).fit(ref.assign(**{r: np.log(ref[r])}))
    tl = test.assign(**{r: np.log(test[r])})
    assert a.log_responses_ == [r] and b.log_responses_ == []
    assert NormativeModel([r], log_responses=np.array([r])).fit(ref).log_responses_ == [r]
    assert_allclose(a.transform(test).to_numpy(), b.transform(tl).to_numpy(), rtol=0, atol=1e-10)
    assert_allclose(a.logpdf(test).to_numpy(), b.logpdf(tl).to_numpy() - np.log(test[[r]].to_numpy()),
                    rtol=0, atol=1e-10)
    q = (0.05, 0.5, 0.95)
    assert_allclose(a.centiles(test.iloc[:20], q).to_numpy(),
                    np.exp(b.centiles(tl.iloc[:20], q).to_numpy()), rtol=1e-12)


def test_planted_multiplicative_structure_is_recovered(planted):
    """Multiplicative site offsets: the log model's Z track the planted Z and are calibrated at every site; the raw model's are not."""
    ref, test, z_true = planted
    r = "Left-Lateral-Ventricle"
    zl = NormativeModel([r], log_responses=[r]).fit(ref).transform(test)[r].to_numpy()
    zr = NormativeModel([r], log_responses=None).fit(ref).transform(test)[r].to_numpy()
    assert np.corrcoef(zl, z_true)[0, 1] > 0.995
    sd_log = pd.Series(zl).groupby(test["site"].to_numpy()).std()
    sd_raw = pd.Series(zr).groupby(test["site"].to_numpy()).std()
    assert sd_log.between(0.9, 1.1).all()
    # on the raw scale the spread is proportional to the site's mean: the smallest site is
    # over-wide and the largest under-wide when a single (site-free) scale is fitted
    assert sd_raw["s0"] < 0.85 and sd_raw["s4"] > 1.15
    ll_l = NormativeModel([r], log_responses=[r]).fit(ref).logpdf(test)[r].mean()
    ll_r = NormativeModel([r], log_responses=None).fit(ref).logpdf(test)[r].mean()
    assert ll_l > ll_r + 0.05


def test_predict_gives_original_unit_moments(planted):
    """predict() of a log response equals E[y] and sd[y] integrated numerically from the model's density."""
    from scipy import integrate

    ref, test, _ = planted
    r = "Left-Lateral-Ventricle"
    nm = NormativeModel([r], log_responses=[r]).fit(ref)
    mean, sd = nm.predict(test.iloc[:4])
    mu, sigma, eps, delta, _ = nm._params(test.iloc[:4], "t")
    for i in range(4):
        def dens(x, i=i):        # density of X = log y, times e^{k x}
            return np.exp(_shash.logpdf(np, x, mu[i, 0], np.log(sigma[i, 0]), eps[0, 0], np.log(delta[0, 0])))
        lo, hi = mu[i, 0] - 15 * sigma[i, 0], mu[i, 0] + 15 * sigma[i, 0]
        m1 = integrate.quad(lambda x: np.exp(x) * dens(x), lo, hi, epsabs=0, epsrel=1e-11, limit=200)[0]
        m2 = integrate.quad(lambda x: np.exp(2 * x) * dens(x), lo, hi, epsabs=0, epsrel=1e-11, limit=200)[0]
        assert mean[r].iloc[i] == pytest.approx(m1, rel=1e-7)
        assert sd[r].iloc[i] == pytest.approx(np.sqrt(m2 - m1 * m1), rel=1e-6)
    # and the thalamus (original scale) is untouched by the quadrature
    nm2 = NormativeModel(REGIONS).fit(ref)
    assert nm2.log_responses_ == ["Left-Lateral-Ventricle"]
    m_raw, _ = NormativeModel(["Left-Thalamus"]).fit(ref).predict(test.iloc[:4])
    assert_allclose(nm2.predict(test.iloc[:4])[0]["Left-Thalamus"], m_raw["Left-Thalamus"], rtol=1e-12)


def test_csf_default_picks_ventricles_and_keeps_zero_columns_raw(caplog):
    """log_responses='csf' selects CSF spaces by FreeSurfer name; a CSF column holding zeros stays raw and is logged."""
    cols = ["Left-Lateral-Ventricle", "Left-Inf-Lat-Vent", "3rd-Ventricle", "4th-Ventricle",
            "5th-Ventricle", "CSF", "Left-Thalamus", "Left-VentralDC", "Left-choroid-plexus"]
    df = simulate_controls(400, cols, n_sites=3, seed=4)
    df["5th-Ventricle"] = np.where(np.arange(len(df)) % 3 == 0, 0.0, np.abs(df["5th-Ventricle"]))
    with caplog.at_level(logging.INFO, logger="normfuse.normative"):
        nm = NormativeModel(cols, likelihood="normal").fit(df)
    assert nm.log_responses_ == ["Left-Lateral-Ventricle", "Left-Inf-Lat-Vent", "3rd-Ventricle",
                                 "4th-Ventricle", "CSF"]
    assert "5th-Ventricle" in caplog.text and "original scale" in caplog.text
    assert NormativeModel(cols, likelihood="normal", log_responses=None).fit(df).log_responses_ == []


def test_bad_log_input_is_refused(planted):
    """Non-positive values, unknown names, a bad option and a pcntoolkit backend give clear errors."""
    ref, test, _ = planted
    r = "Left-Lateral-Ventricle"
    bad = ref.copy()
    bad.loc[bad.index[7], "Left-Thalamus"] = -1.0
    with pytest.raises(ColumnContractError, match=r"'Left-Thalamus'.*-1\.0.*sub-1-00007"):
        NormativeModel(REGIONS, log_responses="all").fit(bad)
    with pytest.raises(ValueError, match="Left-Ventricle"):
        NormativeModel(REGIONS, log_responses=["Left-Ventricle"]).fit(ref)
    with pytest.raises(ValueError, match="'csf', 'all', None"):
        NormativeModel(REGIONS, log_responses="ventricles").fit(ref)
    with pytest.raises(ValueError, match="native backend only"):
        NormativeModel(REGIONS, log_responses=[r], backend="pcntoolkit").fit(ref)
    nm = NormativeModel(REGIONS).fit(ref)
    zero = test.iloc[:5].copy()
    zero.loc[zero.index[2], r] = 0.0
    with pytest.raises(ColumnContractError, match=r"Left-Lateral-Ventricle.*0\.0.*sub-2-00002.*NaN"):
        nm.transform(zero)
    zero.loc[zero.index[2], r] = np.nan          # missing stays missing
    assert np.isnan(nm.transform(zero)[r].iloc[2]) and np.isfinite(nm.transform(zero)[r].iloc[0])


def test_save_load_and_adapt_keep_the_log_scale(planted, tmp_path):
    """A saved model reloads with its log responses; adapting a new site works on the log scale too."""
    ref, test, _ = planted
    r = "Left-Lateral-Ventricle"
    nm = NormativeModel(REGIONS).fit(ref[ref.site != "s4"])
    nm.save(tmp_path / "m")
    back = NormativeModel.load(tmp_path / "m")
    t = test[test.site != "s4"]
    assert back.log_responses_ == [r]
    assert_allclose(back.transform(t).to_numpy(), nm.transform(t).to_numpy(), rtol=0, atol=0)
    # site s4 (offset +0.6 on the log scale) adapted from 40 controls: the log-scale offset is
    # learned, so the held-out s4 controls are calibrated
    new = test[test.site == "s4"]
    ad = nm.adapt(new.iloc[:40]).transform(new.iloc[40:])[r].to_numpy()
    assert abs(ad.mean()) < 0.2 and 0.85 < ad.std() < 1.15
    # a file whose schema predates log_responses is refused with a clear message
    import json

    hdr = json.loads((tmp_path / "m" / "model.json").read_text())
    hdr["schema"] = 1
    (tmp_path / "m" / "model.json").write_text(json.dumps(hdr))
    with pytest.raises(SchemaError, match="schema version 1"):
        NormativeModel.load(tmp_path / "m")


def test_fit_chunked_with_a_log_list_equals_one_fit(planted):
    """fit_chunked passes an explicit log_responses list to every chunk; the result equals one joint fit."""
    from normative.many import fit_chunked

    ref, test, _ = planted
    kw = {"likelihood": "normal", "log_responses": ["Left-Lateral-Ventricle"]}
    one = NormativeModel(REGIONS, **kw).fit(ref)
    ch = fit_chunked(ref, REGIONS, chunk_size=1, **kw)
    assert ch.log_responses_ == ["Left-Lateral-Ventricle"]
    assert_allclose(ch.transform(test).to_numpy(), one.transform(test).to_numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="not among the responses"):
        fit_chunked(ref, REGIONS, chunk_size=1, likelihood="normal", log_responses=["CSF"])
