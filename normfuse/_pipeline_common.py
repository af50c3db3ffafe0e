"""Helpers shared by the pipeline's stages: path checks, datetimes, baseline scans, regions.

Private: the public names live in :mod:`normfuse.pipeline`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from normfuse.checks import get_logger
from normfuse.errors import InputFormatError

log = get_logger("normfuse.pipeline")

_KEYS = ["subject_id", "session_id"]


def _need(path: str, what: str, *, folder: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputFormatError(f"{what} not found; check the path in the config.", path=p)
    if folder and not p.is_dir():
        raise InputFormatError(f"{what} must be a folder, but this is a file.", path=p)
    if not folder and p.is_dir() and what != "volumes":
        raise InputFormatError(f"{what} must be a file, but this is a folder.", path=p)
    return p


def _ns(values):
    """Datetimes at nanosecond resolution (pandas 3 parses some strings to microseconds,
    and merge_asof refuses keys of different resolutions)."""
    out = pd.to_datetime(values)
    return out.astype("datetime64[ns]")


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


#: Kinds of saved model that ``[reference] model`` and ``normfuse normative`` accept.
REFERENCE_MODEL_KINDS = ("NormativeModel", "BrainchartsModel")


def load_reference_model(path, what: str = "[reference] model"):
    """Load a saved normative reference model of either kind, dispatching on its saved kind.

    A ``NormativeModel`` (``normfuse normative fit``/``adapt``) or a ``BrainchartsModel``
    (``import_braincharts(...).save(folder)``, adapted or not). Any other normfuse save
    is refused with a message naming the folder, its kind and the kinds accepted; damaged
    or foreign folders keep :func:`normfuse.persist.load_state`'s own message.
    """
    import json

    import normative.braincharts  # noqa: F401  (registers the BrainchartsModel kind)
    import normative.model  # noqa: F401  (registers the NormativeModel kind)
    from normfuse.errors import SchemaError
    from normfuse.persist import load

    p = Path(path)
    kind = None
    try:
        head = json.loads((p / "model.json").read_text())
        kind = head.get("kind") if isinstance(head, dict) else None
    except (OSError, ValueError):
        pass                          # load_state names what is wrong with the folder
    if kind is not None and kind not in REFERENCE_MODEL_KINDS:
        raise SchemaError(
            f"{what} {p} holds a saved {kind!r}, not a normative reference model. Accepted: "
            f"{' or '.join(repr(k) for k in REFERENCE_MODEL_KINDS)} (a folder written by "
            "`normfuse normative fit`/`adapt`, or by `normfuse normative import-braincharts` "
            "(in Python: normative.braincharts.import_braincharts(zip).save(folder)).")
    return load(p, kind=kind)
