"""Pipeline stages on brain volumes: collect (read volumes) and normative (fit, adapt, score).

Private: the public names live in :mod:`normfuse.pipeline`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from normfuse._pipeline_common import _baseline, _need, _regions, load_reference_model, log
from normfuse._pipeline_inputs import read_volumes


def stage_collect(cfg: Mapping, ctx: dict) -> dict:
    """Read the patients', reference, local and matching controls' volumes.

    Each section's ``join`` tables are added and its ``where`` selections applied as the
    subcommands' ``--join``/``--where`` do (messages name the section's keys).
    """
    p = cfg["patients"]
    src = p["subjects_dir"] or p["tables"]
    if p["subjects_dir"]:
        _need(p["subjects_dir"], "[patients] subjects_dir", folder=True)
    out = {"volumes_patients": read_volumes(src, p["demographics"] or None, atlases=p["atlases"],
                                            what="patients", sex_codes=p["sex_codes"],
                                            join=p["join"], where=p["where"],
                                            config_section="patients")}
    for sec, name in (("reference", "volumes_reference"), ("adaptation", "volumes_adaptation"),
                      ("controls", "volumes_controls")):
        s = cfg[sec]
        if s["tables"]:
            out[name] = read_volumes(s["tables"], s["demographics"] or None, what=sec,
                                     sex_codes=s["sex_codes"], join=s["join"],
                                     where=s["where"], config_section=sec)
    return {"tables": out}


def _known_sites(func, who: str, cfg: Mapping, model=None):
    """Run ``func``; scans from sites the model does not know get the config fix."""
    from normfuse.errors import UnknownSiteError

    try:
        return func()
    except UnknownSiteError as exc:
        if not exc.sites:       # raised without the structured details: keep its own words
            raise
        saved = cfg["reference"]["model"]
        if saved:
            raise UnknownSiteError(
                f"[{who}] site(s) {exc.sites[:10]} ({exc.n_rows} scans) are not among the sites "
                f"of the {_describe_loaded(model)} ([reference] model = {saved}). A normative "
                "model must be adapted to every scanner it scores: add an [adaptation] section "
                "with tables and demographics of healthy controls scanned at those sites "
                "(n_per_site = 20 or more; they are kept out of the matching pool), or set "
                "[reference] model to a model already adapted to them.", sites=exc.sites,
                n_rows=exc.n_rows, known=exc.known) from exc
        head = (f"site(s) {exc.sites[:10]} ({exc.n_rows} scans) were neither in the reference "
                "fit nor adapted")
        excl = cfg["reference"]["exclude_sites"]
        why = (f" ([reference] exclude_sites leaves out {excl})" if excl else "")
        raise UnknownSiteError(
            f"[{who}] {head}{why}. The normative model needs healthy controls from every "
            "site it scores: add an [adaptation] section with tables and demographics of "
            "local controls from those sites (n_per_site = 20 or more), or put that site's "
            "controls in [reference] tables.", sites=exc.sites, n_rows=exc.n_rows,
            known=exc.known) from exc


def _describe_loaded(model) -> str:
    """'braincharts reference model (82 training sites from other cohorts, adapted to [...])'."""
    from normative.braincharts import BrainchartsModel

    if model is None:
        return "saved reference model"
    n_ref = int(getattr(model, "n_reference_sites_", 0))
    extra = list(model.sites_[n_ref:]) if hasattr(model, "sites_") else []
    adapted = f", adapted to {extra[:10]}" if extra else ", adapted to none"
    if isinstance(model, BrainchartsModel):
        return (f"braincharts reference model ({n_ref} training sites from other cohorts"
                f"{adapted})")
    return f"saved reference model ({n_ref} reference sites{adapted})"


def _braincharts_for_study(model, cfg: Mapping, pat: pd.DataFrame):
    """The braincharts model restricted to the study's regions (a subset of its measures).

    ``[normative] regions`` when set (each must be a measure of the model and a column of
    the patients' table); otherwise every measure of the model that the patients' table has.
    """
    from normfuse.errors import ColumnContractError

    saved = cfg["reference"]["model"]
    want = list(cfg["normative"]["regions"])
    held = set(model.responses_)
    if want:
        missing = [r for r in want if r not in held]
        if missing:
            raise ColumnContractError(
                f"[normative] regions lists {len(missing)} region(s) that the braincharts model "
                f"([reference] model = {saved}) does not hold.\nMissing: {missing[:20]}"
                f"{' ...' if len(missing) > 20 else ''}\nThe model holds "
                f"{len(model.responses_)}: {list(model.responses_)[:20]}"
                f"{' ...' if len(model.responses_) > 20 else ''}.\nFix one of: 1) import them "
                "(`normfuse normative import-braincharts ZIP --measures ... -o FOLDER`), if the published "
                "models have them; 2) leave them out of [normative] regions.")
        regions = _regions(cfg, pat)
    else:
        regions = [r for r in model.responses_ if r in pat.columns]
        if not regions:
            raise ColumnContractError(
                f"[normative] none of the {len(model.responses_)} measures of the braincharts "
                f"model ([reference] model = {saved}) is a column of the patients' volumes "
                f"(e.g. {list(model.responses_)[:5]}). Braincharts uses FreeSurfer 7 region "
                "names; set [normative] regions to the regions to score.")
        log.info("normative: scoring the %d braincharts measures present in the patients' "
                 "table", len(regions))
    return model.subset(regions)


def _refuse_known_adaptation_sites(model, local: pd.DataFrame, cfg: Mapping) -> None:
    """A loaded model adapts to new sites only: name [adaptation] rows from sites it knows."""
    from normfuse.errors import ColumnContractError

    sites = local["site"].astype("string")
    known = sorted(set(sites.dropna().tolist()) & set(model.sites_))
    if known:
        raise ColumnContractError(
            f"[adaptation] tables hold {int(sites.isin(known).sum())} controls from site(s) "
            f"{known[:10]} that the {_describe_loaded(model)} ([reference] model = "
            f"{cfg['reference']['model']}) already knows; adaptation adds new sites only. Fix "
            "one of: 1) leave those sites out with [adaptation] where = "
            f"[\"site!={','.join(known[:3])}\"]; 2) drop the [adaptation] tables when the saved "
            "model is adapted to the study's sites already.")


#: Columns of the ``reference_fit_ids`` table (those present in the reference volumes).
_REF_ID_COLS = ("subject_id", "session_id", "site")


def reference_fit_ids(fit_on: pd.DataFrame) -> pd.DataFrame:
    """The scans the normative model was fitted on: subject_id (and session_id, site), as text."""
    cols = [c for c in _REF_ID_COLS if c in fit_on.columns]
    return pd.DataFrame({c: fit_on[c].astype("string").to_numpy() for c in cols})


def refuse_reference_overlap(controls: pd.DataFrame, ref_ids: pd.DataFrame, stage: str) -> None:
    """Raise when matching controls were in the normative reference fit.

    Keyed on ``subject_id``: another session of a subject in the fit is not out-of-sample
    either. The message names the overlapping ids and the config keys to change.
    """
    from normfuse.errors import ColumnContractError

    ref = pd.Index(ref_ids["subject_id"].astype("string").dropna().unique())
    subj = controls["subject_id"].astype("string")
    hit = subj.isin(ref).to_numpy(dtype=bool)
    if not hit.any():
        return
    ids = sorted(subj[hit].unique().tolist())
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    raise ColumnContractError(
        f"[{stage}] {len(ids)} matching controls ([controls] tables) were used to fit the "
        f"normative reference model ([reference] tables): {shown}. A control in the reference "
        "fit has Z-scores shrunk toward 0, which biases every patient-control comparison, so "
        "matched controls are never taken from the fit. Fix one of: 1) point [controls] "
        "tables (or demographics) at controls outside the reference; 2) leave them out of "
        f"the matching pool with [controls] where = [\"subject_id!={','.join(ids[:3])}"
        f"{',...' if len(ids) > 3 else ''}\"] (or a column that marks the split); 3) leave "
        "them out of the reference with [reference] where.")


def stage_normative(cfg: Mapping, ctx: dict) -> dict:
    """Fit (or load) the normative model, adapt it, score patients and controls."""
    from normative.braincharts import BrainchartsModel
    from normative.deviations import critical_deviations, expected_counts
    from normative.metrics import z_calibration
    from normative.model import NormativeModel

    n = cfg["normative"]
    seed = cfg["study"]["seed"]
    t = ctx["tables"]
    pat = t["volumes_patients"]
    thr, tail = n["threshold"], n["tail"]
    tables: dict[str, pd.DataFrame] = {}
    held = None
    ref_ids = None       # a model loaded from a file records no subject ids
    loaded = bool(cfg["reference"]["model"])
    if loaded:
        model = load_reference_model(_need(cfg["reference"]["model"], "[reference] model",
                                           folder=True))
        if isinstance(model, BrainchartsModel):
            model = _braincharts_for_study(model, cfg, pat)
        regions = list(model.responses_)
    else:
        ref = t["volumes_reference"]
        excl = cfg["reference"]["exclude_sites"]
        if excl:
            keep = ~ref["site"].astype(str).isin(excl).to_numpy()
            log.info("reference: %d controls at excluded sites %s left out of the fit",
                     int((~keep).sum()), excl)
            ref = ref.loc[keep]
        regions = _regions(cfg, ref, pat)
        frac = cfg["reference"]["holdout_fraction"]
        rng = np.random.default_rng(seed)
        is_held = rng.random(len(ref)) < frac
        held, fit_on = ref.loc[is_held], ref.loc[~is_held]
        model = NormativeModel(regions, likelihood=n["likelihood"], device=n["device"])
        model.fit(fit_on)
        ref_ids = reference_fit_ids(fit_on)
        tables["reference_fit_ids"] = ref_ids
    adapt = t.get("volumes_adaptation")
    used_local = pd.DataFrame()
    if adapt is not None and len(adapt):
        k = cfg["adaptation"]["n_per_site"]
        used_local = adapt.groupby("site", sort=False).head(k) if k else adapt
        if loaded:
            _refuse_known_adaptation_sites(model, used_local, cfg)
        model = model.adapt(used_local)
        log.info("normative: adapted to sites %s with %d local controls",
                 sorted(used_local["site"].astype(str).unique()), len(used_local))
    dev_main = _known_sites(lambda: model.deviations(pat, threshold=thr, tail=tail), "patients",
                            cfg, model)
    dev_both = model.deviations(pat, threshold=thr, tail="both")
    for d in (dev_main, dev_both):
        if "scan_date" in pat.columns:
            d["scan_date"] = pat["scan_date"].to_numpy()
        for c in ("age", "sex", "site", "icv"):
            d[c] = pat[c].to_numpy()
    tables["deviations"] = dev_main
    tables["deviations_both"] = dev_both
    rows = []
    z_held = None
    ctrl = t.get("volumes_controls")
    dc = None
    if ctrl is not None and len(ctrl):
        if len(used_local):
            used = set(zip(used_local["subject_id"].astype(str), used_local["site"].astype(str), strict=False))
            mask = np.array([(a, b) not in used for a, b in
                             zip(ctrl["subject_id"].astype(str), ctrl["site"].astype(str), strict=False)],
                            dtype=bool)
            log.info("controls: %d used for adaptation removed from the matching pool",
                     int((~mask).sum()))
            ctrl = ctrl.loc[mask]
        if ref_ids is not None:          # fail before the later stages run, not at matching
            refuse_reference_overlap(ctrl, ref_ids, "normative")
        dc = _known_sites(lambda: model.deviations(ctrl, threshold=thr, tail=tail),
                          "controls", cfg, model)
        for c in ("age", "sex", "site", "icv"):
            dc[c] = ctrl[c].to_numpy()
        tables["deviations_controls"] = dc
    if loaded and dc is not None and len(dc):
        # a loaded model has no held-out reference controls; the local controls outside
        # the adaptation set are the out-of-sample healthy scans at the study's sites
        held = ctrl
        log.info("normative: calibration checked on %d local controls not used for "
                 "adaptation (the loaded model has no held-out reference controls)", len(held))
    if held is not None and len(held):
        z_held = dc[regions] if held is ctrl else model.transform(held)
        zc = z_held.to_numpy(dtype=float)
        cal = pd.DataFrame({"z_mean": np.nanmean(zc, 0), "z_sd": np.nanstd(zc, 0, ddof=1),
                            "frac_below": (zc < -thr).mean(0), "frac_above": (zc > thr).mean(0)},
                           index=pd.Index(regions, name="region"))
        pooled = z_calibration(zc, thr)
        tables["normative_calibration"] = pd.concat(
            [cal.reset_index(), pd.DataFrame([{"region": "(all regions pooled)",
                                               "z_mean": pooled["z_mean"],
                                               "z_sd": pooled["z_sd"]}])], ignore_index=True)
        tables["normative_regions"] = model.score(held).rename_axis("region").reset_index()
        if held is not ctrl:
            cd = critical_deviations(z_held, thr, tail)
            rows.append(("held-out reference controls", len(held),
                         float(cd.counts["n_crit"].mean())))
    if dc is not None:
        rows.append(("local controls (not in fit or adaptation)", len(dc),
                     float(dc["n_crit"].mean())))
    exp = expected_counts(z_held, threshold=thr, tail=tail) if z_held is not None else \
        expected_counts(n_regions=len(regions), threshold=thr, tail=tail)
    base = _baseline(dev_main)
    rows.append(("patients, baseline scans", len(base), float(base["n_crit"].mean())))
    cc = pd.DataFrame(rows, columns=["group", "n", "mean_n_crit"])
    cc["expected_n_crit"] = float(exp["mean"].iloc[0])
    cc["expected_ci_low"] = float(exp["ci_low"].iloc[0])
    cc["expected_ci_high"] = float(exp["ci_high"].iloc[0])
    cc["expected_source"] = str(exp["source"].iloc[0])
    cc["tail"] = tail
    cc["threshold"] = thr
    tables["critical_counts"] = cc
    key_regions = [r for r in ("Left-Thalamus", "Left-Hippocampus", "Left-Putamen",
                               "Left-Lateral-Ventricle") if r in regions] or regions[:4]
    report_inputs = {"model": model, "patients": pat.loc[base.index] if len(base) else pat,
                     "responses": key_regions}
    if isinstance(model, BrainchartsModel):
        # centile curves at the study's first site (braincharts' own sites are other cohorts')
        pat_sites = pat["site"].astype("string").dropna().unique().tolist()
        report_inputs["site"] = next((s for s in sorted(pat_sites) if s in model.sites_),
                                     model.sites_[0])
    if held is not None and len(held):
        report_inputs["held_out"] = held
        if held is ctrl:
            report_inputs["held_out_label"] = ("local controls outside the adaptation set; the "
                                               "loaded model has no held-out reference controls")
    return {"tables": tables, "normative_model": model, "models": {"normative": model},
            "results": {"normative": report_inputs, "deviations": dev_main}}
