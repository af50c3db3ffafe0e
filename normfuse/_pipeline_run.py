"""Running the stages: output folder checks, atomic staging, resume, manifest, results.

Private: the public names live in :mod:`normfuse.pipeline` (see its docstring for the
output folder's layout).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from normfuse import __version__
from normfuse._pipeline_common import _progress, log
from normfuse._pipeline_inputs import file_digest
from normfuse._stages_analyses import stage_analyses, stage_report
from normfuse._stages_clinical import stage_features, stage_models
from normfuse._stages_imaging import stage_collect, stage_normative
from normfuse.errors import InputFormatError, NormfuseError
from normfuse.persist import atomic_write_text

#: Stage names in run order.
STAGES = ("collect", "normative", "features", "models", "analyses", "report")


MANIFEST = "manifest.json"


_FORMAT = "normfuse-run"


class OutputFolderError(NormfuseError, ValueError):
    """The output folder cannot be used: another run's results, not writable, or not a folder."""


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
        deviations: held-out controls, local controls, patients), ``reference_fit_ids``
        (subject_id, session_id, site of the scans the normative model was fitted on;
        absent when it was loaded from a file; matching controls among them are refused)
        (normative);
        ``visits``, ``analysis_table`` (features); ``model_predictions``,
        ``model_metrics`` (models); ``cohort_summary``, ``matching_balance``,
        ``count_models``, ``mixed_model``, ``survival`` (analyses).
    normative_model : the fitted (and adapted) :class:`normative.model.NormativeModel`, or
        the loaded (and adapted) :class:`normative.braincharts.BrainchartsModel`.
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


STAGE_FUNCS: dict[str, Callable[[Mapping, dict], dict]] = {
    "collect": stage_collect, "normative": stage_normative, "features": stage_features,
    "models": stage_models, "analyses": stage_analyses, "report": stage_report}


#: Stages whose in-memory results a later stage needs (re-run when that stage re-runs).
_NEEDS_RESULTS = {"report": ("normative", "models", "analyses")}


#: Tables each stage writes (read back on resume).
STAGE_TABLES = {
    "collect": ("volumes_patients", "volumes_reference", "volumes_adaptation", "volumes_controls"),
    "normative": ("deviations", "deviations_both", "deviations_controls", "normative_calibration",
                  "normative_regions", "critical_counts", "reference_fit_ids"),
    "features": ("visits", "analysis_table", "event_times"),
    "models": ("model_predictions", "model_metrics", "model_comparison"),
    "analyses": ("cohort_summary", "matching_balance", "count_models", "mixed_model", "survival",
                 "cox"),
    "report": (),
}


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
        from normfuse.config import SCHEMA

        where = []
        for sec, keys in SCHEMA.items():
            for name, key in keys.items():
                v = config.get(sec, {}).get(name)
                vals = v if isinstance(v, list) else [v]
                if key.type in ("path", "paths") and missing[0] in vals:
                    where.append(f"[{sec}] {name}")
        if config.get("clinical", {}).get("source") == missing[0]:
            where.append("[clinical] source")
        key = f" (set by {', '.join(where)})" if where else ""
        more = f"; {len(missing) - 1} more input(s) are missing too" if len(missing) > 1 else ""
        raise InputFormatError(f"input not found{key}{more}; check the path in the config "
                               "(relative paths are resolved against the config's folder).",
                               path=missing[0])
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
                from normfuse._pipeline_common import load_reference_model

                ctx["normative_model"] = load_reference_model(out / "models" / "normative",
                                                              "saved normative model")
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
