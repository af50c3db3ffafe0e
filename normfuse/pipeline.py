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

from collections.abc import Sequence
from pathlib import Path

# re-exported: every name importable from normfuse.pipeline before the split still is
from normfuse._pipeline_common import (  # noqa: F401
    _KEYS,
    _baseline,
    _need,
    _ns,
    _progress,
    _regions,
    log,
)
from normfuse._pipeline_inputs import (  # noqa: F401
    RowFilter,
    _clinical,
    _person_ids,
    _read_plain_table,
    _split_session_folders,
    file_digest,
    join_table,
    parse_where,
    read_volumes,
    select_rows,
)
from normfuse._pipeline_run import (  # noqa: F401
    _FORMAT,
    _NEEDS_RESULTS,
    MANIFEST,
    STAGE_FUNCS,
    STAGE_TABLES,
    STAGES,
    OutputFolderError,
    PipelineResults,
    _check_out,
    _commit,
    _input_hashes,
    _read_back,
    _versions,
    _write_table,
    run_pipeline,
)
from normfuse._stages_analyses import (  # noqa: F401
    _report_inputs,
    stage_analyses,
    stage_report,
)
from normfuse._stages_clinical import (  # noqa: F401
    stage_features,
    stage_models,
)
from normfuse._stages_imaging import (  # noqa: F401
    stage_collect,
    stage_normative,
)

__all__ = ["STAGES", "PipelineResults", "OutputFolderError", "run_pipeline", "read_volumes",
           "select_rows", "parse_where", "join_table", "RowFilter", "demo_config",
           "file_digest", "MANIFEST"]

# the stages and the run machinery live in private modules (one per concern); every name
# importable from here before the split still is, and the public ones say they live here
for _obj in (PipelineResults, OutputFolderError, run_pipeline, read_volumes, file_digest,
             select_rows, parse_where, join_table, RowFilter):
    _obj.__module__ = __name__
del _obj


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
