"""Pipeline stages on clinical data: features (analysis table) and models (compare_models).

Private: the public names live in :mod:`normfuse.pipeline`.
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from normfuse._pipeline_common import _baseline, _ns, log
from normfuse._pipeline_inputs import _clinical


def label_options(cfg: Mapping) -> dict:
    """Keyword arguments of ``features.cohort.make_labels`` from ``[models]`` and ``[labels]``."""
    m, lab = cfg["models"], cfg["labels"]
    return {"thresholds": (m["label_threshold"],), "horizon_years": m["horizon_years"],
            "inclusive": lab["inclusive"], "short_followup": lab["short_followup"],
            "already_reached": lab["already_reached"]}


def event_time_options(cfg: Mapping) -> dict:
    """Keyword arguments of ``features.cohort.time_to_event_table`` from ``[labels]``
    (the confirmed-progression ones reach ``confirmed_progression`` through it)."""
    lab = cfg["labels"]
    return {"milestones": tuple(lab["milestones"]), "inclusive": lab["inclusive"],
            "confirm_days": lab["confirm_days"],
            "deltas": tuple(tuple(d) for d in lab["deltas"]),
            "already_reached": lab["already_reached"], "sustained": lab["sustained"]}


def stage_features(cfg: Mapping, ctx: dict) -> dict:
    """Index visits, labels, event times, EHR summaries, note embeddings -> analysis table."""
    from features.cohort import (
        build_cohort_table,
        build_index_visits,
        make_labels,
        time_to_event_table,
        validate_visits,
    )

    f = cfg["features"]
    clin = _clinical(cfg)
    visits = validate_visits(clin["visits"])
    index = build_index_visits(visits, rule=f["index_visits"])
    first = build_index_visits(visits, rule="first")
    labels = make_labels(visits, index, **label_options(cfg))
    tte = time_to_event_table(visits, index, **event_time_options(cfg))
    times = time_to_event_table(visits, first, **event_time_options(cfg))
    times.insert(0, "patient_id", first["patient_id"].to_numpy())
    ehr = notes = None
    if f["ehr"] and clin["events"] is not None and len(clin["events"]):
        from features.ehr import EHRFeaturizer

        fz = EHRFeaturizer(lookbacks=tuple(f["lookbacks"]),
                           stats=("last", "mean", "min", "max", "count"))
        fz.fit(clin["events"], encounters=clin["encounters"])
        # summaries re-read the same events: their notices (dropped events, censored
        # values, same counts) were just given by fit
        fz.set_params(log_level="debug")
        ehr = fz.summaries(index, events=clin["events"], encounters=clin["encounters"])
    if f["notes"] and clin["notes"] is not None and len(clin["notes"]):
        from features.notes import NoteEmbedder

        ne = NoteEmbedder("tfidf", n_components=f["note_components"],
                          random_state=cfg["study"]["seed"])
        try:
            ne.fit(clin["notes"], index=index)
            notes = ne.transform(clin["notes"], index)
        except ValueError as exc:
            log.warning("features: note embeddings left out: %s", exc)
    dev = ctx["tables"]["deviations"]
    dev_join = dev.drop(columns=["age", "sex", "site", "icv", "age_out_of_range"],
                        errors="ignore").assign(scan_date=_ns(dev["scan_date"]))
    pat_demo = _baseline(dev)[["subject_id", "age", "sex"]].rename(
        columns={"subject_id": "patient_id"})
    # an MRI acquired on the index visit's day counts as available at that visit
    # (scan_date <= index_date); EHR events and notes must be strictly before it
    table = build_cohort_table(index, deviations=dev_join, scan_window_days=f["scan_window_days"],
                               scan_at_index=True, ehr_summaries=ehr, note_embeddings=notes,
                               demographics=pat_demo, labels=[labels, tte])
    return {"tables": {"visits": visits, "analysis_table": table, "event_times": times}}


def stage_models(cfg: Mapping, ctx: dict) -> dict:
    """Deviation features vs deep fusion on identical patient-grouped folds (models.compare)."""
    from models.xgb import XGBClassifierModel
    from normfuse.contracts import milestone_label

    m = cfg["models"]
    seed = cfg["study"]["seed"]
    table = ctx["tables"]["analysis_table"]
    label = milestone_label(m["label_threshold"], m["horizon_years"])
    tables, results, models = {}, {}, {}
    if not m["enabled"]:
        return {"tables": tables, "results": results}
    keep = table[label].notna().to_numpy()
    if (~keep).any():
        log.info("models: %d of %d index rows without a %s label (short follow-up or already "
                 "reached) left out", int((~keep).sum()), len(table), label)
    tab = table.loc[keep]
    y = tab[label].astype(int)
    if y.nunique() < 2 or min(int(y.sum()), int((1 - y).sum())) < m["n_splits"]:
        log.warning("models: too few events (%d of %d) for %d-fold CV; stage skipped",
                    int(y.sum()), len(y), m["n_splits"])
        return {"tables": {"model_metrics": pd.DataFrame(
            {"note": [f"too few events for {label}"]})}, "results": results}
    from features.ehr import EHRFeaturizer
    from features.notes import NoteEmbedder
    from models.compare import compare_models
    from models.compare_inputs import FoldFeaturizer

    f = cfg["features"]
    hook = None
    if (f["ehr"] or f["notes"]) and any(c.startswith(("ehr__", "txt__")) for c in tab.columns):
        # the EHR and note featurizers are refitted inside every training fold; the EHR
        # notices (dropped events, censored values) were given for the whole cohort in the
        # features stage, so the per-fold repeats go to DEBUG
        clin = _clinical(cfg)
        hook = FoldFeaturizer(
            notes=clin["notes"] if f["notes"] and any(c.startswith("txt__") for c in tab.columns) else None,
            events=clin["events"] if f["ehr"] and any(c.startswith("ehr__") for c in tab.columns) else None,
            encounters=clin["encounters"],
            note_embedder=NoteEmbedder("tfidf", n_components=f["note_components"], random_state=seed),
            ehr_featurizer=EHRFeaturizer(lookbacks=tuple(f["lookbacks"]),
                                         stats=("last", "mean", "min", "max", "count"),
                                         log_level="debug"))
    # [models] n_jobs: worker processes for the (repeat, fold) jobs; every XGBoost fit
    # stays on one thread (7x faster than all cores at this size), so results do not
    # depend on n_jobs
    xgb_params = {"n_estimators": m["n_estimators"], "n_jobs": 1}
    comp = compare_models(tab, y, models=tuple(m["compare"]), ablations=m["ablations"],
                          n_splits=m["n_splits"], n_repeats=m["n_repeats"], preprocessors=hook,
                          n_boot=m["n_boot"], ci=m["ci"], random_state=seed, device="cpu",
                          xgb_params=xgb_params, n_jobs=m["n_jobs"])
    results["comparison"] = comp
    tables["model_comparison"] = comp.summary().reset_index()
    tables["model_predictions"] = comp.oof_predictions
    tables["model_metrics"] = comp.per_repeat.reset_index() if hasattr(comp.per_repeat, "reset_index") \
        else pd.DataFrame(comp.per_repeat)
    # final models on every labelled row, saved for scoring new patients
    sets = {"deviations": ("dev__", "demo__"),
            "all": tuple(p for p in ("dev__", "ehr__", "txt__", "demo__")
                         if any(c.startswith(p) for c in tab.columns))}
    for name, prefixes in sets.items():
        models[f"xgb_{name}"] = XGBClassifierModel(
            feature_prefixes=prefixes, n_estimators=m["n_estimators"], n_jobs=1,
            random_state=seed, device="cpu").fit(tab, y)
    # the CI method asked for and the one compare_models used ('auto' resolves per data)
    info = {"ci": m["ci"], "ci_method": comp.settings.get("ci_method"),
            "max_rows_per_patient": comp.settings.get("max_rows_per_patient")}
    return {"tables": tables, "results": results, "models": models, "manifest": info}
