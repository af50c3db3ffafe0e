"""Tests of models.xgb.XGBClassifierModel: planted signal, SHAP additivity, persistence, bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from models.evaluate import auroc
from models.xgb import XGBClassifierModel, cross_val_risk, grouped_folds, inner_split
from normfuse import persist
from normfuse.contracts import milestone_label
from normfuse.device import cuda_available
from normfuse.errors import ColumnContractError, DataDroppedWarning, NotFittedError, SchemaError

LABEL = milestone_label(4, 3)  # "y_edss4_3y"
FAST = dict(n_estimators=120, learning_rate=0.1, max_depth=3, device="cpu", n_jobs=1)


def _cohort(rng, n_pat=400, visits=2):
    """Analysis table with a planted signal in dev__thal and ehr__relapses only."""
    pid = np.repeat(np.arange(n_pat), visits)
    n = pid.size
    t = pd.DataFrame({
        "patient_id": [f"P{i:04d}" for i in pid],
        "index_date": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, n), "D"),
        "dev__thal": rng.normal(size=n),
        "dev__hippo": rng.normal(size=n),
        "ehr__relapses": rng.poisson(1.0, n).astype(float),
        "ehr__crp": rng.normal(size=n),
        "txt__emb0": rng.normal(size=n),
        "txt__emb1": rng.normal(size=n),
        "demo__age": rng.uniform(20, 65, n),
        "demo__sex": rng.integers(0, 2, n).astype(float),
    }, index=pd.RangeIndex(1000, 1000 + n))
    lp = -1.2 - 1.6 * t["dev__thal"] + 0.9 * t["ehr__relapses"]
    t[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    return t


@pytest.fixture(scope="module")
def fitted():
    """A model fitted once on a seeded cohort (with some missing text features)."""
    rng = np.random.default_rng(5)
    t = _cohort(rng)
    t.loc[t.index[:60], ["txt__emb0", "txt__emb1"]] = np.nan  # patients without notes
    m = XGBClassifierModel(**FAST).fit(t, LABEL)
    return m, t


def test_planted_signal_recovered_by_shap_ranking(fitted):
    """TreeSHAP ranks the two planted features first; held-out AUROC is near the truth's."""
    m, t = fitted
    test = _cohort(np.random.default_rng(99), n_pat=300, visits=1)
    shap = m.shap_values(test)
    rank = shap.drop(columns="bias").abs().mean().sort_values(ascending=False)
    assert set(rank.index[:2]) == {"dev__thal", "ehr__relapses"}
    assert rank.iloc[1] > 3 * rank.iloc[2]
    imp = pd.Series(m.feature_importances_, index=m.feature_names_in_)
    assert set(imp.nlargest(2).index) == {"dev__thal", "ehr__relapses"}
    assert imp.sum() == pytest.approx(1.0)
    true_lp = -1.2 - 1.6 * test["dev__thal"] + 0.9 * test["ehr__relapses"]
    auc_model = auroc(test[LABEL], m.predict_risk(test))
    assert auc_model > auroc(test[LABEL], true_lp) - 0.06


def test_shap_rows_sum_to_margin(fitted):
    """SHAP contributions plus bias sum to the margin, and the margin maps to predict_proba."""
    m, t = fitted
    shap = m.shap_values(t)
    margin = m.decision_function(t)
    assert_allclose(shap.sum(axis=1).to_numpy(), margin, atol=1e-4)
    assert_allclose(1 / (1 + np.exp(-margin)), m.predict_proba(t)[:, 1], atol=1e-6)
    assert list(shap.index) == list(t.index) and shap.columns[-1] == "bias"


def test_fit_state_split_and_imbalance(fitted):
    """Early stopping ran on a held-out 20 %, class weights are n_neg/n_pos, missing text is counted."""
    m, t = fitted
    y = t[LABEL].to_numpy()
    assert m.n_train_ + m.n_val_ == len(t) and 0.15 < m.n_val_ / len(t) < 0.25
    assert m.best_iteration_ < 120 and m.validation_loss_.size >= m.best_iteration_ + 1
    assert m.device_ == "cpu"
    assert m.n_missing_by_modality_ == {"dev__": 0, "ehr__": 0, "txt__": 60, "demo__": 0}
    # balanced weight from the training part only: close to the overall ratio
    assert m.scale_pos_weight_ == pytest.approx((y == 0).sum() / (y == 1).sum(), rel=0.15)
    assert list(m.feature_names_in_) == [c for c in t.columns if "__" in c]


def test_inner_split_groups_patients_and_stratifies(rng):
    """No patient has rows on both sides; each side keeps the event rate."""
    t = _cohort(rng, n_pat=300, visits=3)
    y = t[LABEL].to_numpy()
    g = t["patient_id"].to_numpy()
    tr, va = inner_split(y, g, 0.2, random_state=0)
    assert set(g[tr]).isdisjoint(g[va])
    assert len(tr) + len(va) == len(y) and len(set(tr) | set(va)) == len(y)
    assert abs(y[va].mean() - y.mean()) < 0.05
    tr2, va2 = inner_split(y, g, 0.2, random_state=0)
    assert_array_equal(va, va2)


def test_save_load_identical_predictions(fitted, tmp_path):
    """save -> load gives identical probabilities and SHAP; the booster is XGBoost JSON."""
    m, t = fitted
    m.save(tmp_path / "xgb")
    assert json.loads((tmp_path / "xgb" / "xgb.json").read_text())["learner"]["objective"]["name"] == "binary:logistic"
    back = XGBClassifierModel.load(tmp_path / "xgb")
    assert_array_equal(back.predict_proba(t), m.predict_proba(t))
    pd.testing.assert_frame_equal(back.shap_values(t), m.shap_values(t))
    assert back.get_params() == m.get_params()
    assert back.best_iteration_ == m.best_iteration_
    assert isinstance(persist.load(tmp_path / "xgb"), XGBClassifierModel)
    (tmp_path / "xgb" / "xgb.json").write_text("{}")
    with pytest.raises(SchemaError, match="altered"):
        XGBClassifierModel.load(tmp_path / "xgb")


def test_input_unchanged_and_index_kept(rng):
    """fit/predict never mutate the table; predict_risk keeps index and order."""
    t = _cohort(rng, n_pat=120, visits=1).sample(frac=1.0, random_state=1)
    before = t.copy()
    m = XGBClassifierModel(**FAST).fit(t, t[LABEL])
    r = m.predict_risk(t)
    pd.testing.assert_frame_equal(t, before)
    assert list(r.index) == list(t.index)
    assert set(np.unique(m.predict(t))) <= {0, 1}


def test_sklearn_clone_and_no_early_stopping(rng):
    """The estimator clones like scikit-learn's; early_stopping_rounds=None trains all rounds on all rows."""
    from sklearn.base import clone

    t = _cohort(rng, n_pat=100, visits=1)
    m = clone(XGBClassifierModel(**{**FAST, "n_estimators": 15}, early_stopping_rounds=None))
    m.fit(t, LABEL)
    assert m.n_val_ == 0 and m.n_train_ == len(t) and m.best_iteration_ == 14


def test_missing_labels_dropped_and_counted(rng):
    """Rows without a label are dropped, counted and warned about."""
    t = _cohort(rng, n_pat=150, visits=1)
    t[LABEL] = t[LABEL].astype(float)
    t.loc[t.index[:7], LABEL] = np.nan
    with pytest.warns(DataDroppedWarning, match="dropped 7 of 150"):
        m = XGBClassifierModel(**FAST).fit(t, LABEL)
    assert m.n_dropped_ == 7 and m.n_train_ + m.n_val_ == 143


def test_bad_input_errors(rng):
    """inf names its column; single class, absent/all-missing modality and misaligned labels are clear errors."""
    t = _cohort(rng, n_pat=80, visits=1)
    bad = t.copy()
    bad.loc[bad.index[3], "ehr__crp"] = np.inf
    with pytest.raises(ColumnContractError, match=r"'ehr__crp' holds inf at row 1003"):
        XGBClassifierModel(**FAST).fit(bad, LABEL)
    with pytest.raises(ValueError, match="single class"):
        XGBClassifierModel(**FAST).fit(t, np.zeros(len(t), int))
    with pytest.raises(ColumnContractError, match=r"no feature column starts with \['txt__'\]"):
        XGBClassifierModel(**FAST).fit(t.drop(columns=["txt__emb0", "txt__emb1"]), LABEL)
    nan_txt = t.assign(txt__emb0=np.nan, txt__emb1=np.nan)
    with pytest.raises(ColumnContractError, match="modality 'txt__' .*missing for every"):
        XGBClassifierModel(**FAST).fit(nan_txt, LABEL)
    y_shift = pd.Series(t[LABEL].to_numpy(), index=t.index + 5)
    with pytest.raises(ColumnContractError, match="5 table rows have no label"):
        XGBClassifierModel(**FAST).fit(t, y_shift)
    with pytest.raises(ValueError, match="labels must be 0/1"):
        XGBClassifierModel(**FAST).fit(t, t["demo__age"])
    with pytest.raises(ValueError, match="scale_pos_weight"):
        XGBClassifierModel(**FAST, scale_pos_weight="auto").fit(t, LABEL)


def test_predict_errors(fitted):
    """Unfitted use raises NotFittedError; a missing feature column is named; inf at predict is refused."""
    m, t = fitted
    with pytest.raises(NotFittedError):
        XGBClassifierModel().predict_proba(t)
    with pytest.raises(ColumnContractError, match=r"Missing: \['dev__hippo'\]"):
        m.predict_proba(t.drop(columns="dev__hippo"))
    with pytest.raises(ColumnContractError, match="infinite"):
        m.predict_proba(t.assign(demo__age=np.inf))


@pytest.mark.gpu
def test_cuda_equals_cpu_within_tolerance():
    """On CUDA, probabilities equal the CPU hist fit within tolerance (same API)."""
    import xgboost

    if not xgboost.build_info().get("USE_CUDA"):
        pytest.skip("this xgboost build has no CUDA support (pip's CPU wheel); runs on GPU machines")
    if not cuda_available():
        pytest.skip("needs a CUDA device visible to torch (none here); runs on GPU machines")
    t = _cohort(np.random.default_rng(8), n_pat=400, visits=1)
    common = dict(n_estimators=100, learning_rate=0.1, max_depth=3, subsample=1.0,
                  colsample_bytree=1.0, early_stopping_rounds=None)
    cpu = XGBClassifierModel(**common, device="cpu").fit(t, LABEL)
    gpu = XGBClassifierModel(**common, device="cuda").fit(t, LABEL)
    assert gpu.device_ == "cuda"
    assert_allclose(gpu.predict_proba(t), cpu.predict_proba(t), atol=2e-3)


class _Recorder:
    """A minimal estimator that records the patients it was fitted on (for leakage checks)."""

    seen: list = []

    def get_params(self, deep=True):
        return {}

    def set_params(self, **kw):
        return self

    def fit(self, table, y):
        _Recorder.seen.append(set(table["patient_id"]))
        self.rate_ = float(np.mean(y))
        return self

    def predict_proba(self, table):
        return np.column_stack([np.full(len(table), 1 - self.rate_), np.full(len(table), self.rate_)])


def test_grouped_folds_and_out_of_fold_risk(rng):
    """Folds keep patients whole and stratify; out-of-fold fits never see the predicted patients."""
    t = _cohort(rng, n_pat=150, visits=2)
    t[LABEL] = t[LABEL].astype(float)
    t.loc[t.index[0], LABEL] = np.nan
    folds = grouped_folds(t, LABEL, n_splits=5, random_state=3)
    assert folds.iloc[0] == -1 and list(folds.index) == list(t.index)
    per_patient = t.assign(fold=folds).iloc[1:].groupby("patient_id")["fold"].nunique()
    assert (per_patient == 1).all()
    y = t[LABEL].to_numpy()
    rates = [np.nanmean(y[folds.to_numpy() == k]) for k in range(5)]
    assert max(rates) - min(rates) < 0.1
    _Recorder.seen = []
    risk = cross_val_risk(_Recorder(), t, LABEL, folds=folds)
    assert np.isnan(risk.iloc[0]) and risk.iloc[1:].notna().all()
    for k, seen in enumerate(_Recorder.seen):
        test_patients = set(t.loc[folds == k, "patient_id"])
        assert seen.isdisjoint(test_patients)
    oof = cross_val_risk(XGBClassifierModel(**FAST), t, LABEL, folds=folds)
    assert auroc(t[LABEL].iloc[1:], oof.iloc[1:]) > 0.75


def test_shap_importance_plot(fitted):
    """The SHAP bar plot draws one bar per feature, the planted feature on top (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.plotting import plot_shap_importance

    m, t = fitted
    ax = plot_shap_importance(m.shap_values(t), top=5)
    labels = [tl.get_text() for tl in ax.get_yticklabels()]
    assert len(ax.patches) == 5 and labels[-1] in {"dev__thal", "ehr__relapses"}
    plt.close("all")
