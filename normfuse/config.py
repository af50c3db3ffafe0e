"""The study configuration: a TOML file read with :mod:`tomllib`, validated against a schema.

``normfuse run study.toml`` reads one of these; ``normfuse demo`` writes the one it used
into its output folder, so it doubles as a template. Every key, its type, default and
meaning is in :data:`SCHEMA` (and in the README's schema table, generated from it by
:func:`schema_table`). Relative paths are resolved against the folder of the TOML file.

Validation is strict and names the key: an unknown key, a value of the wrong type or an
invalid choice raises :class:`ConfigError` with one line such as::

    study.toml: [normative] tail = 'low' is not one of 'lower', 'upper', 'both'; fix the value.

Examples
--------
A minimal study names the patients' scans, a reference (here a saved model) and a clinical
source; every other key takes its default, and relative paths resolve against ``base_dir``:

>>> study = {"study": {"name": "x"}, "patients": {"subjects_dir": "subjects"},
...          "reference": {"model": "ref_model"}, "clinical": {"source": "cdm.duckdb"}}
>>> cfg = parse_config(study, base_dir="/study")
>>> cfg["normative"]["tail"], cfg["normative"]["threshold"], cfg["reference"]["model"]
('lower', 1.96, '/study/ref_model')
>>> parse_config({**study, "normative": {"tail": "low"}}, base_dir="/study")
Traceback (most recent call last):
    ...
normfuse.config.ConfigError: config: [normative] tail = 'low' is not one of 'lower', 'upper', 'both'; fix the value. Did you mean 'lower'?
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normfuse.errors import NormfuseError

__all__ = ["ConfigError", "Key", "SCHEMA", "load_config", "parse_config", "to_toml",
           "schema_table", "config_digest", "input_paths", "check_input_paths"]


class ConfigError(NormfuseError, ValueError):
    """The study configuration has an unknown key, a wrong type or an invalid value."""


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, allowed values and meaning."""

    type: str  # "str", "int", "float", "bool", "path", "paths", "strs", "floats", "pairs"
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


_P = "path"
#: Numeric sex codes of a volumes section, as the subcommands' --sex-codes.
_SEX_CODES = Key("strs", [], "Meaning of numeric sex values in these tables, e.g. "
                 "[\"0=F\", \"1=M\"] (FCON1000/PCNtoolkit) or [\"1=M\", \"2=F\"]; "
                 "F/M and female/male need none.")
#: Row selection of a volumes section, as the subcommands' --join and --where.
_JOIN = Key("paths", [], "Tables whose columns are added to these scans by subject_id "
            "(sub_id/participant_id read as such; also by session_id when both have it), e.g. "
            "a train/test split file; every scan needs a row there (as --join).")
_WHERE = Key("strs", [], "Row selections, all of which must hold, applied after demographics "
             "and join (as --where): \"COLUMN=VALUE\", \"COLUMN!=VALUE\", \"COLUMN=V1,V2\" "
             "(any of) compare as text; \"age<40\" (also <=, >, >=) as numbers; e.g. "
             "[\"split=train\"].")
#: The schema: section -> key -> :class:`Key`. Paths are relative to the TOML file's folder.
SCHEMA: dict[str, dict[str, Key]] = {
    "study": {
        "name": Key("str", "study", "Title of the study, shown in the report."),
        "seed": Key("int", 0, "Seed of every random step (splits, folds, bootstraps).", minimum=0),
    },
    "patients": {
        "subjects_dir": Key(_P, "", "FreeSurfer SUBJECTS_DIR (or BIDS derivatives) of the patients' "
                            "scans; folders named <subject>_<session> are split into both ids."),
        "tables": Key("paths", [], "Instead of subjects_dir: volume tables (asegstats2table / "
                      "aparcstats2table .txt, or .csv/.tsv/.parquet in the volumes contract)."),
        "demographics": Key(_P, "", "Table with subject_id, session_id, age, sex, site, scan_date "
                            "of every scan (e.g. participants.tsv)."),
        "atlases": Key("strs", ["aseg", "aparc"], "Stats files read per scan from subjects_dir.",
                       choices=("aseg", "aparc", "aparc.DKTatlas", "aparc.a2009s", "wmparc",
                                "brainvol")),
        "sex_codes": _SEX_CODES,
        "join": _JOIN,
        "where": _WHERE,
    },
    "reference": {
        "tables": Key("paths", [], "Healthy reference controls: volume tables (as patients.tables)."),
        "demographics": Key(_P, "", "subject_id, age, sex, site of the reference controls."),
        "model": Key(_P, "", "A saved model folder to use instead of fitting on tables: a NormativeModel, or a BrainchartsModel (`normfuse normative import-braincharts ZIP -o FOLDER`), adapted to the study's sites by [adaptation]."),
        "exclude_sites": Key("strs", [], "Sites left out of the reference fit (e.g. the patients' "
                             "sites, to adapt to them from local controls)."),
        "holdout_fraction": Key("float", 0.2, "Share of reference controls held out of the fit to "
                                "check calibration and expected critical-deviation counts.",
                                minimum=0.0, maximum=0.5),
        "sex_codes": _SEX_CODES,
        "join": _JOIN,
        "where": _WHERE,
    },
    "adaptation": {
        "tables": Key("paths", [], "Local healthy controls scanned at the patients' sites, for "
                      "adapting the model to sites it was not fitted on (empty: no adaptation)."),
        "demographics": Key(_P, "", "subject_id, age, sex, site of the local controls."),
        "sex_codes": _SEX_CODES,
        "join": _JOIN,
        "where": _WHERE,
        "n_per_site": Key("int", 0, "Use only the first N local controls of each site for "
                          "adaptation (0: all); the rest stay available for matching.", minimum=0),
    },
    "controls": {
        "tables": Key("paths", [], "Controls for the count model (not in the reference fit); "
                      "controls used for adaptation are removed from this pool."),
        "demographics": Key(_P, "", "subject_id, age, sex, site of those controls."),
        "sex_codes": _SEX_CODES,
        "join": _JOIN,
        "where": _WHERE,
        "match_on": Key("strs", ["age", "sex", "icv"], "Covariates for 1:1 nearest-neighbour "
                        "matching of controls to patients' baseline scans."),
    },
    "clinical": {
        "source": Key("str", "", "EHR source: an OMOP-shaped DuckDB file (.duckdb), a "
                      "postgresql:// URL (OMOP CDM; needs normfuse[sql]), or empty to read the "
                      "files below."),
        "schema": Key("str", "", "Database schema of the OMOP tables (PostgreSQL), if not default."),
        "visits": Key(_P, "", "visits table (patient_id, visit_date, edss, relapse) as CSV/Parquet; "
                      "overrides the source's visits."),
        "events": Key(_P, "", "EHR events (patient_id, encounter_id, time, table, variable, value)."),
        "encounters": Key(_P, "", "encounters (patient_id, encounter_id, start, end); optional."),
        "notes": Key(_P, "", "clinical notes (patient_id, time, text); optional."),
    },
    "normative": {
        "likelihood": Key("str", "shash", "Response distribution of the normative model.",
                          choices=("shash", "normal")),
        "regions": Key("strs", [], "Regions to model (empty: every region present in both the "
                       "reference and the patients' tables)."),
        "threshold": Key("float", 1.96, "|Z| above which a deviation is critical.", minimum=0.0),
        "tail": Key("str", "lower", "Deviations counted in the main analysis ('lower' as in the "
                    "published MS study; both tails are always reported too).",
                    choices=("lower", "upper", "both")),
        "device": Key("str", "cpu", "Device of the normative engine.", choices=("cpu", "cuda", "auto")),
    },
    "features": {
        "index_visits": Key("str", "all", "Prediction index rows: every EDSS visit ('all') or each "
                            "patient's first visit ('first'); survival analyses always start at "
                            "the first visit.", choices=("all", "first")),
        "ehr": Key("bool", True, "Build EHR summary features (ehr__*)."),
        "notes": Key("bool", True, "Build note embeddings (txt__*)."),
        "note_components": Key("int", 32, "Dimensions of the TF-IDF/SVD note embedding.", minimum=1),
        "lookbacks": Key("strs", ["365D", "all"], "EHR look-back windows before the index date."),
        "scan_window_days": Key("float", 365.0, "The latest scan dated on or before the index "
                                "visit's day, and at most this many days before it, joins the "
                                "analysis table (EHR events and notes: strictly before the index "
                                "date).", minimum=0.0),
    },
    "labels": {
        "inclusive": Key("bool", True, "A visit reaches an EDSS milestone at EDSS >= its "
                         "threshold (true) or > it (false); for the predicted label "
                         "(models.label_threshold) and the milestone event times."),
        "short_followup": Key("str", "exclude", "Label of an index visit without a milestone "
                              "whose follow-up (last EDSS visit) ends before the horizon "
                              "(models.horizon_years): 'exclude' (missing, left out of the "
                              "models) or 'negative' (0).", choices=("exclude", "negative")),
        "already_reached": Key("str", "exclude", "Index visits already at the milestone (EDSS "
                               "at the index visit): 'exclude' (label and milestone event time "
                               "missing) or 'keep' (labelled from later visits like any other).",
                               choices=("exclude", "keep")),
        "milestones": Key("floats", [4.0, 6.0, 7.0], "EDSS milestones of the event-time "
                          "columns time_edss<k>/event_edss<k> (first visit after the index "
                          "date at the milestone).", minimum=0.0, maximum=10.0),
        "confirm_days": Key("float", 182.0, "Confirmed disability progression: the first "
                            "visit at least this many days after onset must also reach "
                            "baseline + increase (182 ~ 6 months).", minimum=0.0),
        "deltas": Key("pairs", [[0.0, 1.5], [1.0, 1.0], [6.0, 0.5]], "EDSS increase that "
                      "counts as progression: [lowest baseline EDSS, increase] pairs (+1.5 "
                      "from 0, +1.0 from 1.0-5.5, +0.5 from 6.0); the lowest baseline must "
                      "be 0."),
        "sustained": Key("bool", True, "Progression must also hold at every visit between "
                         "onset and the confirming visit (false: only at the confirming "
                         "visit)."),
    },
    "models": {
        "enabled": Key("bool", True, "Run the prediction stage."),
        "label_threshold": Key("float", 4.0, "EDSS milestone predicted (EDSS >= this; > with "
                               "labels.inclusive = false).", minimum=0.0, maximum=10.0),
        "horizon_years": Key("float", 3.0, "Prediction horizon of the milestone.", minimum=0.1),
        "n_splits": Key("int", 5, "Patient-grouped cross-validation folds.", minimum=2),
        "n_estimators": Key("int", 300, "Maximum boosting rounds (early stopping inside).",
                            minimum=1),
        "n_boot": Key("int", 500, "Bootstrap replicates for CIs (patients are resampled when "
                      "patients have several index visits).", minimum=100),
        "n_jobs": Key("int", -1, "Worker processes fitting the comparison's (repeat, fold) "
                      "jobs side by side: -1 all cores, -2 all but one, 1 one job at a time "
                      "(never more than the jobs); each runs XGBoost and torch on one thread. "
                      "Results do not depend on it (not part of the config digest), and CUDA "
                      "runs the jobs one at a time."),
        "compare": Key("strs", ["dev_count_logistic", "dev_xgb", "ehr_xgb", "txt_xgb", "all_xgb",
                                "fusion_concat", "fusion_lstm", "fusion_bigru_attention",
                                "fusion_late"],
                       "Models compared on identical folds (see models.compare.MODEL_NAMES)."),
        "n_repeats": Key("int", 1, "Repeats of the patient-grouped, outcome-stratified CV.",
                         minimum=1),
        "ablations": Key("bool", True, "Leave-one-modality-out ablations of all_xgb and fusion_concat."),
        "ci": Key("str", "auto", "AUROC CIs and p-values: 'delong' (DeLong, assumes one row per "
                  "patient), 'cluster_bootstrap' (patients resampled with all their index rows), "
                  "or 'auto' (DeLong when every patient has one index row, else the cluster "
                  "bootstrap with n_boot replicates); the method used is in model_comparison's "
                  "ci_method and the manifest.", choices=("auto", "delong", "cluster_bootstrap")),
    },
    "analyses": {
        "theta": Key("float", 1.0, "Fixed negative-binomial theta of the published count model "
                     "(the ML-estimated theta is fitted too).", minimum=1e-6),
        "rule_regions": Key("strs", ["Left-Thalamus", "Right-Thalamus", "Left-Hippocampus",
                                     "Right-Hippocampus", "Left-Putamen", "Right-Putamen"],
                            "Regions of the deviation-based risk rule for the survival analyses."),
        "rule_k": Key("int", 1, "A priori rule: high risk when >= k of rule_regions are critical.",
                      minimum=1),
        "visit_window_days": Key("float", 90.0, "A scan pairs with the EDSS visit closest in time "
                                 "within this many days (mixed model).", minimum=0.0),
    },
}

_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "path": "a path string", "paths": "a list of path strings",
               "strs": "a list of strings", "floats": "a list of numbers",
               "pairs": "a list of [number, number] pairs"}


def _fail(src: str, msg: str) -> ConfigError:
    return ConfigError(f"{src}: {msg}")


def _check_value(src: str, sec: str, name: str, key: Key, value: Any) -> Any:
    where = f"[{sec}] {name}"
    t = key.type
    bad = ConfigError(f"{src}: {where} = {value!r} must be {_TYPE_NAMES[t]}; fix the value "
                      f"(default: {json.dumps(key.default)}).")
    if t in ("str", "path"):
        if not isinstance(value, str):
            raise bad
    elif t == "bool":
        if not isinstance(value, bool):
            raise bad
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif t in ("paths", "strs"):
        if isinstance(value, str) and t == "paths":
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
    elif t == "floats":
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad
        value = [float(v) for v in value]
    elif t == "pairs":
        def num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        if not isinstance(value, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(num(v) for v in p) for p in value):
            raise bad
        value = [[float(a), float(b)] for a, b in value]
    if key.choices is not None:
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if v not in key.choices:
                hint = _suggest(v, [str(c) for c in key.choices]) if isinstance(v, str) else ""
                raise ConfigError(
                    f"{src}: {where} = {v!r} is not one of "
                    f"{', '.join(repr(c) for c in key.choices)}; fix the value.{hint}")
    if t == "floats" and (key.minimum is not None or key.maximum is not None):
        lo = -float("inf") if key.minimum is None else key.minimum
        hi = float("inf") if key.maximum is None else key.maximum
        out = [v for v in value if not lo <= v <= hi]
        if out:
            raise ConfigError(f"{src}: {where} = {value!r} holds {out[0]:g}, outside "
                              f"{lo:g}-{hi:g}; every item must lie in {lo:g}-{hi:g}; fix "
                              "the value.")
    if key.minimum is not None and t in ("int", "float") and value < key.minimum:
        raise ConfigError(f"{src}: {where} = {value!r} is below the minimum {key.minimum:g}; "
                          "fix the value.")
    if key.maximum is not None and t in ("int", "float") and value > key.maximum:
        raise ConfigError(f"{src}: {where} = {value!r} is above the maximum {key.maximum:g}; "
                          "fix the value.")
    return value


def _check_deltas(src: str, value: list[list[float]]) -> None:
    """[labels] deltas: baselines on 0-10, distinct, the lowest 0; increases in (0, 10]."""
    where = f"{src}: [labels] deltas = {value!r}"
    allowed = ("allowed: [lowest baseline EDSS, increase] pairs with distinct baselines in "
               "0-10, one of them 0, and increases above 0 and at most 10, e.g. "
               "[[0.0, 1.5], [1.0, 1.0], [6.0, 0.5]]; fix the value.")
    lows = [a for a, _ in value]
    if not value:
        raise ConfigError(f"{where} is empty; {allowed}")
    bad_low = [a for a in lows if not 0.0 <= a <= 10.0]
    if bad_low:
        raise ConfigError(f"{where}: baseline {bad_low[0]:g} is off the EDSS scale; {allowed}")
    bad_inc = [b for _, b in value if not 0.0 < b <= 10.0]
    if bad_inc:
        raise ConfigError(f"{where}: increase {bad_inc[0]:g} is not above 0 and at most 10; "
                          f"{allowed}")
    if len(set(lows)) != len(lows):
        dup = next(a for a in lows if lows.count(a) > 1)
        raise ConfigError(f"{where}: baseline {dup:g} is listed twice; {allowed}")
    if min(lows) != 0.0:
        raise ConfigError(f"{where}: the lowest baseline is {min(lows):g}, so baselines below "
                          f"it could never progress; {allowed}")


def _suggest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_config(raw: Mapping[str, Any], *, base_dir: str | Path = ".",
                 source: str = "config", check_files: bool = False) -> dict[str, dict[str, Any]]:
    """Validate a configuration mapping and fill defaults; resolve paths against ``base_dir``.

    Parameters
    ----------
    raw : the parsed TOML (sections of keys).
    base_dir : folder relative paths are resolved against (the TOML file's folder).
    source : name used in error messages (the file name).
    check_files : also check that every input path exists (:func:`check_input_paths`);
        :func:`load_config` does.

    Returns
    -------
    dict of sections, every key of :data:`SCHEMA` present; paths absolute (``""`` = unset).

    Raises
    ------
    ConfigError
        Unknown section or key, wrong type, invalid choice, out-of-range value, an
        inconsistent combination (no patients' volumes, no reference), a
        ``[clinical] source`` that is neither a ``.duckdb`` file nor a ``postgresql://``
        URL, or (``check_files=True``) an input path that does not exist.
    """
    if not isinstance(raw, Mapping):
        raise _fail(source, "the configuration must be a table of sections.")
    base = Path(base_dir).resolve()
    out: dict[str, dict[str, Any]] = {}
    for sec in raw:
        if sec not in SCHEMA:
            raise _fail(source, f"unknown section [{sec}].{_suggest(sec, SCHEMA)} Known sections: "
                        f"{', '.join(SCHEMA)}; remove or rename it.")
        if not isinstance(raw[sec], Mapping):
            raise _fail(source, f"{sec} = {raw[sec]!r} must be a section ([{sec}]), not a value.")
    for sec, keys in SCHEMA.items():
        given = raw.get(sec, {})
        for name in given:
            if name not in keys:
                raise _fail(source, f"unknown key [{sec}] {name}.{_suggest(name, keys)} Known keys "
                            f"of [{sec}]: {', '.join(keys)}; remove or rename it.")
        sect = {}
        for name, key in keys.items():
            value = _check_value(source, sec, name, key, given[name]) if name in given \
                else copy.deepcopy(key.default)
            if key.type == "path" and value:
                value = str(base / Path(value).expanduser())
            elif key.type == "paths":
                value = [str(base / Path(v).expanduser()) for v in value]
            sect[name] = value
        out[sec] = sect
    src = out["clinical"]["source"]
    if src:
        _check_source(source, src)
        if not _is_url(src):
            out["clinical"]["source"] = str(base / Path(src).expanduser())
    from normfuse._pipeline_inputs import parse_sex_codes, parse_where
    from normfuse.errors import InputFormatError

    for sec in ("patients", "reference", "adaptation", "controls"):
        try:
            parse_sex_codes(out[sec]["sex_codes"])
        except InputFormatError as exc:
            raise _fail(source, f"[{sec}] sex_codes = {out[sec]['sex_codes']!r}: {exc}") from exc
        for expr in out[sec]["where"]:
            try:
                parse_where(expr, config_section=sec)
            except InputFormatError as exc:      # names [sec] where = 'expr' itself
                raise _fail(source, str(exc)) from exc
        reads = out[sec]["tables"] or out[sec].get("subjects_dir")
        for name in ("join", "where"):
            if out[sec][name] and not reads:
                why = (" (model is set: a saved model is used as is)"
                       if sec == "reference" and out[sec]["model"] else "")
                raise _fail(source, f"[{sec}] {name} = {raw[sec][name]!r} selects rows of "
                            f"[{sec}] tables, but none are set{why}; set tables or remove "
                            f"{name}.")
    _check_deltas(source, out["labels"]["deltas"])
    p = out["patients"]
    if bool(p["subjects_dir"]) == bool(p["tables"]):
        raise _fail(source, "[patients] needs exactly one of subjects_dir (a SUBJECTS_DIR) or "
                    "tables (volume tables); set one of them.")
    r = out["reference"]
    if not r["model"] and not r["tables"]:
        raise _fail(source, "[reference] needs tables (reference controls to fit on) or model "
                    "(a saved normative model); set one of them.")
    if r["model"] and r["tables"]:
        raise _fail(source, "[reference] sets both model and tables; keep one (a saved model is "
                    "used as is, tables are fitted on).")
    c = out["clinical"]
    if not c["source"] and not c["visits"]:
        raise _fail(source, "[clinical] needs source (a .duckdb file or postgresql:// URL) or "
                    "visits (a visits table); set one of them.")
    m = out["models"]
    if m["n_jobs"] == 0:
        raise _fail(source, "[models] n_jobs = 0 runs nothing; use 1 (one job at a time), a number "
                    "of worker processes, or -1 (all cores).")
    if m["enabled"] and m["compare"] and _BASELINE not in m["compare"]:
        raise _fail(source, f"[models] compare = {m['compare']!r} lacks {_BASELINE!r}, the "
                    "baseline every other model is compared with (DeLong/bootstrap p-values); "
                    "add it to the list.")
    if check_files:
        check_input_paths(out, source=source, raw=raw)
    return out


#: The model the pipeline compares every other one with (models.compare_models' default
#: ``baseline``; not imported here, models.compare takes seconds to import).
_BASELINE = "dev_count_logistic"


def _is_url(value: str) -> bool:
    return "://" in value


def _check_source(src_name: str, value: str) -> None:
    """[clinical] source is a .duckdb file or a postgresql:// URL (checked before any stage)."""
    where = f"{src_name}: [clinical] source = {value!r}"
    if _is_url(value):
        import re

        if not re.match(r"(postgresql|postgres|postgresql\+\w+)://", value):
            scheme = value.split("://", 1)[0]
            raise ConfigError(f"{where}: the URL scheme {scheme + '://'!r} is not supported; "
                              "use an OMOP CDM in PostgreSQL (postgresql://USER@HOST/DB, or "
                              "postgresql+DRIVER://...) or an OMOP-shaped .duckdb file.")
        return
    suffix = Path(value).suffix.lower()
    if suffix == ".duckdb":
        return
    if suffix in (".csv", ".tsv", ".txt", ".parquet"):
        fix = ("a table file is not a source: set [clinical] visits (and events, encounters, "
               "notes) to your tables instead and leave source empty")
    else:
        fix = ("use an OMOP-shaped DuckDB file ending in .duckdb or a postgresql:// URL, or "
               "leave source empty and set [clinical] visits/events/notes")
    raise ConfigError(f"{where} has suffix {suffix or '(none)'!r}; {fix}.")


#: Path keys that name a folder; every other path key names a file, except the volume
#: ``tables`` lists, which also take a SUBJECTS_DIR.
_FOLDER_KEYS = {("patients", "subjects_dir"): "a FreeSurfer SUBJECTS_DIR",
                ("reference", "model"): "the folder `normfuse normative fit` writes"}


def check_input_paths(config: Mapping[str, Mapping[str, Any]], *, source: str = "config",
                      raw: Mapping[str, Any] | None = None) -> None:
    """Check that every input path of a parsed configuration exists (file or folder as needed).

    Called by :func:`load_config`, so that a wrong path stops ``normfuse run`` before any
    stage runs or any output is written.

    Parameters
    ----------
    config : a configuration from :func:`parse_config` (paths absolute).
    source : name used in error messages (the TOML file).
    raw : the mapping as written, to quote the value the user wrote (else the resolved path).

    Raises
    ------
    ConfigError
        One line naming the section, key, the value as written, the path looked for and
        the fix.
    """
    raw = raw or {}

    def written(sec, name, i, resolved):
        v = raw.get(sec, {}).get(name, resolved) if isinstance(raw.get(sec), Mapping) \
            else resolved
        if isinstance(v, list):
            v = v[i] if i is not None and i < len(v) else resolved
        return v

    checks = []
    for sec, keys in SCHEMA.items():
        for name, key in keys.items():
            v = config[sec][name]
            if key.type == "path" and v:
                checks.append((sec, name, None, v))
            elif key.type == "paths":
                checks.extend((sec, name, i, p) for i, p in enumerate(v))
    src = config["clinical"]["source"]
    if src and not _is_url(src):
        checks.append(("clinical", "source", None, src))
    for sec, name, i, value in checks:
        p = Path(value)
        shown = written(sec, name, i, value)
        where = f"{source}: [{sec}] {name} = {shown!r}"
        looked = f" (looked for {p})" if str(shown) != str(p) else ""
        folder = _FOLDER_KEYS.get((sec, name))
        if not p.exists():
            raise ConfigError(f"{where} not found{looked}; fix the path (relative paths are "
                              "resolved against the config file's folder).")
        if folder and not p.is_dir():
            raise ConfigError(f"{where} is a file; it must be a folder ({folder}); fix the "
                              "path.")
        if not folder and name != "tables" and p.is_dir():
            raise ConfigError(f"{where} is a folder; it must be a file; fix the path.")


def load_config(path: str | Path, *, check_files: bool = True) -> dict[str, dict[str, Any]]:
    """Read and validate a study TOML file (see :data:`SCHEMA`).

    Parameters
    ----------
    path : the study TOML file; relative paths in it resolve against its folder.
    check_files : check that every input file and folder it names exists, so that a
        wrong path stops a run before any stage (default True).

    Raises
    ------
    ConfigError
        The file is missing, is not valid TOML, fails validation (:func:`parse_config`),
        or names an input that does not exist (:func:`check_input_paths`).
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass the path of your study.toml "
                          "(`normfuse demo` writes a template).")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax.") from exc
    return parse_config(raw, base_dir=path.parent, source=str(path), check_files=check_files)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(config: Mapping[str, Mapping[str, Any]], *, relative_to: str | Path | None = None,
            comments: bool = True) -> str:
    """Write a configuration as TOML, each key preceded by its help text as a comment.

    Absolute paths under ``relative_to`` are written relative to it, so the file stays
    valid when the folder moves; other paths are written as they are (a path outside
    the folder stays absolute, and reads back to the same configuration).
    """
    rel = Path(relative_to).resolve() if relative_to is not None else None

    def under(s):
        p = Path(s)
        if not s or rel is None or not p.is_absolute():
            return s
        try:
            return p.resolve().relative_to(rel).as_posix()
        except ValueError:
            return s

    def fix(key: Key, v):
        if rel is None or key.type not in ("path", "paths"):
            return v
        return [under(s) for s in v] if isinstance(v, list) else under(v)

    lines = ["# normfuse study configuration (schema: README 'Your own study').",
             "# Relative paths are resolved against this file's folder.", ""]
    for sec, keys in SCHEMA.items():
        lines.append(f"[{sec}]")
        vals = config.get(sec, {})
        for name, key in keys.items():
            v = vals.get(name, key.default)
            if sec == "clinical" and name == "source" and v \
                    and not v.startswith(("postgres", "postgresql")):
                v = under(v)
            v = fix(key, v)
            if comments:
                lines.append(f"# {key.help}")
            lines.append(f"{name} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def schema_table() -> str:
    """The schema as a Markdown table (section, key, type, default, meaning) for the README."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for sec, keys in SCHEMA.items():
        for name, key in keys.items():
            d = json.dumps(key.default)
            ch = f" One of {', '.join(repr(c) for c in key.choices)}." if key.choices else ""
            rows.append(f"| `{sec}.{name}` | {key.type} | `{d}` | {key.help}{ch} |")
    return "\n".join(rows)


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of the configuration's canonical JSON (for the manifest and resume checks).

    ``[models] n_jobs`` only says how many worker processes run the model comparison,
    not what it computes, so it is hashed as 1 (the value the digests of earlier
    versions saw by default): a finished run resumes whatever ``--n-jobs`` is given.
    """
    import hashlib

    models = config.get("models") if isinstance(config, Mapping) else None
    if isinstance(models, Mapping) and "n_jobs" in models:
        config = {**config, "models": {**models, "n_jobs": 1}}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def input_paths(config: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every input file or folder the configuration names (for hashing in the manifest)."""
    out: list[str] = []
    for sec, keys in SCHEMA.items():
        for name, key in keys.items():
            v = config[sec][name]
            if key.type == "path" and v:
                out.append(v)
            elif key.type == "paths":
                out.extend(v)
    src = config["clinical"]["source"]
    if src and not _is_url(src):
        out.append(src)
    return out
