"""Model comparison with a fusion network on the project's simulated MS cohort.

Unlike ``test_compare.py`` (a toy table from ``simulate_comparison_table``), the table
here is built from :func:`normfuse.synthetic.simulate_cohort` the way the pipeline's
features stage builds it (``normfuse._stages_clinical.stage_features``): normative Z from
a :class:`NormativeModel` fitted on the simulated reference controls (``tail="lower"``),
each patient's first EDSS visit as index (``build_index_visits(rule="first")``, one row
per patient, so DeLong CIs apply), the label ``y_edss4_3y`` from
:func:`features.cohort.make_labels`, EHR summaries from :class:`features.ehr.EHRFeaturizer`
and the table from :func:`features.cohort.build_cohort_table`; notes are left out to keep
the test fast.

Planted informativeness (``normfuse.synthetic.cohort`` and ``.ehr``): the latent EDSS rises
0.24 points per critical deviation, so the deviations predict reaching EDSS 4; the
informative EHR variables (vitamin D, symptomatic drugs) track the latent EDSS *during
follow-up*, but every simulated encounter and event lies on or after the baseline visit,
so at the first-visit index the EHR look-back windows are empty and the EHR modality is
pure noise (counts of zero). Reference: the planted truth (the true Z counts of the
baseline scans, ``truth.z_patients``).
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

LABEL = "y_edss4_3y"
XGB = {"n_estimators": 40, "learning_rate": 0.15, "n_jobs": 1}
FUSION = {"epochs": 6, "embed_dim": 8, "patience": 3, "batch_size": 64}
MODELS = ("dev_count_logistic", "dev_xgb", "ehr_xgb", "fusion_concat", "fusion_late")


@pytest.fixture(scope="module")
def cohort_comparison():
    """700 simulated patients with EHR: analysis table at the first visit and the comparison."""
    from features.cohort import build_cohort_table, build_index_visits, make_labels, validate_visits
    from features.ehr import EHRFeaturizer
    from models.compare import compare_models
    from normative.model import NormativeModel
    from normfuse.synthetic import simulate_cohort

    c = simulate_cohort(n_patients=700, n_controls_reference=600, seed=3, notes=False)
    nm = NormativeModel(list(c.regions), n_jobs=1).fit(c.reference_controls)
    dev = nm.deviations(c.patient_volumes, tail="lower")
    dev["n_crit_true"] = c.truth.z_patients["n_crit_neg"].to_numpy()
    # as the pipeline: a scan acquired on the index visit's day is available at that visit
    dev["scan_date"] = (c.patient_volumes["scan_date"].to_numpy(dtype="datetime64[ns]")
                        - np.timedelta64(1, "s"))
    visits = validate_visits(c.visits)
    index = build_index_visits(visits, rule="first")
    labels = make_labels(visits, index, thresholds=(4.0,), horizon_years=3.0)
    events = c.events.drop(columns=["unit"])
    fz = EHRFeaturizer(lookbacks=("365D", "all"), stats=("last", "mean", "min", "max", "count"))
    fz.fit(events, encounters=c.encounters)       # messy values are counted and logged
    ehr = fz.summaries(index, events=events, encounters=c.encounters)
    demo = c.demographics[["patient_id", "age_baseline", "sex"]].rename(columns={"age_baseline": "age"})
    table = build_cohort_table(index, deviations=dev.drop(columns=["n_crit_true"]),
                               scan_window_days=365, ehr_summaries=ehr, demographics=demo,
                               labels=[labels])
    table = table.loc[table[LABEL].notna()]
    truth = dev.set_index("subject_id").loc[dev["session_id"].eq("ses-01").to_numpy(), "n_crit_true"]
    res = compare_models(table, LABEL, models=MODELS, ablations=False, n_splits=3,
                         n_repeats=1, device="cpu", xgb_params=XGB, fusion_params=FUSION,
                         random_state=0)
    return c, table, truth, res


def test_cohort_table_has_the_planted_structure(cohort_comparison):
    """One row per patient; EHR windows before the first visit are empty (events start there)."""
    c, table, _, res = cohort_comparison
    assert table["patient_id"].is_unique and len(table) > 300
    assert 40 < table[LABEL].sum() < len(table) - 40
    ev = c.events.merge(c.demographics[["patient_id", "baseline_date"]], on="patient_id")
    assert (ev["time"] >= ev["baseline_date"]).all()
    ehr = table.filter(like="ehr__")
    # only the count summaries are defined (all zero); every value summary is missing
    assert np.nanmax(np.abs(ehr.to_numpy(dtype=float))) == 0
    assert res.summary().loc[list(MODELS), "ci_method"].eq("delong").all()


def test_planted_informativeness_on_the_cohort(cohort_comparison):
    """Deviations predict EDSS 4 within 3 years; first-visit EHR is noise; fusion keeps the signal.

    Expected values: the AUROC of the *true* baseline critical-deviation count for the
    same labels (the planted signal, 0.823 here: 417 patients, 95 events) bounds what the deviation models can
    reach up to estimation noise: the count logistic model's AUROC is within 0.05 of it.
    The EHR-only model's CI covers 0.5 (planted: no EHR before the index visit). Both
    fusion strategies, given deviations, noise EHR and demographics, stay within 0.05 of
    the deviation-only XGBoost and are not significantly worse than the count baseline
    (paired DeLong p > 0.05 or better).
    """
    from models.evaluate import delong

    _, table, truth, res = cohort_comparison
    s = res.summary()
    y = table[LABEL].to_numpy(dtype=int)
    n_true = truth.reindex(table["patient_id"].astype(str)).to_numpy(dtype=float)
    assert not np.isnan(n_true).any()
    auc_true = float(delong(y, n_true).auc[0])      # pROC: auc(roc(y, n_true))
    assert auc_true > 0.7
    assert s.loc["dev_count_logistic", "auroc_ci_low"] > 0.7
    assert abs(s.loc["dev_count_logistic", "auroc"] - auc_true) < 0.05   # seed 3: 0.801
    assert s.loc["dev_xgb", "auroc_ci_low"] > 0.7
    assert s.loc["ehr_xgb", "auroc_ci_low"] < 0.5 < s.loc["ehr_xgb", "auroc_ci_high"]  # 0.495 (0.433-0.558)
    assert s.loc["ehr_xgb", "p_vs_baseline"] < 1e-6     # far below the deviation baseline
    for fusion in ("fusion_concat", "fusion_late"):
        row = s.loc[fusion]
        assert row["auroc_ci_low"] > 0.7
        assert row["auroc"] > s.loc["dev_xgb", "auroc"] - 0.05
        assert row["delta_vs_baseline"] > 0 or row["p_vs_baseline"] > 0.05
    # the ordering the simulator plants: every model with deviations beats the EHR-only one
    with_dev = s.loc[["dev_count_logistic", "dev_xgb", "fusion_concat", "fusion_late"], "auroc"]
    assert (with_dev > s.loc["ehr_xgb", "auroc"] + 0.2).all()
