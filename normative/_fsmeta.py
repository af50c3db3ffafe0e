"""Demographics merge and volume-kind check for volumes tables (private; public via
:mod:`normative.freesurfer`)."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd

from normfuse.checks import get_logger, require_columns, require_dataframe
from normfuse.contracts import VOLUME_KINDS
from normfuse.errors import ColumnContractError, NormfuseWarning, VolumeKindError

logger = get_logger("normative.freesurfer")

_SEX_WORDS = {"f": "F", "female": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}


def _key(v) -> str | None:
    """Normalise an id cell for matching: None for missing, else its text (1.0 -> '1')."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def map_sex(values, sex_map: Mapping | None = None) -> tuple[list, int | None]:
    """Sex cells as ``'F'``/``'M'`` (None where missing), and the position of the first cell
    that is neither a known spelling (F/M, female/male, any case) nor a key of ``sex_map``
    (None when every cell maps). Shared by :func:`attach_demographics` and the command
    line, which word their own errors.
    """
    out, bad = [], None
    for i, v in enumerate(values):
        k = _key(v)
        if k is None:
            out.append(None)
            continue
        hit = None
        if sex_map is not None:
            for cand in (v, k, k.lower()):
                try:
                    if cand in sex_map:
                        hit = sex_map[cand]
                        break
                except TypeError:
                    continue
            if hit is None and k.lstrip("-").replace(".", "", 1).isdigit():
                num = float(k)
                if num.is_integer() and int(num) in sex_map:
                    hit = sex_map[int(num)]
            if hit is not None and hit not in ("F", "M"):
                raise ValueError(f"sex_map maps {v!r} to {hit!r}; map values must be 'F' or 'M'.")
        if hit is None:
            hit = _SEX_WORDS.get(k.lower())
        if hit is None and bad is None:
            bad = i
        out.append(hit)
    return out, bad


def _sex_values(col: pd.Series, sex_map: Mapping | None) -> list:
    out, bad = map_sex(col.tolist(), sex_map)
    if bad is not None:
        v = col.iloc[bad]
        k = _key(v)
        hint = (" Numeric codes need an explicit mapping, e.g. sex_map={0: 'F', 1: 'M'} "
                "(FCON1000/PCNtoolkit coding) or sex_map={1: 'M', 2: 'F'}."
                if k.replace(".", "", 1).isdigit() else "")
        raise ColumnContractError(
            f"attach_demographics: column 'sex' holds {v!r} at row {col.index[bad]!r}; accepted "
            f"values are F/M and female/male (any case).{hint}")
    return out


def attach_demographics(
    volumes: pd.DataFrame,
    demographics: pd.DataFrame,
    *,
    sex_map: Mapping | None = None,
    unmatched: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """Fill ``age``, ``sex`` and ``site`` of a volumes table from a demographics table.

    Rows are matched on ``subject_id``, and also on ``session_id`` when ``demographics``
    has that column (ids are compared as text, so ``1`` matches ``"1"``). Values already
    present in ``volumes`` are kept; a present value that disagrees with ``demographics``
    is an error.

    Parameters
    ----------
    volumes : pandas.DataFrame
        A volumes table (e.g. from :func:`collect_subjects_dir`).
    demographics : pandas.DataFrame
        Columns ``subject_id`` (required), optional ``session_id``, and any of ``age``
        (years), ``sex``, ``site``. One row per subject (or subject and session).
    sex_map : mapping, optional
        How to read coded sex values, e.g. ``{0: "F", 1: "M"}`` (FCON1000/PCNtoolkit) or
        ``{1: "M", 2: "F"}``. Without it, only ``F``/``M``/``female``/``male`` (any case)
        are accepted and numeric codes raise, because their meaning differs between studies.
    unmatched : {"raise", "warn"}
        What to do when some scans have no demographics row: raise (naming them) or
        keep them with missing values and warn.

    Returns
    -------
    pandas.DataFrame
        A copy of ``volumes`` (same index and row order) with ``age`` as float, ``sex`` as
        ``"F"``/``"M"`` and ``site`` as text filled in.

    Raises
    ------
    ColumnContractError
        Missing key columns, duplicate demographics keys, invalid sex or age values,
        conflicting values, or unmatched scans with ``unmatched="raise"``.

    Examples
    --------
    >>> vols = pd.DataFrame({"subject_id": ["s1", "s2"], "session_id": [None, None],
    ...                      "age": np.nan, "sex": None, "site": None, "icv": 1.5e6,
    ...                      "volume_kind": "pv_corrected", "Left-Thalamus": [8066.3, 7900.0]})
    >>> demo = pd.DataFrame({"subject_id": ["s2", "s1"], "age": [41, 35], "sex": [1, 0],
    ...                      "site": "A"})
    >>> attach_demographics(vols, demo, sex_map={0: "F", 1: "M"})[["age", "sex"]]
        age sex
    0  35.0   F
    1  41.0   M
    """
    who = "attach_demographics"
    require_dataframe(volumes, who, "volumes")
    require_dataframe(demographics, who, "demographics")
    require_columns(volumes, ["subject_id"], who)
    require_columns(demographics, ["subject_id"], who,
                    hint="Rename your id column, e.g. demographics.rename(columns={'sub_id': "
                         "'subject_id'}).")
    if unmatched not in ("raise", "warn"):
        raise ValueError(f"unmatched={unmatched!r}; expected 'raise' or 'warn'.")
    fields = [c for c in ("age", "sex", "site") if c in demographics.columns]
    if not fields:
        raise ColumnContractError(
            f"{who}: demographics holds none of 'age', 'sex', 'site'.\n"
            f"Present: {list(map(str, demographics.columns))[:20]}")
    by_session = "session_id" in demographics.columns
    if by_session and "session_id" not in volumes.columns:
        raise ColumnContractError(f"{who}: demographics has 'session_id' but volumes does not.")

    def keys(df):
        subs = [_key(v) for v in df["subject_id"].tolist()]
        if not by_session:
            return subs
        return list(zip(subs, [_key(v) for v in df["session_id"].tolist()], strict=True))

    dkeys = keys(demographics)
    pos: dict = {}
    for i, k in enumerate(dkeys):
        if k in pos:
            raise ColumnContractError(
                f"{who}: demographics repeats the key {k!r} (rows {demographics.index[pos[k]]!r} "
                f"and {demographics.index[i]!r}). Keep one row per "
                f"{'subject and session' if by_session else 'subject'}.")
        pos[k] = i
    vkeys = keys(volumes)
    take = np.array([pos.get(k, -1) for k in vkeys], dtype=np.intp)
    miss = take < 0
    if miss.any():
        missing_keys = [vkeys[i] for i in np.flatnonzero(miss)]
        msg = (f"{who}: {int(miss.sum())} of {len(vkeys)} scans have no demographics row: "
               f"{missing_keys[:20]}{' ...' if len(missing_keys) > 20 else ''}. "
               "Check that ids are spelled alike in both tables (e.g. 'sub-01' vs '01').")
        if unmatched == "raise":
            raise ColumnContractError(msg + " Pass unmatched='warn' to keep them with missing "
                                      "age/sex/site.")
        logger.warning(msg)
        warnings.warn(msg, NormfuseWarning, stacklevel=2)
    n_unused = len(dkeys) - len(set(take[~miss].tolist()))
    if n_unused:
        logger.info("%s: %d demographics rows match no scan", who, n_unused)

    new: dict[str, list] = {}
    if "age" in fields:
        age = pd.to_numeric(demographics["age"], errors="coerce")
        bad = age.isna() & demographics["age"].notna()
        if bad.any() or (age < 0).any():
            i = int(np.flatnonzero((bad | (age < 0)).to_numpy())[0])
            raise ColumnContractError(
                f"{who}: column 'age' holds {demographics['age'].iloc[i]!r} at row "
                f"{demographics.index[i]!r}; ages must be numbers of years >= 0.")
        new["age"] = age.to_numpy(dtype=float, na_value=np.nan).tolist()
    if "sex" in fields:
        new["sex"] = _sex_values(demographics["sex"], sex_map)
    if "site" in fields:
        new["site"] = [_key(v) for v in demographics["site"].tolist()]

    out = volumes.copy()
    for c, vals in new.items():
        filled = [None if t < 0 else vals[t] for t in take]
        if c in out.columns:
            old = out[c].tolist()
            merged = []
            for r, (o, n) in enumerate(zip(old, filled, strict=True)):
                o_missing = _key(o) is None
                if not o_missing and n is not None and \
                        (float(o) != float(n) if c == "age" else str(o) != str(n)):
                    raise ColumnContractError(
                        f"{who}: row {volumes.index[r]!r} already has {c}={o!r} but "
                        f"demographics says {n!r}. Clear one of them first.")
                merged.append(n if o_missing else o)
            filled = merged
        if c == "age":
            out[c] = np.array([np.nan if v is None else v for v in filled], dtype=float)
        else:
            out[c] = pd.Series(filled, index=out.index, dtype=object)
    return out


def require_single_volume_kind(df: pd.DataFrame, *, who: str = "require_single_volume_kind") -> str:
    """Return the one ``volume_kind`` of a volumes table; raise when kinds are mixed.

    Partial-volume-corrected (``.stats``), voxel-count (``aseg.mgz``) and soft
    (SynthSeg) volumes of the same structure differ systematically, so a normative model
    must be fitted and applied on one kind only.

    Parameters
    ----------
    df : pandas.DataFrame
        A volumes table with a ``volume_kind`` column.
    who : str
        Caller name used in the error message.

    Returns
    -------
    str
        ``"pv_corrected"``, ``"voxel_count"`` or ``"soft"``.

    Raises
    ------
    VolumeKindError
        Mixed, missing or unknown kinds (with the row counts per kind).
    ColumnContractError
        No ``volume_kind`` column.

    Examples
    --------
    >>> require_single_volume_kind(pd.DataFrame({"volume_kind": ["soft", "soft"]}))
    'soft'
    """
    require_columns(df, ["volume_kind"], who,
                    hint="Volumes tables from normative.freesurfer readers carry it; for your "
                         "own table add df['volume_kind'] = 'pv_corrected' (or the right kind).")
    kinds = df["volume_kind"]
    counts = kinds.value_counts(dropna=False)
    labels = [None if _key(k) is None else str(k) for k in counts.index]
    unknown = [k for k in labels if k not in VOLUME_KINDS]
    if unknown:
        raise VolumeKindError(
            f"{who}: volume_kind holds {unknown} ({int(counts.iloc[labels.index(unknown[0])])} "
            f"rows); expected one of {list(VOLUME_KINDS)}.")
    if len(labels) > 1:
        desc = ", ".join(f"{k}: {int(n)} rows" for k, n in zip(labels, counts, strict=True))
        raise VolumeKindError(
            f"{who}: volumes of different kinds are mixed ({desc}). Partial-volume-corrected "
            ".stats volumes, aseg.mgz voxel counts and SynthSeg soft volumes differ "
            "systematically; use one kind, e.g. df[df['volume_kind'] == 'pv_corrected'].")
    if not labels:
        raise ColumnContractError(f"{who}: the table has no rows; pass at least one scan.")
    return labels[0]
