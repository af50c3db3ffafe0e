"""Tests of the model comparison on identical folds (models/compare.py).

References: a planted truth (simulated tables where only dev and txt carry signal),
pROC-equivalent DeLong numbers from models.evaluate on the same out-of-fold predictions
(``ci.auc``/``roc.test(paired = TRUE)``), statsmodels' Logit as an independent fit of the
count model (R ``glm(y ~ n_crit, binomial)``), scikit-learn's average precision, and
hand-computed combinations over repeats.
"""
from __future__ import annotations

import dataclasses
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy.special import ndtr, ndtri

from models.compare import MODEL_NAMES, ComparisonResult, compare_models, simulate_comparison_table
from models.evaluate import delong, delong_test
from normfuse.errors import ColumnContractError, DataDroppedWarning

matplotlib.use("Agg")

XGB = {"n_estimators": 40, "learning_rate": 0.15, "n_jobs": 1}
FUSION = {"epochs": 6, "embed_dim": 8, "patience": 3, "batch_size": 64}
CHEAP = ("dev_count_logistic", "dev_xgb")


def _cheap(tab, **kw):
    args = dict(models=CHEAP, ablations=False, n_splits=3, n_repeats=1, device="cpu", xgb_params=XGB)
    args.update(kw)
    return compare_models(tab, "y", **args)


@pytest.fixture(scope="module")
def planted():
    """XGBoost models and ablations on 450 planted patients (ehr pure noise)."""
    tab = simulate_comparison_table(450, random_state=0)
    res = compare_models(tab, "y", models=("dev_count_logistic", "dev_xgb", "ehr_xgb", "txt_xgb", "all_xgb"),
                         n_splits=3, n_repeats=1, device="cpu", xgb_params=XGB)
    return tab, res


# ------------------------------------------------------------------ planted truth
def test_planted_informativeness_recovered(planted):
    """dev and txt CIs exclude 0.5, ehr's includes it, all_xgb is at least the best single one."""
    _, res = planted
    s = res.summary()
    assert s.loc["dev_xgb", "auroc_ci_low"] > 0.6
    assert s.loc["txt_xgb", "auroc_ci_low"] > 0.53
    assert s.loc["ehr_xgb", "auroc_ci_low"] < 0.5 < s.loc["ehr_xgb", "auroc_ci_high"]
    assert s.loc["dev_count_logistic", "auroc_ci_low"] > 0.55  # the planted count carries signal
    best = s.loc[["dev_xgb", "ehr_xgb", "txt_xgb"], "auroc"].max()
    assert s.loc["all_xgb", "auroc"] >= best - 0.02


def test_planted_ablations(planted):
    """Dropping dev or txt costs AUROC significantly; dropping the noise modality does not."""
    _, res = planted
    s = res.summary()
    for m in ("dev", "txt"):
        row = s.loc[f"all_xgb_minus_{m}"]
        assert row["kind"] == "ablation" and row["full_model"] == "all_xgb"
        assert row["delta_vs_full"] < -0.05 and row["p_vs_full"] < 0.01
    assert s.loc["all_xgb_minus_ehr", "p_vs_full"] > 0.05
    assert s.loc["all_xgb_minus_ehr", "modalities"] == "dev+txt+demo"


def test_shap_summary_ranks_signal_modalities(planted):
    """Mean |SHAP| of the full XGBoost puts the planted features first; ehr gets the least per feature."""
    _, res = planted
    imp = res.shap_summary()
    assert set(imp.columns) >= {"feature", "modality", "mean_abs_shap", "sd_folds"}
    top = imp["feature"].head(5).tolist()
    planted_feats = {f"dev__Z{j:02d}" for j in range(10)} | {f"txt__{j}" for j in range(4)} | {"dev__n_crit", "dev__n_crit_neg"}
    assert sum(f in planted_feats for f in top) >= 4
    per_mod = imp.groupby("modality")["mean_abs_shap"].mean()
    assert per_mod.idxmin() in ("ehr", "demo")
    assert len(res.shap) == 3 * imp.shape[0]  # one row per feature and fold


# ------------------------------------------------------------------ numbers against references
def test_single_repeat_equals_delong_on_pooled_oof(small):
    """With one repeat, AUROC/CI and the paired test equal DeLong (pROC) on the pooled predictions."""
    res = _cheap(small)
    s = res.summary()
    o = res.oof_predictions
    y = o[o.model == "dev_xgb"].sort_values("row")["y"].to_numpy()
    pa = o[o.model == "dev_xgb"].sort_values("row")["p"].to_numpy()
    pb = o[o.model == "dev_count_logistic"].sort_values("row")["p"].to_numpy()
    d = delong(y, pa)  # pROC: ci.auc(roc(y, pa), method = "delong")
    assert_allclose(s.loc["dev_xgb", ["auroc", "auroc_ci_low", "auroc_ci_high"]].to_numpy(dtype=float),
                    [d.auc[0], *d.ci[0]], rtol=1e-12)
    t = delong_test(y, pa, pb)  # pROC: roc.test(roc(y, pa), roc(y, pb), method = "delong", paired = TRUE)
    assert_allclose([s.loc["dev_xgb", "delta_vs_baseline"], s.loc["dev_xgb", "p_vs_baseline"]],
                    [t.difference, t.p_value], rtol=1e-10)
    from sklearn.metrics import average_precision_score

    assert_allclose(s.loc["dev_xgb", "auprc"], average_precision_score(y, pa), rtol=1e-10)
    assert_allclose(s.loc["dev_xgb", "brier"], np.mean((pa - y) ** 2), rtol=1e-12)
    assert s.loc["dev_count_logistic", "delta_vs_baseline"] == 0.0
    assert np.isnan(s.loc["dev_count_logistic", "p_vs_baseline"])


def test_repeats_combined_by_mean_and_mean_variance(small):
    """Two repeats: AUROC is the mean, CI and test use sqrt(mean of per-repeat DeLong variances)."""
    res = _cheap(small, n_repeats=2)
    pr = res.per_repeat.set_index(["model", "repeat"])
    s = res.summary()
    a = pr.loc["dev_xgb"]
    z = ndtri(0.975)
    se = np.sqrt(np.mean(a["auroc_se"].to_numpy() ** 2))
    assert_allclose(s.loc["dev_xgb", "auroc"], a["auroc"].mean(), rtol=1e-12)
    assert_allclose(s.loc["dev_xgb", ["auroc_ci_low", "auroc_ci_high"]].to_numpy(dtype=float),
                    [a["auroc"].mean() - z * se, a["auroc"].mean() + z * se], rtol=1e-12)
    dse = np.sqrt(np.mean(a["delta_baseline_se"].to_numpy() ** 2))
    dm = a["delta_vs_baseline"].mean()
    assert_allclose(s.loc["dev_xgb", "p_vs_baseline"], 2 * ndtr(-abs(dm / dse)), rtol=1e-10)
    assert_allclose(s.loc["dev_xgb", "auroc_sd_repeats"], a["auroc"].std(ddof=1), rtol=1e-12)
    # the two repeats use different partitions
    assert not np.array_equal(res.folds["repeat_0"], res.folds["repeat_1"])


def test_count_logistic_matches_statsmodels_per_fold(small):
    """dev_count_logistic's out-of-fold risks equal statsmodels Logit fitted on each training fold."""
    import statsmodels.api as sm

    tab = small.copy()
    tab.loc[tab.index[::17], "dev__n_crit"] = np.nan  # imputed with the training-fold median
    res = _cheap(tab, models=("dev_count_logistic",))
    o = res.oof_predictions.sort_values("row")
    x = tab["dev__n_crit"].to_numpy()
    y = tab["y"].to_numpy()
    fold = res.folds["repeat_0"].to_numpy()
    expected = np.empty(len(y))
    for k in range(3):
        tr, te = fold != k, fold == k
        med = np.nanmedian(x[tr])
        xtr, xte = np.where(np.isnan(x[tr]), med, x[tr]), np.where(np.isnan(x[te]), med, x[te])
        # R: glm(y ~ n_crit, binomial, data = train); predict(fit, test, type = "response")
        fit = sm.Logit(y[tr], sm.add_constant(xtr)).fit(disp=0)
        expected[te] = fit.predict(sm.add_constant(xte))
    assert_allclose(o["p"].to_numpy(), expected, rtol=1e-6)


# ------------------------------------------------------------------ folds and leakage
def test_identical_grouped_stratified_folds(rng):
    """Every model sees the same folds; a patient's rows share a fold; events spread over folds."""
    tab = simulate_comparison_table(210, random_state=5)
    extra = tab.sample(60, random_state=1).copy()  # second index row for 60 patients
    extra.index = extra.index + 10_000
    tab2 = pd.concat([tab, extra])
    res = _cheap(tab2, n_repeats=2)
    o = res.oof_predictions
    for r in range(2):
        f = o[o.repeat == r].pivot(index="row", columns="model", values="fold")
        assert (f["dev_xgb"] == f["dev_count_logistic"]).all()
        per_pat = o[(o.repeat == r) & (o.model == "dev_xgb")].groupby("patient_id")["fold"].nunique()
        assert per_pat.max() == 1
        ev = o[(o.repeat == r) & (o.model == "dev_xgb")].groupby("fold")["y"].mean()
        assert ev.max() - ev.min() < 0.12
    assert res.summary().loc["dev_xgb", "n_patients"] == 210
    assert res.summary().loc["dev_xgb", "n_rows"] == 270
    assert res.folds.index.equals(tab2.index)


def test_preprocessor_canary_never_sees_test_rows(small):
    """The per-fold hook is fitted on training rows only; its output feeds every model."""
    seen = []

    def canary(train_rows, test_rows):
        seen.append((set(train_rows.index), set(test_rows.index)))
        mu = train_rows["dev__Z00"].mean()  # a scaler fitted on the training rows only
        return (train_rows.assign(dev__Z00=train_rows["dev__Z00"] - mu),
                test_rows.assign(dev__Z00=test_rows["dev__Z00"] - mu))

    res = _cheap(small, preprocessors=canary, n_repeats=2)
    assert len(seen) == 6
    for r in range(2):
        f = res.folds[f"repeat_{r}"]
        for k in range(3):
            train, test = seen[r * 3 + k]
            assert train.isdisjoint(test)
            assert test == set(f.index[f == k]) and train == set(f.index[f != k])
    assert res.settings["preprocessors"] == "canary"


def test_preprocessor_must_keep_rows(small):
    """A hook that drops rows is refused with a message naming the fold."""
    def dropper(tr, te):
        return tr.iloc[1:], te

    with pytest.raises(ColumnContractError, match="changed the rows of the train table in repeat 0, fold 0"):
        _cheap(small, preprocessors=dropper)


def test_input_not_mutated_and_unlabelled_rows_dropped(small):
    """The table is unchanged; rows without a label are dropped with a counted warning."""
    tab = small.copy()
    tab["y"] = tab["y"].astype("float64")
    tab.loc[tab.index[:7], "y"] = np.nan
    before = tab.copy()
    with pytest.warns(DataDroppedWarning, match="dropped 7 rows without a label"):
        res = _cheap(tab)
    pd.testing.assert_frame_equal(tab, before)
    assert res.summary().loc["dev_xgb", "n_rows"] == len(tab) - 7
    assert res.settings["n_dropped_unlabelled"] == 7


# ------------------------------------------------------------------ bad input
def test_single_class_fold_is_a_clear_error(small):
    """Too few events for the folds: the error names the fold and suggests fewer splits."""
    tab = small.copy()
    tab["y"] = 0
    tab.loc[tab.index[:2], "y"] = 1
    with pytest.raises(ValueError, match=r"2 patients with events .* single class. Use fewer folds, e\.g\. n_splits=2"):
        _cheap(tab, n_splits=3)


def test_modality_missing_for_everyone_is_skipped(small):
    """txt all NaN: txt_xgb is skipped with a warning and listed; all_xgb runs without txt."""
    tab = small.copy()
    tab.loc[:, [c for c in tab.columns if c.startswith("txt__")]] = np.nan
    with pytest.warns(DataDroppedWarning, match="skipped txt_xgb"):
        res = _cheap(tab, models=("dev_count_logistic", "txt_xgb", "all_xgb"), ablations=True)
    s = res.summary()
    assert "every txt__* value is missing" in s.loc["txt_xgb", "skipped"]
    assert np.isnan(s.loc["txt_xgb", "auroc"])
    assert s.loc["all_xgb", "modalities"] == "dev+ehr+demo"
    assert "all_xgb_minus_txt" not in s.index and "all_xgb_minus_dev" in s.index
    assert "txt_xgb" not in res.models
    with pytest.raises(KeyError, match="txt_xgb"):
        res.roc("txt_xgb")


def test_nan_features_allowed_inf_refused(small):
    """NaN cells are handled (XGBoost: missing; fusion/logistic: imputed); inf names the column."""
    tab = small.copy()
    tab.loc[tab.index[::5], "dev__Z03"] = np.nan
    res = _cheap(tab)
    assert np.isfinite(res.oof_predictions["p"]).all()
    tab.loc[tab.index[4], "ehr__v02__mean_365d"] = np.inf
    with pytest.raises(ColumnContractError, match=r"'ehr__v02__mean_365d' holds inf at row 4"):
        _cheap(tab)


def test_fusion_inputs_imputed_with_training_medians():
    """Fusion inputs: all-NaN modality rows mark absence; other NaN cells get the training median."""
    from models._compare_jobs import _fusion_data

    tr = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "dev__x": [1.0, 3.0, np.nan, 100.0],
                       "dev__y": [0.0, np.nan, np.nan, 2.0], "txt__0": [np.nan, 1.0, 2.0, 3.0]})
    te = pd.DataFrame({"patient_id": ["e", "f"], "dev__x": [np.nan, 5.0], "dev__y": [7.0, np.nan],
                       "txt__0": [np.nan, 4.0]})
    cols = {"dev": ["dev__x", "dev__y"], "txt": ["txt__0"]}
    dtr, dte = _fusion_data(tr, te, ("dev", "txt"), cols, {}, np.arange(4), np.arange(2), "patient_id", "t")
    # training medians over rows where dev is present (a, b, d): x -> median(1, 3, 100) = 3, y -> median(0, 2) = 1
    assert_allclose(dtr.static["dev"], [[1, 0], [3, 1], [0, 0], [100, 2]])
    assert_allclose(dte.static["dev"], [[3, 7], [5, 1]])
    assert dtr.presence.tolist() == [[True, False], [True, True], [False, True], [True, True]]
    assert dte.presence.tolist() == [[True, False], [True, True]]


def test_sequences_with_mismatched_ids_refused(small):
    """Sequence patient ids that differ from the table's are an error naming them."""
    n = len(small)
    x = np.zeros((n, 4, 2), np.float32)
    m = np.ones((n, 4), bool)
    ids = small["patient_id"].to_numpy().copy()
    ids[0] = "NOBODY"
    with pytest.raises(ColumnContractError, match="Unexpected in 'lab': \\['NOBODY'\\]"):
        _cheap(small, sequences={"lab": (x, m, ids)})
    with pytest.raises(ColumnContractError, match="has 10 rows, the table 240"):
        _cheap(small, sequences={"lab": (x[:10], m[:10])})


def test_argument_errors(small):
    """Unknown models, a baseline not run and a missing id column are refused."""
    with pytest.raises(ValueError, match="unknown models \\['gbm'\\]"):
        compare_models(small, "y", models=("gbm",))
    with pytest.raises(ValueError, match="baseline='dev_count_logistic' is not among"):
        compare_models(small, "y", models=("dev_xgb",))
    with pytest.raises(ColumnContractError, match="'pid' is not in the table"):
        compare_models(small, "y", models=CHEAP, id_col="pid")
    assert MODEL_NAMES[0] == "dev_count_logistic"


# ------------------------------------------------------------------ fusion, sequences and figures
@pytest.fixture(scope="module")
def fused(small):
    """Fusion (concat ablated, late weighted) with an EHR sequence modality, plus the count baseline."""
    rng = np.random.default_rng(11)
    n = len(small)
    lens = rng.integers(0, 7, n)  # some patients have no EHR rows at all
    mask = np.arange(6)[None, :] < lens[:, None]
    x = rng.standard_normal((n, 6, 3)).astype(np.float32)
    order = rng.permutation(n)  # given in another order, matched by patient id
    seqs = {"lab": (x[order], mask[order], small["patient_id"].to_numpy()[order])}
    res = compare_models(small, "y", sequences=seqs, models=("dev_count_logistic", "all_xgb", "fusion_concat",
                                                              "fusion_late"),
                         ablations=("fusion_concat",), n_splits=3, n_repeats=1, device="cpu",
                         fusion_params=FUSION, xgb_params=XGB)
    return res


def test_fusion_with_sequences_and_ablation(fused):
    """EHR enters fusion as the sequence; the concat ablations drop each modality in turn."""
    s = fused.summary()
    assert s.loc["fusion_concat", "modalities"] == "dev+ehr_seq+txt+demo"
    assert s.loc["all_xgb", "modalities"] == "dev+ehr+txt+demo"  # XGBoost keeps the ehr__ summaries
    abl = s[s["full_model"] == "fusion_concat"]
    assert sorted(abl.index) == sorted(f"fusion_concat_minus_{m}" for m in ("dev", "ehr", "txt", "demo"))
    assert np.isfinite(s.loc[abl.index, "p_vs_full"]).all()
    assert np.isfinite(fused.oof_predictions["p"]).all()


def test_modality_weights_average_over_patients_and_folds(fused):
    """fusion_late's weights: one row, one column per modality, summing to 1."""
    w = fused.modality_weights()
    assert list(w.index) == ["fusion_late"]
    assert set(w.columns) == {"dev", "txt", "demo", "lab"}
    assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    raw = fused.weights
    assert_allclose(w.loc["fusion_late", "dev"], raw[raw.modality == "dev"]["weight"].mean(), rtol=1e-12)


def test_figures_and_views(fused):
    """Each plot kind draws on an Axes; roc/calibration/decision delegate to models.evaluate."""
    import matplotlib.pyplot as plt

    ax = fused.plot("roc", model=["fusion_concat", "all_xgb"])
    assert sum(len(line.get_xdata()) > 2 for line in ax.get_lines()) == 2
    ax = fused.plot("calibration", model="all_xgb")
    assert any("slope" in t.get_text() for t in ax.get_legend().get_texts())
    ax = fused.plot("decision")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Treat all" in labels and "fusion_late" in labels
    ax = fused.plot("shap")
    assert len(ax.patches) == min(15, fused.shap_summary().shape[0])
    ax = fused.plot("modality_weights")
    assert len(ax.patches) == 4
    plt.close("all")
    r = fused.roc("all_xgb")
    assert_allclose(r.auc, fused.summary().loc["all_xgb", "auroc"], rtol=1e-12)
    assert isinstance(fused, ComparisonResult)
    assert "baseline dev_count_logistic" in fused.to_text()
    assert "<table" in fused._repr_html_()
    with pytest.raises(ValueError, match="kind='bars'"):
        fused.plot("bars")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dc = fused.decision_curve(["all_xgb", "fusion_concat"])
    assert set(dc.net_benefit.columns) == {"all", "none", "all_xgb", "fusion_concat"}


# ------------------------------------------------------------------ raw notes/events fitted inside folds
def _letters(i: int) -> str:
    return "".join("abcdefghij"[int(d)] for d in f"{i:04d}")


def test_fold_featurizer_fits_notes_and_events_on_training_patients_only():
    """NoteEmbedder/EHRFeaturizer fitted per fold never see test patients' or post-index notes."""
    from models.compare import FoldFeaturizer

    rng = np.random.default_rng(9)
    n = 150
    pid = [f"P{i:03d}" for i in range(n)]
    y = rng.integers(0, 2, n)
    idx_date = pd.Timestamp("2021-01-01")
    notes, events = [], []
    for i in range(n):
        cue = "worsening gait ataxia relapse" if y[i] else "stable doing well walking"
        for d in (30, 200):
            notes.append((pid[i], idx_date - pd.Timedelta(days=d), f"{cue} canary{_letters(i)}"))
        notes.append((pid[i], idx_date + pd.Timedelta(days=10), "futureword leak"))
        for d in (20, 60, 400):
            events.append((pid[i], f"E{i}_{d}", idx_date - pd.Timedelta(days=d), "lab", "crp", rng.normal()))
    notes = pd.DataFrame(notes, columns=["patient_id", "time", "text"])
    events = pd.DataFrame(events, columns=["patient_id", "encounter_id", "time", "table", "variable", "value"])
    tab = pd.DataFrame({"patient_id": pid, "index_date": idx_date, "dev__n_crit": rng.poisson(2, n).astype(float),
                        "y": y})
    from features.notes import NoteEmbedder

    hook = FoldFeaturizer(notes=notes, events=events, note_embedder=NoteEmbedder(n_components=4, min_df=1))
    res = compare_models(tab, "y", models=("dev_count_logistic", "txt_xgb", "ehr_xgb"), ablations=False,
                         n_splits=3, n_repeats=1, device="cpu", xgb_params=XGB, preprocessors=hook)
    assert len(hook.fitted_) == 3
    fold = res.folds["repeat_0"]
    for k, rec in enumerate(hook.fitted_):
        vocab = set(rec["note_embedder"].vectorizer_.vocabulary_)
        test_ids = set(tab.loc[fold == k, "patient_id"])
        assert not any(f"canary{_letters(int(p[1:]))}" in vocab for p in test_ids)
        assert any(f"canary{_letters(int(p[1:]))}" in vocab for p in rec["train_ids"])
        assert "futureword" not in vocab
        assert set(rec["train_ids"]).isdisjoint(test_ids)
        assert rec["ehr_featurizer"].variables_ == ["crp"]
    s = res.summary()
    assert s.loc["txt_xgb", "auroc"] > 0.9  # the planted note cue
    assert s.loc["ehr_xgb", "auroc_ci_low"] < 0.5 < s.loc["ehr_xgb", "auroc_ci_high"]


def test_label_series_equals_label_column(small):
    """Labels given as a Series indexed like the table give the same comparison as the column name."""
    a = _cheap(small).summary()
    b = compare_models(small.drop(columns="y"), small["y"], models=CHEAP, ablations=False, n_splits=3,
                       n_repeats=1, device="cpu", xgb_params=XGB).summary()
    assert_allclose(a["auroc"].to_numpy(dtype=float), b["auroc"].to_numpy(dtype=float), rtol=1e-12)


# ------------------------------------------------------------------ patient-cluster bootstrap CIs
def test_weighted_auc_kernel_equals_sklearn_and_repeated_rows():
    """Weighted AUROC with integer weights equals sklearn's sample_weight AUROC and the repeated-rows AUROC."""
    from sklearn.metrics import roc_auc_score

    from models._kernels import weighted_auc_rows

    rng = np.random.default_rng(11)
    n = 120
    y = (rng.random(n) < 0.4).astype(int)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties, within and across classes
    w = rng.integers(0, 4, size=(25, n))
    got = weighted_auc_rows(s, y, w)
    for b in range(w.shape[0]):
        assert_allclose(got[b], roc_auc_score(y, s, sample_weight=w[b]), rtol=1e-12)
        rows = np.repeat(np.arange(n), w[b])
        assert_allclose(got[b], roc_auc_score(y[rows], s[rows]), rtol=1e-12)
    assert_allclose(weighted_auc_rows(s, y, np.ones((1, n)))[0], roc_auc_score(y, s), rtol=1e-12)
    w0 = np.ones((1, n))
    w0[0, y == 0] = 0
    assert np.isnan(weighted_auc_rows(s, y, w0)[0])  # no negative weight: undefined, not 0


def _clustered(n_patients, rows_per, seed):
    """Binormal planted scores (true AUROC = Phi(d / sqrt(2))), each patient repeated with jitter 0.01."""
    rng = np.random.default_rng(seed)
    d = 1.0
    yp = (rng.random(n_patients) < 0.4).astype(int)
    sp = rng.normal(d * yp, 1.0)
    pid = np.repeat(np.arange(n_patients), rows_per)
    return pid, yp[pid], sp[pid] + rng.normal(0, 0.01, pid.size), float(ndtr(d / np.sqrt(2)))


def test_cluster_bootstrap_wider_than_delong_and_covers_truth():
    """5 near-identical rows per patient: the cluster-bootstrap CI is > 1.5x DeLong's and covers the true AUROC."""
    from models._kernels import weighted_auc_rows
    from models.compare import _cluster_weights, _pct

    ratios, covered = [], 0
    for seed in range(20):
        pid, y, s, truth = _clustered(150, 5, seed)
        w = _cluster_weights(pid, y, 400, np.random.default_rng(seed))
        lo, hi = _pct(weighted_auc_rows(s, y, w), 0.95)
        dl = delong(y, s).ci[0]  # pROC: ci.auc(roc(y, s), method = "delong") on the 750 rows
        ratios.append((hi - lo) / (dl[1] - dl[0]))
        covered += lo <= truth <= hi
    assert np.min(ratios) > 1.5  # expected about sqrt(5) = 2.2
    assert covered >= 17  # nominal 95% of 20


def test_compare_models_cluster_bootstrap_on_repeated_visits():
    """compare_models on repeated index rows: auto picks the cluster bootstrap; CIs > 1.5x DeLong's; p from the replicates."""
    tab = simulate_comparison_table(150, random_state=5)
    rng = np.random.default_rng(1)
    rep = tab.loc[tab.index.repeat(5)].reset_index(drop=True)
    num = [c for c in rep.columns if c.startswith(("dev__Z", "ehr__", "txt__"))]
    rep.loc[:, num] = rep[num].to_numpy() + rng.normal(0, 0.01, (len(rep), len(num)))
    kw = dict(models=CHEAP, ablations=False, n_splits=3, n_repeats=2, device="cpu", xgb_params=XGB, n_boot=300)
    sd = compare_models(rep, "y", ci="delong", **kw).summary()
    res = compare_models(rep, "y", ci="auto", **kw)
    sb = res.summary()
    assert (sb.loc[list(CHEAP), "ci_method"] == "cluster_bootstrap").all()
    assert (sd["ci_method"] == "delong").all()
    assert_allclose(sb["auroc"].to_numpy(dtype=float), sd["auroc"].to_numpy(dtype=float), rtol=1e-12)
    wb = sb["auroc_ci_high"] - sb["auroc_ci_low"]
    wd = sd["auroc_ci_high"] - sd["auroc_ci_low"]
    assert (wb / wd > 1.5).all()
    wdb = sb.loc["dev_xgb", "delta_ci_high"] - sb.loc["dev_xgb", "delta_ci_low"]
    assert wdb > 1.5 * (sd.loc["dev_xgb", "delta_ci_high"] - sd.loc["dev_xgb", "delta_ci_low"])
    assert sd.loc["dev_xgb", "p_vs_baseline"] < sb.loc["dev_xgb", "p_vs_baseline"]
    assert sb.loc["dev_xgb", "p_vs_baseline"] >= 2 / 301  # +1 correction: never below 2/(B+1)
    assert (res.per_repeat["ci_method"] == "cluster_bootstrap").all()
    assert res.settings["ci_method"] == "cluster_bootstrap" and res.settings["max_rows_per_patient"] == 5
    assert "cluster bootstrap" in res.to_text()


def test_cluster_bootstrap_p_and_ci_from_the_same_replicates():
    """Summary CI, delta CI and p equal the percentile / 2*min(P(d<=0), P(d>=0)) recomputed from the OOF predictions."""
    from models._kernels import weighted_auc_rows
    from models.compare import _cluster_weights

    tab = simulate_comparison_table(90, random_state=2)
    rep = tab.loc[tab.index.repeat(3)].reset_index(drop=True)
    res = _cheap(rep, n_repeats=2, ci="cluster_bootstrap", n_boot=200, random_state=4)
    s = res.summary()
    o = res.oof_predictions
    w = None
    boots = {}
    for m in CHEAP:
        for r in range(2):
            g = o[(o.model == m) & (o.repeat == r)].sort_values("row")
            if w is None:
                y, pid = g["y"].to_numpy(), g["patient_id"].to_numpy()
                w = _cluster_weights(pid, y, 200, np.random.default_rng(4))
            boots[m, r] = weighted_auc_rows(g["p"].to_numpy(), y, w)
    a = (boots["dev_xgb", 0] + boots["dev_xgb", 1]) / 2
    assert_allclose(s.loc["dev_xgb", ["auroc_ci_low", "auroc_ci_high"]].to_numpy(dtype=float),
                    np.quantile(a, [0.025, 0.975]), rtol=1e-12)
    d = a - (boots["dev_count_logistic", 0] + boots["dev_count_logistic", 1]) / 2
    assert_allclose(s.loc["dev_xgb", ["delta_ci_low", "delta_ci_high"]].to_numpy(dtype=float),
                    np.quantile(d, [0.025, 0.975]), rtol=1e-12)
    p = min(1.0, 2 * min((1 + (d <= 0).sum()) / 201, (1 + (d >= 0).sum()) / 201))
    assert_allclose(s.loc["dev_xgb", "p_vs_baseline"], p, rtol=1e-12)
    # stratified: every replicate keeps each stratum's patient count
    ev = pd.Series(y).groupby(pid).max().to_numpy().astype(bool)
    cnt = w[:, np.unique(pid, return_index=True)[1]]
    assert (cnt[:, ev].sum(1) == ev.sum()).all() and (cnt[:, ~ev].sum(1) == (~ev).sum()).all()


def test_one_row_per_patient_auto_is_delong_unchanged(small):
    """One row per patient: ci='auto' picks DeLong and reproduces the pre-bootstrap numbers exactly."""
    res = _cheap(small, n_repeats=2)
    s = res.summary()
    assert (s["ci_method"] == "delong").all()
    # values from compare_models before the ci option existed (commit 32e1d91), same call
    assert_allclose(s.loc["dev_xgb", ["auroc", "auroc_ci_low", "auroc_ci_high", "delta_vs_baseline",
                                      "delta_ci_low", "delta_ci_high", "p_vs_baseline"]].to_numpy(dtype=float),
                    [0.7302990574728936, 0.6622660042730748, 0.7983321106727124, -0.029108496917298443,
                     -0.08612852904033537, 0.027911535205738483, 0.3170426110518515], rtol=1e-9)
    assert_allclose(s.loc["dev_count_logistic", ["auroc", "auroc_ci_low", "auroc_ci_high"]].to_numpy(dtype=float),
                    [0.759407554390192, 0.6974942541143437, 0.8213208546660403], rtol=1e-9)
    explicit = _cheap(small, n_repeats=2, ci="delong").summary()
    pd.testing.assert_frame_equal(s.drop(columns="fit_seconds"), explicit.drop(columns="fit_seconds"))


def test_cluster_bootstrap_is_seeded(small):
    """Same random_state gives identical bootstrap CIs and p; another seed changes them."""
    tab = small.loc[small.index.repeat(2)].reset_index(drop=True)
    cols = ["auroc_ci_low", "auroc_ci_high", "delta_ci_low", "delta_ci_high", "p_vs_baseline"]
    a = _cheap(tab, ci="cluster_bootstrap", n_boot=200, random_state=7).summary()[cols]
    b = _cheap(tab, ci="cluster_bootstrap", n_boot=200, random_state=7).summary()[cols]
    c = _cheap(tab, ci="cluster_bootstrap", n_boot=200, random_state=8).summary()[cols]
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.loc["dev_xgb"].to_numpy(dtype=float), c.loc["dev_xgb"].to_numpy(dtype=float))


def test_ci_argument_errors(small):
    """Unknown ci and too few bootstrap replicates are clear errors."""
    with pytest.raises(ValueError, match="ci='bca'"):
        _cheap(small, ci="bca")
    with pytest.raises(ValueError, match="n_boot=10"):
        _cheap(small, ci="cluster_bootstrap", n_boot=10)


def _planted_result(n_patients, rows_per_patient, ci_method, seed):
    """A ComparisonResult holding planted out-of-fold scores that are nearly constant within patient."""
    rng = np.random.default_rng(seed)
    y_pat = rng.random(n_patients) < 0.4
    effect = rng.normal(size=n_patients) + 1.2 * y_pat
    pid = np.repeat(np.arange(n_patients), rows_per_patient)
    p = 1 / (1 + np.exp(-(effect[pid] + 0.05 * rng.normal(size=pid.size))))
    oof = pd.DataFrame({"repeat": 0, "fold": 0, "row": np.arange(pid.size),
                        "patient_id": [f"P{i}" for i in pid], "model": "m",
                        "y": y_pat[pid].astype(int), "p": p})
    table = pd.DataFrame({"skipped": [""]}, index=pd.Index(["m"], name="model"))
    return ComparisonResult(table=table, per_repeat=pd.DataFrame(), oof_predictions=oof,
                            shap=pd.DataFrame(), weights=pd.DataFrame(), folds=pd.DataFrame(),
                            baseline="m", conf_level=0.95, n_splits=5, n_repeats=1, n_boot=400,
                            settings={"ci_method": ci_method})


def test_roc_band_resamples_patients_under_cluster_bootstrap():
    """5 rows per patient, scores ~constant within patient: the band widens by ~sqrt(5) in mid-curve."""
    ratios = []
    for seed in (3, 4):
        cl = _planted_result(150, 5, "cluster_bootstrap", seed).roc()
        rows = _planted_result(150, 5, "delong", seed).roc()
        mid = (cl.band_fpr >= 0.3) & (cl.band_fpr <= 0.7)
        ratios.append((cl.band_high - cl.band_low)[mid].mean() / (rows.band_high - rows.band_low)[mid].mean())
        assert cl.auc == rows.auc and np.array_equal(cl.tpr, rows.tpr)  # same curve, other band
    # planted truth: 150 independent patients vs 750 "independent" rows -> sqrt(5) = 2.24;
    # measured 2.19 and 2.12; row resampling would give 1
    assert 1.8 < np.mean(ratios) < 2.7, ratios


def test_roc_band_one_row_per_patient_same_as_rows():
    """With one row per patient the cluster-bootstrap band equals the row band exactly (same seed)."""
    cl = _planted_result(300, 1, "cluster_bootstrap", 7).roc()
    rows = _planted_result(300, 1, "delong", 7).roc()
    np.testing.assert_array_equal(cl.band_low, rows.band_low)
    np.testing.assert_array_equal(cl.band_high, rows.band_high)


# ------------------------------------------------------------------ ROC AUC CI = summary CI
def _repeated_visits(n_patients, rows_per, seed):
    """The simulated table with each patient repeated ``rows_per`` times (features jittered by 0.01)."""
    tab = simulate_comparison_table(n_patients, random_state=seed)
    rng = np.random.default_rng(seed)
    rep = tab.loc[tab.index.repeat(rows_per)].reset_index(drop=True)
    num = [c for c in rep.columns if c.startswith(("dev__Z", "ehr__", "txt__"))]
    rep.loc[:, num] = rep[num].to_numpy() + rng.normal(0, 0.01, (len(rep), len(num)))
    return rep


def _oof_delong_ci(res, model):
    o = res.oof_predictions
    g = o[(o.model == model) & (o.repeat == 0)].sort_values("row")
    return delong(g["y"].to_numpy(), g["p"].to_numpy()).ci[0]  # pROC: ci.auc(roc(y, p), method = "delong")


def test_roc_auc_ci_equals_summary_ci_under_cluster_bootstrap():
    """5 rows per patient: roc().auc_ci is summary()'s cluster-bootstrap CI (1e-12), ~sqrt(5) x DeLong's."""
    res = _cheap(_repeated_visits(150, 5, 5), n_boot=300, random_state=3)
    s = res.summary()
    assert (s["ci_method"] == "cluster_bootstrap").all()
    for m in CHEAP:
        r = res.roc(m)
        assert r.auc_ci_method == "cluster_bootstrap" and r.n_boot == 300
        assert_allclose(r.auc_ci, s.loc[m, ["auroc_ci_low", "auroc_ci_high"]].to_numpy(dtype=float),
                        rtol=0, atol=1e-12)
        assert_allclose(r.auc, s.loc[m, "auroc"], rtol=1e-12)
        dl = _oof_delong_ci(res, m)
        ratio = (r.auc_ci[1] - r.auc_ci[0]) / (dl[1] - dl[0])
        # planted: 150 independent patients seen as 750 rows -> sqrt(5) = 2.24 (measured 2.24 for
        # dev_count_logistic, 2.18 for dev_xgb); DeLong's own CI gives 1
        assert 1.7 < ratio < 2.8, (m, ratio)
        assert "patient-cluster bootstrap, 300 replicates" in r.to_text()
    # another seed: other replicates, other CI (the seed is the comparison's, not a fixed one)
    other = dataclasses.replace(res, settings={**res.settings, "random_state": 4})
    assert not np.allclose(other.roc("dev_xgb").auc_ci, s.loc["dev_xgb", ["auroc_ci_low", "auroc_ci_high"]]
                           .to_numpy(dtype=float), rtol=0, atol=1e-12)


def test_roc_auc_ci_planted_patients_sqrt5_wider_than_delong():
    """Planted scores ~constant within patient (5 rows each): roc().auc_ci / DeLong width is ~sqrt(5)."""
    ratios = []
    for seed in (3, 4, 5):
        res = _planted_result(150, 5, "cluster_bootstrap", seed)
        r = res.roc()
        dl = _oof_delong_ci(res, "m")
        assert r.auc_ci_method == "cluster_bootstrap"
        assert r.auc_ci[0] < r.auc < r.auc_ci[1]
        ratios.append((r.auc_ci[1] - r.auc_ci[0]) / (dl[1] - dl[0]))
        assert res.roc().auc_ci == r.auc_ci  # seeded: the same call gives the same interval
        assert_allclose(_planted_result(150, 5, "delong", seed).roc().auc_ci, dl, rtol=1e-12)  # DeLong mode
    assert 1.8 < np.mean(ratios) < 2.7, ratios  # sqrt(5) = 2.24; measured 1.97, 2.16, 2.05; DeLong gives 1


def test_roc_auc_ci_one_row_per_patient_is_delong(small):
    """One row per patient: roc().auc_ci is DeLong's exactly, whether ci is 'auto' or 'cluster_bootstrap'."""
    res = _cheap(small)
    r = res.roc("dev_xgb")
    assert r.auc_ci_method == "delong" and "DeLong" in r.to_text()
    assert_allclose(r.auc_ci, _oof_delong_ci(res, "dev_xgb"), rtol=1e-12)
    for seed in (7, 8):
        rp = _planted_result(300, 1, "cluster_bootstrap", seed).roc()
        rd = _planted_result(300, 1, "delong", seed).roc()
        assert rp.auc_ci_method == rd.auc_ci_method == "delong"
        assert rp.auc_ci == rd.auc_ci  # bit for bit: the DeLong path, as before the cluster option
        np.testing.assert_array_equal(rp.band_low, rd.band_low)
