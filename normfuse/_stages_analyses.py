"""Pipeline stages: analyses (matching, count, mixed and survival models) and report.

Private: the public names live in :mod:`normfuse.pipeline`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from normfuse._pipeline_common import _baseline, _ns, log
from normfuse._stages_imaging import refuse_reference_overlap


def stage_analyses(cfg: Mapping, ctx: dict) -> dict:
    """Matching, NB count models, EDSS mixed model, KM/log-rank/Cox by a deviation rule."""
    from analyses.counts import fit_counts
    from analyses.cox import fit_cox
    from analyses.matching import match_controls
    from analyses.mixed import fit_mixed
    from analyses.stratify import DeviationRule, evaluate_rule
    from analyses.survival import endpoint, kaplan_meier, logrank

    a = cfg["analyses"]
    n = cfg["normative"]
    seed = cfg["study"]["seed"]
    t = ctx["tables"]
    dev = t["deviations"]
    base = _baseline(dev).set_index("subject_id", drop=False)
    tables, results = {}, {}
    count_rows = []
    if "deviations_controls" in t:
        ctrl = _baseline(t["deviations_controls"]).set_index("subject_id", drop=False)
        ref_ids = t.get("reference_fit_ids")
        if ref_ids is None:
            log.warning("analyses: the normative model was loaded from a file ([reference] "
                        "model), which records no subject ids, so nothing checks that the "
                        "matching controls ([controls] tables) were not in its reference fit; "
                        "make sure they were not")
            reference_ids = None
        else:
            refuse_reference_overlap(ctrl, ref_ids, "analyses")
            # and match_controls guards the same ids itself
            reference_ids = ref_ids["subject_id"].astype("string").dropna().unique().tolist()
        mr = match_controls(base, ctrl, on=tuple(cfg["controls"]["match_on"]),
                            reference_ids=reference_ids, random_state=seed)
        results["matching"] = mr
        tables["matching_balance"] = mr.summary().reset_index()
        both = mr.matched(base, ctrl)
        both = both.reset_index(drop=True)
        f = 'n_crit ~ C(group, Treatment("control")) + age'
        results["counts_theta_fixed"] = fit_counts(f, both, family="negbin", theta=a["theta"])
        results["counts_theta_ml"] = fit_counts(f, both, family="negbin")
        for k in ("counts_theta_fixed", "counts_theta_ml"):
            s = results[k].summary().reset_index().rename(columns={"index": "term"})
            s.insert(0, "model", k)
            count_rows.append(s)
        tables["count_models"] = pd.concat(count_rows, ignore_index=True)
    # EDSS at each scan: the visit closest in time within the window
    visits = t["visits"]
    sc = dev[["subject_id", "session_id", "scan_date", "n_crit", "age"]].copy()
    sc["scan_date"] = _ns(sc["scan_date"])
    v = visits[["patient_id", "visit_date", "edss"]].rename(columns={"patient_id": "subject_id"})
    v = v.assign(visit_date=_ns(v["visit_date"]),
                 subject_id=v["subject_id"].astype(str)).sort_values("visit_date")
    sc = sc.assign(subject_id=sc["subject_id"].astype(str)).sort_values("scan_date")
    paired = pd.merge_asof(sc, v, left_on="scan_date", right_on="visit_date", by="subject_id",
                           direction="nearest",
                           tolerance=pd.Timedelta(days=a["visit_window_days"]))
    nov = int(paired["edss"].isna().sum())
    if nov:
        log.warning("analyses: %d of %d scans have no EDSS visit within %g days; left out of "
                    "the mixed model", nov, len(paired), a["visit_window_days"])
    paired = paired.dropna(subset=["edss"])
    first = paired.groupby("subject_id")["scan_date"].transform("min")
    paired["years"] = (paired["scan_date"] - first).dt.days / 365.25
    results["mixed"] = fit_mixed("edss ~ n_crit + years", paired, group="subject_id")
    tables["mixed_model"] = results["mixed"].summary().reset_index().rename(
        columns={"index": "term"})
    # survival by the a-priori deviation rule
    regions = [r for r in a["rule_regions"] if r in base.columns]
    times = t["event_times"]
    surv = times.set_index("patient_id")
    sd = base.drop(columns=["subject_id"]).join(surv, how="inner")
    if regions and "time_cdp" in sd.columns:
        rule = DeviationRule(tuple(regions), k=a["rule_k"], threshold=n["threshold"], tail="lower")
        sd = sd.assign(high_risk=rule.apply(sd).astype(float))
        sd["risk_group"] = np.where(sd["high_risk"] > 0, "high", "low")
        ep = endpoint(sd, "cdp")
    if regions and "time_cdp" in sd.columns and ep["risk_group"].nunique() < 2:
        log.warning("analyses: the deviation rule puts all %d patients in one risk group; "
                    "KM/log-rank/Cox by risk group left out (check the normative calibration)",
                    len(ep))
    elif regions and "time_cdp" in sd.columns:
        results["km"] = kaplan_meier(ep, "duration", "event", group="risk_group")
        results["logrank"] = logrank(ep, "duration", "event", group="risk_group")
        results["cox"] = fit_cox(["high_risk", "age"], ep, "duration", "event")
        results["stratification"] = evaluate_rule(rule, sd, endpoints=("cdp",))
        tables["survival"] = results["stratification"].summary().reset_index().rename(
            columns={"index": "comparison"})
        tables["cox"] = results["cox"].summary().reset_index().rename(columns={"index": "term"})
    cs = pd.DataFrame({"value": {
        "patients": float(dev["subject_id"].nunique()),
        "patient scans": float(len(dev)),
        "baseline age mean": float(base["age"].mean()),
        "female fraction": float((base["sex"].astype(str) == "F").mean()),
        "baseline n_crit mean": float(base["n_crit"].mean()),
        "visits": float(len(visits)),
    }})
    tables["cohort_summary"] = cs.reset_index().rename(columns={"index": "quantity"})
    return {"tables": tables, "results": results}


def _report_inputs(ctx: dict) -> dict:
    """Map the pipeline's results onto the report's sections (aggregates only)."""
    res = dict(ctx["results"])
    t = ctx["tables"]
    out: dict = {}
    parts = []
    dev = t.get("deviations")
    if dev is not None and len(dev):
        base = _baseline(dev)
        parts.append(base[[c for c in ("age", "sex", "icv", "n_crit") if c in base]].assign(group="MS"))
    dc = t.get("deviations_controls")
    if dc is not None and len(dc):
        parts.append(dc[[c for c in ("age", "sex", "icv", "n_crit") if c in dc]].assign(group="control"))
    if parts:
        out["cohort"] = {"data": pd.concat(parts, ignore_index=True), "group": "group"}
    for key in ("normative", "deviations"):
        if res.get(key) is not None:
            out[key] = res.pop(key)
    counts = {name: res.pop(k) for k, name in (("counts_theta_fixed", "theta = 1 (as published)"),
                                                ("counts_theta_ml", "theta estimated"))
              if res.get(k) is not None}
    if counts:
        out["counts"] = counts
    if res.get("comparison") is not None:
        comp = out["comparison"] = res.pop("comparison")
        for key, getter in (("shap", "shap_summary"), ("modality_weights", "modality_weights")):
            try:
                val = getattr(comp, getter)()
            except (ValueError, KeyError, AttributeError) as exc:   # model not in the comparison
                log.info("report: no %s (%s)", key, exc)
                continue
            if val is not None and len(val):
                out[key] = {"all_xgb": val} if key == "shap" else val
    out.update({k: v for k, v in res.items() if v is not None})
    return out


def stage_report(cfg: Mapping, ctx: dict) -> dict:
    """report.html from the result objects (aggregates only; see analyses.report)."""
    from analyses.report import build_report

    rep = build_report(_report_inputs(ctx), title=cfg["study"]["name"],
                       threshold=cfg["normative"]["threshold"], tail=cfg["normative"]["tail"],
                       settings={"cv_folds": cfg["models"]["n_splits"],
                                 "label": f"EDSS {'>=' if cfg['labels']['inclusive'] else '>'} "
                                          f"{cfg['models']['label_threshold']:g} within "
                                          f"{cfg['models']['horizon_years']:g} years"})
    text = rep.to_html()
    return {"files": {"report.html": text.encode("utf-8")}}
