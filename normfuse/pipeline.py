"""The whole pipeline as named stages: collect -> normative -> features -> models -> analyses -> report.

Each stage is a plain function ``stage_<name>(config, ctx) -> dict`` that takes the study
configuration (:mod:`normfuse.config`) and the tables/objects earlier stages produced, and
returns its own tables and result objects. :func:`run_pipeline` runs them in order,
writes every table as CSV and Parquet under ``out/tables``, models under ``out/models``,
``report.html`` and ``manifest.json``, and returns a :class:`PipelineResults`.

Output folder ``out/``::

    manifest.json        config, config digest, input SHA-256s, package versions, seed,
                         stage timings, finished stages, stage_info (settings a stage
                         resolved at run time, e.g. models: ci asked for and ci_method
                         used) (written atomically after each stage)
    tables/*.csv|parquet every result table (see PipelineResults.tables)
    models/normative/    the normative model (NormativeModel.save; adapted when adaptation ran)
    models/xgb_*/        XGBoost models (save_model JSON inside a checksummed folder)
    report.html          the report

Writes are atomic: a stage writes into a hidden staging folder and its files are moved
into place only when the whole stage succeeded, so an interrupted or failing stage
leaves no partial result files. Resume: a re-run with the same config and inputs skips
the finished stages (their tables are read back); a different config or changed inputs
are refused unless ``force=True``, which clears the folder's previous results.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normfuse import __version__
from normfuse.checks import get_logger
from normfuse.errors import InputFormatError, NormfuseError
from normfuse.persist import atomic_write_text

__all__ = ["STAGES", "PipelineResults", "OutputFolderError", "run_pipeline", "read_volumes",
           "demo_config", "file_digest", "MANIFEST"]

log = get_logger("normfuse.pipeline")

#: Stage names in run order.
STAGES = ("collect", "normative", "features", "models", "analyses", "report")
MANIFEST = "manifest.json"
_FORMAT = "normfuse-run"
_KEYS = ["subject_id", "session_id"]


class OutputFolderError(NormfuseError, ValueError):
    """The output folder cannot be used: another run's results, not writable, or not a folder."""


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class PipelineResults:
    """Everything a pipeline run produced, for the report and for interactive use.

    Attributes
    ----------
    config : the validated study configuration.
    tables : name -> DataFrame of every table written under ``out/tables`` (same names):
        ``volumes_patients``, ``volumes_reference``, ``volumes_adaptation``,
        ``volumes_controls`` (collect); ``deviations`` (patients, main tail),
        ``deviations_both`` (both tails), ``deviations_controls``,
        ``normative_calibration`` (held-out reference controls: Z mean/SD, share
        |Z| > threshold per region), ``normative_regions`` (EXPV, SMSE, MSLL, Rho per region
        on held-out controls), ``critical_counts`` (expected vs observed critical
        deviations: held-out controls, local controls, patients) (normative);
        ``visits``, ``analysis_table`` (features); ``model_predictions``,
        ``model_metrics`` (models); ``cohort_summary``, ``matching_balance``,
        ``count_models``, ``mixed_model``, ``survival`` (analyses).
    normative_model : the fitted (and adapted) :class:`normative.model.NormativeModel`.
    results : name -> result object (frozen dataclasses with ``summary()``):
        ``matching`` (MatchResult), ``counts_theta_fixed`` / ``counts_theta_ml``
        (CountModelResult, negative binomial with theta fixed / ML), ``mixed``
        (MixedModelResult, EDSS ~ n_crit + years, random intercept per patient),
        ``km`` (KaplanMeierResult by risk group), ``logrank``, ``cox`` (CoxResult),
        ``stratification`` (StratificationResult of the a-priori rule), ``evaluation_<set>``
        (EvaluationResult per feature set), ``comparison`` (when models.compare exists).
    paths : name -> Path of every file written (tables, models, report, manifest).
    timings : stage -> seconds (0 for stages resumed from an earlier run).
    skipped : stages resumed (not re-run).
    """

    config: dict
    tables: dict[str, pd.DataFrame]
    normative_model: Any
    results: dict[str, Any]
    paths: dict[str, Path]
    timings: dict[str, float]
    skipped: tuple[str, ...] = ()

    def summary(self) -> pd.DataFrame:
        """Stage timings and whether each stage ran or was resumed."""
        return pd.DataFrame({"seconds": pd.Series(self.timings, dtype=float),
                             "resumed": pd.Series({s: s in self.skipped for s in self.timings})})


# ----------------------------------------------------------------------------- inputs
def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    else:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _need(path: str, what: str, *, folder: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputFormatError(f"{what} not found; check the path in the config.", path=p)
    if folder and not p.is_dir():
        raise InputFormatError(f"{what} must be a folder, but this is a file.", path=p)
    if not folder and p.is_dir() and what != "volumes":
        raise InputFormatError(f"{what} must be a file, but this is a folder.", path=p)
    return p


def _read_plain_table(path: Path, what: str) -> pd.DataFrame:
    suf = path.suffix.lower()
    try:
        if suf == ".parquet":
            return pd.read_parquet(path)
        if suf in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suf in (".tsv", ".txt") else ",")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{what} could not be read as a {suf} table ({exc}).",
                               path=path) from exc
    raise InputFormatError(f"{what} has suffix {suf!r}; expected .csv, .tsv, .txt or .parquet.",
                           path=path)


def _split_session_folders(vols: pd.DataFrame) -> pd.DataFrame:
    """Split FreeSurfer folder names ``<subject>_<session>`` (``sub-01_ses-01``) into both ids."""
    if "session_id" in vols.columns and vols["session_id"].notna().any():
        return vols
    sid = vols["subject_id"].astype(str)
    parts = sid.str.extract(r"^(?P<sub>.+?)_(?P<ses>ses-[^_]+)$")
    if parts["sub"].notna().all():
        vols = vols.copy()
        vols["subject_id"] = parts["sub"].to_numpy(dtype=object)
        vols["session_id"] = parts["ses"].to_numpy(dtype=object)
    return vols


def read_volumes(paths: str | Sequence[str], demographics: str | None = None, *,
                 atlases: Sequence[str] = ("aseg", "aparc"), what: str = "volumes") -> pd.DataFrame:
    """Read a volumes table from a SUBJECTS_DIR or from volume tables, with demographics.

    Parameters
    ----------
    paths : a SUBJECTS_DIR / BIDS-derivatives folder, or one or more tables:
        ``asegstats2table``/``aparcstats2table`` outputs (``.txt``, read with
        :func:`normative.freesurfer.read_stats_table`), or ``.csv``/``.tsv``/``.parquet``
        tables in the volumes contract. Several tables are joined on ``subject_id``
        (and ``session_id``).
    demographics : table with ``subject_id`` (optional ``session_id``), ``age``, ``sex``,
        ``site`` and optionally ``scan_date``; filled in with
        :func:`normative.freesurfer.attach_demographics`.
    atlases : stats files read per scan from a SUBJECTS_DIR.

    Returns
    -------
    pandas.DataFrame in the volumes contract (plus ``scan_date`` when given).

    Raises
    ------
    InputFormatError : a path is missing, of the wrong kind, or unreadable.
    """
    from normative.freesurfer import attach_demographics, collect_subjects_dir, read_stats_table

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputFormatError(f"no {what} given; set the tables or subjects_dir key.")
    first = Path(paths[0])
    if len(paths) == 1 and first.is_dir():
        vols = collect_subjects_dir(first, atlases=tuple(atlases), measures=("volume",))
        vols = _split_session_folders(vols)
    else:
        frames = []
        for p in paths:
            p = _need(p, f"{what} table")
            if p.is_dir():
                raise InputFormatError(f"{what}: a folder was given among tables; pass either one "
                                       "SUBJECTS_DIR or table files.", path=p)
            if p.suffix.lower() == ".txt":
                frames.append(read_stats_table(p))
            else:
                frames.append(_read_plain_table(p, f"{what} table"))
        vols = frames[0]
        for f in frames[1:]:
            keys = [k for k in _KEYS if k in vols.columns and k in f.columns
                    and vols[k].notna().any()] or ["subject_id"]
            new = [c for c in f.columns if c not in vols.columns]
            vols = vols.merge(f[keys + new], on=keys, how="inner", validate="one_to_one")
            if len(vols) < len(frames[0]):
                log.warning("%s: %d rows of %s have no row in %s and were dropped", what,
                            len(frames[0]) - len(vols), paths[0], p)
    if "session_id" not in vols.columns:
        vols["session_id"] = None
    if demographics:
        demo = _read_plain_table(_need(demographics, f"{what} demographics"),
                                 f"{what} demographics")
        if "session_id" in demo.columns and vols["session_id"].isna().all():
            demo = demo.drop(columns="session_id")
        vols = attach_demographics(vols, demo.drop(columns=["scan_date"], errors="ignore"))
        if "scan_date" in demo.columns:
            keys = ["subject_id"] + (["session_id"] if "session_id" in demo.columns else [])
            sd = demo[keys + ["scan_date"]].astype({k: str for k in keys})
            left = vols[keys].astype(str)
            got = left.merge(sd, on=keys, how="left")
            vols = vols.copy()
            vols["scan_date"] = _ns(got["scan_date"].to_numpy())
    return vols


# ----------------------------------------------------------------------------- helpers
def _regions(cfg: Mapping, *tables: pd.DataFrame) -> list[str]:
    from normative.freesurfer import harmonise_region_names  # noqa: F401 (names contract)

    want = cfg["normative"]["regions"]
    meta = {"subject_id", "session_id", "age", "sex", "site", "icv", "volume_kind", "scan_date",
            "matched_patient_id", "eTIV", "EstimatedTotalIntraCranialVol"}
    if want:
        for t in tables:
            miss = [r for r in want if r not in t.columns]
            if miss:
                raise InputFormatError(f"[normative] regions lists {miss[:5]} which a volumes "
                                       "table lacks; fix the list or the tables.")
        return list(want)
    from normfuse.synthetic._regions import CORTICAL_REGIONS, SUBCORTICAL_REGIONS

    standard = list(SUBCORTICAL_REGIONS) + list(CORTICAL_REGIONS)
    common = [r for r in standard if all(r in t.columns for t in tables)]
    if not common:
        common = [c for c in tables[0].columns if c not in meta
                  and all(c in t.columns for t in tables)
                  and pd.api.types.is_numeric_dtype(tables[0][c].dtype)]
    if not common:
        raise InputFormatError("no region column is shared by the reference and the patients' "
                               "tables; set [normative] regions.")
    return common


def _baseline(df: pd.DataFrame) -> pd.DataFrame:
    """First scan per subject (by scan_date when present, else session_id)."""
    order = "scan_date" if "scan_date" in df.columns else "session_id"
    d = df.sort_values(["subject_id", order], kind="stable")
    return d.drop_duplicates("subject_id", keep="first")


def _progress(iterable, total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False, unit="stage")


# ----------------------------------------------------------------------------- stages
def stage_collect(cfg: Mapping, ctx: dict) -> dict:
    """Read the patients', reference, local and matching controls' volumes."""
    p = cfg["patients"]
    src = p["subjects_dir"] or p["tables"]
    if p["subjects_dir"]:
        _need(p["subjects_dir"], "[patients] subjects_dir", folder=True)
    out = {"volumes_patients": read_volumes(src, p["demographics"] or None, atlases=p["atlases"],
                                            what="patients")}
    for sec, name in (("reference", "volumes_reference"), ("adaptation", "volumes_adaptation"),
                      ("controls", "volumes_controls")):
        s = cfg[sec]
        if s["tables"]:
            out[name] = read_volumes(s["tables"], s["demographics"] or None, what=sec)
    return {"tables": out}


def stage_normative(cfg: Mapping, ctx: dict) -> dict:
    """Fit (or load) the normative model, adapt it, score patients and controls."""
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
    if cfg["reference"]["model"]:
        model = NormativeModel.load(_need(cfg["reference"]["model"], "[reference] model",
                                          folder=True))
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
    adapt = t.get("volumes_adaptation")
    used_local = pd.DataFrame()
    if adapt is not None and len(adapt):
        k = cfg["adaptation"]["n_per_site"]
        used_local = adapt.groupby("site", sort=False).head(k) if k else adapt
        model = model.adapt(used_local)
        log.info("normative: adapted to sites %s with %d local controls",
                 sorted(used_local["site"].astype(str).unique()), len(used_local))
    dev_main = model.deviations(pat, threshold=thr, tail=tail)
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
    if held is not None and len(held):
        z_held = model.transform(held)
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
        cd = critical_deviations(z_held, thr, tail)
        rows.append(("held-out reference controls", len(held), float(cd.counts["n_crit"].mean())))
    exp = expected_counts(z_held, threshold=thr, tail=tail) if z_held is not None else \
        expected_counts(n_regions=len(regions), threshold=thr, tail=tail)
    ctrl = t.get("volumes_controls")
    if ctrl is not None and len(ctrl):
        if len(used_local):
            used = set(zip(used_local["subject_id"].astype(str), used_local["site"].astype(str), strict=False))
            mask = np.array([(a, b) not in used for a, b in
                             zip(ctrl["subject_id"].astype(str), ctrl["site"].astype(str), strict=False)],
                            dtype=bool)
            log.info("controls: %d used for adaptation removed from the matching pool",
                     int((~mask).sum()))
            ctrl = ctrl.loc[mask]
        dc = model.deviations(ctrl, threshold=thr, tail=tail)
        for c in ("age", "sex", "site", "icv"):
            dc[c] = ctrl[c].to_numpy()
        tables["deviations_controls"] = dc
        rows.append(("local controls (not in fit or adaptation)", len(dc),
                     float(dc["n_crit"].mean())))
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
    if held is not None and len(held):
        report_inputs["held_out"] = held
    return {"tables": tables, "normative_model": model, "models": {"normative": model},
            "results": {"normative": report_inputs, "deviations": dev_main}}


def _clinical(cfg: Mapping) -> dict[str, pd.DataFrame | None]:
    from features.sources import OMOPSource, read_table

    c = cfg["clinical"]
    out: dict[str, pd.DataFrame | None] = {"visits": None, "events": None, "encounters": None,
                                           "notes": None, "demographics": None}
    if c["source"]:
        src = c["source"]
        if not src.startswith(("postgres", "postgresql")):
            p = _need(src, "[clinical] source")
            if p.suffix.lower() != ".duckdb":
                raise InputFormatError("[clinical] source must be a .duckdb file or a "
                                       "postgresql:// URL; for CSV/Parquet set visits/events/"
                                       "notes instead.", path=p)
        omop = OMOPSource(src, schema=c["schema"] or None)
        try:
            ids = _person_ids(omop)
            for kind in ("visits", "events", "encounters", "notes"):
                df = getattr(omop, kind)()
                # OMOP person_id -> the study's subject ids (person_source_value) when recorded
                mapped = df["patient_id"].map(ids)
                df["patient_id"] = mapped.where(mapped.notna(), df["patient_id"].astype(str)) \
                    .astype(str).to_numpy(dtype=object)
                out[kind] = df
        finally:
            omop.close()
    for kind in ("visits", "events", "encounters", "notes"):
        if c[kind]:
            out[kind] = read_table(_need(c[kind], f"[clinical] {kind}"), kind)
    return out


def _ns(values):
    """Datetimes at nanosecond resolution (pandas 3 parses some strings to microseconds,
    and merge_asof refuses keys of different resolutions)."""
    out = pd.to_datetime(values)
    return out.astype("datetime64[ns]")


def _person_ids(omop) -> pd.Series:
    """OMOP ``person_id`` -> ``person_source_value`` (the ids the MRI tables use)."""
    df = omop.persons(["person_id", "person_source_value"])
    df = df.dropna(subset=["person_source_value"])
    return pd.Series(df["person_source_value"].astype(str).to_numpy(dtype=object),
                     index=df["person_id"].to_numpy())


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
    m = cfg["models"]
    clin = _clinical(cfg)
    visits = validate_visits(clin["visits"])
    index = build_index_visits(visits, rule=f["index_visits"])
    first = build_index_visits(visits, rule="first")
    labels = make_labels(visits, index, thresholds=(m["label_threshold"],),
                         horizon_years=m["horizon_years"])
    tte = time_to_event_table(visits, index)
    times = time_to_event_table(visits, first)
    times.insert(0, "patient_id", first["patient_id"].to_numpy())
    ehr = notes = None
    if f["ehr"] and clin["events"] is not None and len(clin["events"]):
        from features.ehr import EHRFeaturizer

        fz = EHRFeaturizer(lookbacks=tuple(f["lookbacks"]),
                           stats=("last", "mean", "min", "max", "count"))
        fz.fit(clin["events"], encounters=clin["encounters"])
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
    # an MRI acquired on the index visit's day counts as available at that visit
    dev_join = dev.drop(columns=["age", "sex", "site", "icv", "age_out_of_range"],
                        errors="ignore").assign(
        scan_date=_ns(dev["scan_date"]) - pd.Timedelta(seconds=1))
    pat_demo = _baseline(dev)[["subject_id", "age", "sex"]].rename(
        columns={"subject_id": "patient_id"})
    table = build_cohort_table(index, deviations=dev_join, scan_window_days=f["scan_window_days"],
                               ehr_summaries=ehr, note_embeddings=notes,
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
        # the EHR and note featurizers are refitted inside every training fold
        clin = _clinical(cfg)
        hook = FoldFeaturizer(
            notes=clin["notes"] if f["notes"] and any(c.startswith("txt__") for c in tab.columns) else None,
            events=clin["events"] if f["ehr"] and any(c.startswith("ehr__") for c in tab.columns) else None,
            encounters=clin["encounters"],
            note_embedder=NoteEmbedder("tfidf", n_components=f["note_components"], random_state=seed),
            ehr_featurizer=EHRFeaturizer(lookbacks=tuple(f["lookbacks"]),
                                         stats=("last", "mean", "min", "max", "count")))
    xgb_params = {"n_estimators": m["n_estimators"], "n_jobs": m["n_jobs"]}
    comp = compare_models(tab, y, models=tuple(m["compare"]), ablations=m["ablations"],
                          n_splits=m["n_splits"], n_repeats=m["n_repeats"], preprocessors=hook,
                          n_boot=m["n_boot"], ci=m["ci"], random_state=seed, device="cpu",
                          xgb_params=xgb_params)
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
            feature_prefixes=prefixes, n_estimators=m["n_estimators"], n_jobs=m["n_jobs"],
            random_state=seed, device="cpu").fit(tab, y)
    # the CI method asked for and the one compare_models used ('auto' resolves per data)
    info = {"ci": m["ci"], "ci_method": comp.settings.get("ci_method"),
            "max_rows_per_patient": comp.settings.get("max_rows_per_patient")}
    return {"tables": tables, "results": results, "models": models, "manifest": info}


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
        mr = match_controls(base, ctrl, on=tuple(cfg["controls"]["match_on"]),
                            random_state=seed)
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
                                 "label": f"EDSS >= {cfg['models']['label_threshold']:g} within "
                                          f"{cfg['models']['horizon_years']:g} years"})
    text = rep.to_html()
    return {"files": {"report.html": text.encode("utf-8")}}


STAGE_FUNCS: dict[str, Callable[[Mapping, dict], dict]] = {
    "collect": stage_collect, "normative": stage_normative, "features": stage_features,
    "models": stage_models, "analyses": stage_analyses, "report": stage_report}
#: Stages whose in-memory results a later stage needs (re-run when that stage re-runs).
_NEEDS_RESULTS = {"report": ("normative", "models", "analyses")}
#: Tables each stage writes (read back on resume).
STAGE_TABLES = {
    "collect": ("volumes_patients", "volumes_reference", "volumes_adaptation", "volumes_controls"),
    "normative": ("deviations", "deviations_both", "deviations_controls", "normative_calibration",
                  "normative_regions", "critical_counts"),
    "features": ("visits", "analysis_table", "event_times"),
    "models": ("model_predictions", "model_metrics", "model_comparison"),
    "analyses": ("cohort_summary", "matching_balance", "count_models", "mixed_model", "survival",
                 "cox"),
    "report": (),
}


# ----------------------------------------------------------------------------- run
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"normfuse": __version__}
    for pkg in ("numpy", "scipy", "pandas", "scikit-learn", "statsmodels", "lifelines",
                "xgboost", "torch", "pyarrow", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    import platform

    out["python"] = platform.python_version()
    return out


def _input_hashes(cfg: Mapping) -> dict[str, str]:
    from normfuse.config import input_paths

    out = {}
    for p in input_paths(cfg):
        if Path(p).exists():
            out[p] = file_digest(p)
        else:
            out[p] = "missing"
    return out


def _check_out(out: Path, digest: str, inputs: dict, force: bool) -> dict | None:
    """Return the previous manifest to resume from, None for a fresh run; refuse otherwise."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: the output path is a file, not a folder; choose another "
                                "--out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".normfuse-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(f"{out}: the output folder is not writable ({exc.strerror}); "
                                "choose another --out.") from exc
    mpath = out / MANIFEST
    entries = [e for e in out.iterdir() if not e.name.startswith(".")
               and e.name not in ("study.toml", "data")]
    if not mpath.is_file():
        if entries and not force:
            raise OutputFolderError(f"{out}: the folder is not empty and holds no normfuse run "
                                    f"({MANIFEST} missing); choose an empty --out or pass --force "
                                    "to write into it.")
        return None
    try:
        man = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputFolderError(f"{mpath}: unreadable manifest ({exc}); pass --force to start "
                                "over.") from exc
    if force:
        for name in ("tables", "models", "report.html", MANIFEST):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        return None
    if man.get("config_digest") != digest or man.get("input_hashes") != inputs:
        what = "config" if man.get("config_digest") != digest else "input files"
        raise OutputFolderError(f"{out}: holds results of a run with different {what}; pass "
                                "--force to replace them, or choose another --out.")
    return man


def _write_table(tmp: Path, name: str, df: pd.DataFrame) -> list[str]:
    (tmp / "tables").mkdir(parents=True, exist_ok=True)
    d = df.copy()
    for c in d.columns:
        if d[c].dtype == object:
            d[c] = d[c].astype("string")
    d.to_parquet(tmp / "tables" / f"{name}.parquet")
    d.to_csv(tmp / "tables" / f"{name}.csv", index=False)
    return [f"tables/{name}.parquet", f"tables/{name}.csv"]


def _commit(tmp: Path, out: Path, files: list[str]) -> None:
    for rel in files:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(tmp / rel, dst)


def _read_back(out: Path, stage: str) -> dict[str, pd.DataFrame]:
    got = {}
    for name in STAGE_TABLES[stage]:
        p = out / "tables" / f"{name}.parquet"
        if p.is_file():
            got[name] = pd.read_parquet(p)
    return got


def run_pipeline(config: Mapping, out: str | Path, *, force: bool = False,
                 stages: Sequence[str] | None = None, quiet: bool = False,
                 extra_manifest: Mapping | None = None) -> PipelineResults:
    """Run the pipeline stages on ``config`` into the folder ``out``.

    Parameters
    ----------
    config : validated configuration (:func:`normfuse.config.load_config`).
    out : output folder (created); see the module docstring for its layout.
    force : re-run every stage, replacing earlier results in ``out``.
    stages : run only up to and including these stages (default: all). Earlier stages
        finished in ``out`` are resumed, unfinished ones run.
    quiet : no progress bar.
    extra_manifest : added to the manifest (e.g. the demo's simulation settings).

    Returns
    -------
    PipelineResults

    Raises
    ------
    OutputFolderError : ``out`` is not writable, or holds another run's results.
    InputFormatError, ColumnContractError, ConfigError : bad inputs (message names them).
    """
    from normfuse.config import config_digest

    out = Path(out)
    digest = config_digest(config)
    inputs = _input_hashes(config)
    missing = [p for p, h in inputs.items() if h == "missing"]
    if missing:
        raise InputFormatError("input not found; check the path in the config.", path=missing[0])
    prev = _check_out(out, digest, inputs, force)
    finished = list(prev.get("finished_stages", [])) if prev else []
    timings = dict(prev.get("timings", {})) if prev else {}
    last = max(STAGES.index(s) for s in stages) if stages else len(STAGES) - 1
    todo = list(STAGES[: last + 1])
    # a stage re-runs when it is unfinished or an earlier stage re-runs; in-memory results
    # a later stage needs force their producers to re-run with it
    first_unfinished = next((i for i, s in enumerate(todo) if s not in finished), len(todo))
    rerun = set(todo[first_unfinished:])
    for s in list(rerun):
        rerun.update(_NEEDS_RESULTS.get(s, ()))
    manifest = {
        "format": _FORMAT, "schema": 1, "normfuse_version": __version__,
        "config": config, "config_digest": digest, "input_hashes": inputs,
        "package_versions": _versions(), "seeds": {"study": config["study"]["seed"]},
        "finished_stages": [s for s in finished if s not in rerun], "timings": timings,
        "files": dict(prev.get("files", {})) if prev else {},
        "stage_info": {k: v for k, v in (prev.get("stage_info", {}) if prev else {}).items()
                       if k not in rerun},
    }
    if extra_manifest:
        manifest.update({k: v for k, v in extra_manifest.items() if k not in manifest})
        manifest["seeds"].update(extra_manifest.get("seeds", {}))
    ctx: dict[str, Any] = {"tables": {}, "results": {}, "normative_model": None}
    paths: dict[str, Path] = {}
    skipped = []
    created_new = prev is None
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, default=str))
    for stage in _progress(todo, len(todo), "normfuse", quiet):
        if stage not in rerun:
            ctx["tables"].update(_read_back(out, stage))
            if stage == "normative":
                from normative.model import NormativeModel

                ctx["normative_model"] = NormativeModel.load(out / "models" / "normative")
            skipped.append(stage)
            log.info("stage %s: finished in an earlier run, resumed", stage)
            continue
        log.info("stage %s: running", stage)
        t0 = time.perf_counter()
        tmp = out / f".stage-{stage}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            res = STAGE_FUNCS[stage](config, ctx)
            files: list[str] = []
            for name, df in res.get("tables", {}).items():
                files += _write_table(tmp, name, df)
            for name, obj in res.get("models", {}).items():
                obj.save(tmp / "models" / name)
                files.append(f"models/{name}")
            for name, data in res.get("files", {}).items():
                (tmp / name).write_bytes(data)
                files.append(name)
            _commit(tmp, out, files)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            manifest["failed_stage"] = stage
            atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, default=str))
            if created_new and not manifest["finished_stages"]:
                (out / MANIFEST).unlink(missing_ok=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        ctx["tables"].update(res.get("tables", {}))
        ctx["results"].update(res.get("results", {}))
        if res.get("normative_model") is not None:
            ctx["normative_model"] = res["normative_model"]
        for f in files:
            paths[f] = out / f
            manifest["files"][f] = f
        if res.get("manifest"):
            manifest["stage_info"][stage] = dict(res["manifest"])
        timings[stage] = round(time.perf_counter() - t0, 3)
        manifest["finished_stages"].append(stage)
        manifest.pop("failed_stage", None)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, default=str))
        log.info("stage %s: done in %.1f s", stage, timings[stage])
    paths["manifest.json"] = out / MANIFEST
    return PipelineResults(config=dict(config), tables=ctx["tables"],
                           normative_model=ctx["normative_model"], results=ctx["results"],
                           paths=paths, timings={s: (0.0 if s in skipped else timings.get(s, 0.0))
                                                 for s in todo},
                           skipped=tuple(skipped))


# ----------------------------------------------------------------------------- demo
def demo_config(data_dir: str | Path, *, seed: int = 0, patient_sites: Sequence[str] = ("site01", "site02"),
                n_local: int = 20, name: str = "normfuse demo (synthetic MS cohort)") -> dict:
    """The study configuration the demo runs on a cohort written by ``write_cohort``.

    The patients' sites are held out of the reference fit and the model is adapted to
    them from ``n_local`` matched-cohort controls per site; the remaining matched
    controls form the matching pool of the count model.
    """
    from normfuse.config import parse_config

    d = Path(data_dir).absolute()
    raw = {
        "study": {"name": name, "seed": seed},
        "patients": {"subjects_dir": str(d / "subjects"),
                     "demographics": str(d / "participants.tsv")},
        "reference": {"tables": [str(d / f"reference_controls_{s}") for s in
                                 ("aseg.txt", "lh.aparc.volume.txt", "rh.aparc.volume.txt")],
                      "demographics": str(d / "reference_controls.tsv"),
                      "exclude_sites": list(patient_sites)},
        "adaptation": {"tables": [str(d / f"matched_controls_{s}") for s in
                                  ("aseg.txt", "lh.aparc.volume.txt", "rh.aparc.volume.txt")],
                       "demographics": str(d / "matched_controls.tsv"), "n_per_site": n_local},
        "controls": {"tables": [str(d / f"matched_controls_{s}") for s in
                                ("aseg.txt", "lh.aparc.volume.txt", "rh.aparc.volume.txt")],
                     "demographics": str(d / "matched_controls.tsv")},
        "clinical": {"source": str(d / "ehr.duckdb")},
    }
    return parse_config(raw, base_dir=d, source="demo config")
