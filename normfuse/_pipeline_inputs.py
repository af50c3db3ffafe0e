"""Pipeline inputs: volume tables and SUBJECTS_DIRs, clinical sources (OMOP or files), digests.

Private: the public names live in :mod:`normfuse.pipeline`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from normfuse._pipeline_common import _KEYS, _need, _ns, log
from normfuse.errors import InputFormatError


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


def _person_ids(omop) -> pd.Series:
    """OMOP ``person_id`` -> ``person_source_value`` (the ids the MRI tables use)."""
    df = omop.persons(["person_id", "person_source_value"])
    df = df.dropna(subset=["person_source_value"])
    return pd.Series(df["person_source_value"].astype(str).to_numpy(dtype=object),
                     index=df["person_id"].to_numpy())
