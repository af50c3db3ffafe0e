"""Shared record builders of the FreeSurfer readers (private; see :mod:`normative.freesurfer`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from normative._fsnames import harmonise_region_names
from normative._fsparse import Measure, RawStats, numeric_column, parse_stats_text, read_text
from normfuse.errors import InputFormatError

_APARC_MEASURES = {"volume": "GrayVol", "thickness": "ThickAvg", "area": "SurfArea"}
_HEMI_SUMMARY = {"thickness": ("MeanThickness", "lh_MeanThickness_thickness"),
                 "area": ("WhiteSurfArea", "lh_WhiteSurfArea_area")}


# --------------------------------------------------------------------------- helpers
def _volumes_frame(records: list[tuple], kind_default: str | None = None) -> pd.DataFrame:
    """Assemble records (subject, session, icv, kind, names, values) into a volumes table.

    Region columns are the union of all names in first-seen order; a region absent from a
    scan is NaN. Built with one preallocated array, not per-row DataFrames.
    """
    col_index: dict[str, int] = {}
    for rec in records:
        for n in rec[4]:
            if n not in col_index:
                col_index[n] = len(col_index)
    n = len(records)
    mat = np.full((n, len(col_index)), np.nan)
    for r, rec in enumerate(records):
        if len(rec[4]):
            idx = np.fromiter((col_index[k] for k in rec[4]), dtype=np.intp, count=len(rec[4]))
            mat[r, idx] = rec[5]
    meta = pd.DataFrame({
        "subject_id": [str(rec[0]) for rec in records],
        "session_id": pd.Series([rec[1] for rec in records], dtype=object),
        "age": np.full(n, np.nan),
        "sex": pd.Series([None] * n, dtype=object),
        "site": pd.Series([None] * n, dtype=object),
        "icv": np.array([np.nan if rec[2] is None else rec[2] for rec in records], dtype=float),
        "volume_kind": [rec[3] or kind_default for rec in records],
    })
    regions = pd.DataFrame(mat, columns=list(col_index))
    return pd.concat([meta, regions], axis=1)


def _icv_of(measures: Mapping[str, Measure]) -> float | None:
    m = measures.get("eTIV") or measures.get("ICV")
    return None if m is None else m.value


def _measure_items(measures: Mapping[str, Measure]) -> tuple[list[str], list[float]]:
    names = harmonise_region_names(list(measures))
    return names, [m.value for m in measures.values()]


def _require_cols(raw: RawStats, needed: Sequence[str], what: str) -> list[int]:
    if not raw.columns:
        raise InputFormatError(
            f"has no '# ColHeaders' line, so it holds no {what} table. Is this the right "
            "file, and is it complete? Re-create it with recon-all or restore a copy.",
            path=raw.path)
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise InputFormatError(
            f"the '# ColHeaders' line lacks column(s) {missing} needed for a {what} table; it "
            f"names {raw.columns}. Is this a {what} .stats file?", path=raw.path)
    return [raw.columns.index(c) for c in needed]


def _struct_names(raw: RawStats, j: int) -> list[str]:
    names = list(raw.cells[:, j])
    if len(set(names)) != len(names):
        first: dict[str, int] = {}
        for k, nm in enumerate(names):
            if nm in first:
                raise InputFormatError(
                    f"structure {nm!r} appears twice (lines {raw.row_lines[first[nm]]} and "
                    f"{raw.row_lines[k]}). Remove the duplicate row or re-create the file.",
                    path=raw.path, line=raw.row_lines[k])
            first[nm] = k
    return names


def _check_harmonised_unique(names: list[str], raw_names: list[str], path) -> None:
    if len(set(names)) != len(names):
        seen: dict[str, str] = {}
        for h, r in zip(names, raw_names, strict=True):
            if h in seen:
                raise InputFormatError(
                    f"structures {seen[h]!r} and {r!r} both map to the FreeSurfer 7 name "
                    f"{h!r}; keep only one of them.", path=path)
            seen[h] = r


def _subject_from(raw: RawStats, path: Path) -> str:
    sid = raw.header.get("subjectname", "").strip()
    if sid:
        return sid
    parent = path.resolve().parent
    return parent.parent.name if parent.name == "stats" else parent.name


def _parse_stats_file(path) -> RawStats:
    path = Path(path)
    return parse_stats_text(read_text(path), path)


def _aseg_record(raw: RawStats, *, measure: str, include_measures: bool):
    if measure not in ("volume", "nvoxels"):
        raise ValueError(f"measure={measure!r}; expected 'volume' (Volume_mm3, partial-volume "
                         "corrected) or 'nvoxels' (NVoxels x voxel volume).")
    col = "Volume_mm3" if measure == "volume" else "NVoxels"
    js, jv = _require_cols(raw, ["StructName", col], "segmentation (aseg/wmparc)")
    raw_names = _struct_names(raw, js)
    names = harmonise_region_names(raw_names)
    _check_harmonised_unique(names, raw_names, raw.path)
    vals = numeric_column(raw.cells, jv, col, raw.row_lines, raw.path, raw_names)
    other = "NVoxels" if col == "Volume_mm3" else "Volume_mm3"
    if other in raw.columns:    # a damaged cell in the other size column means a damaged file
        numeric_column(raw.cells, raw.columns.index(other), other, raw.row_lines, raw.path,
                       raw_names)
    kind = "pv_corrected"
    if measure == "nvoxels":
        vox = raw.header.get("VoxelVolume_mm3", "1").split()
        try:
            vals = vals * float(vox[0] if vox else "1")
        except ValueError:
            raise InputFormatError(f"'# VoxelVolume_mm3' is not a number: {vox!r}.",
                                   path=raw.path) from None
        kind = "voxel_count"
    if include_measures and raw.measures:
        mnames, mvals = _measure_items(raw.measures)
        clash = set(mnames) & set(names)
        if clash:
            raise InputFormatError(f"measure(s) {sorted(clash)} share a name with table rows.",
                                   path=raw.path)
        names = names + mnames
        vals = np.concatenate([vals, np.asarray(mvals, dtype=float)])
    return names, vals, kind


def _hemi_of(raw: RawStats, path: Path) -> str:
    hemi = raw.header.get("hemi", "").strip()
    if hemi not in ("lh", "rh"):
        stem = path.name[:3]
        hemi = stem[:2] if stem in ("lh.", "rh.") else ""
    if hemi not in ("lh", "rh"):
        raise InputFormatError(
            "cannot tell the hemisphere: no '# hemi lh|rh' line and the file name does not "
            "start with 'lh.' or 'rh.'. Rename the file to lh.<atlas>.stats or rh.<atlas>.stats.",
            path=path)
    return hemi


def _aparc_record(raw: RawStats, path: Path, measures: Sequence[str]):
    bad = [m for m in measures if m not in _APARC_MEASURES]
    if bad or not measures:
        raise ValueError(f"measures={tuple(measures)!r}; choose from {tuple(_APARC_MEASURES)}.")
    hemi = _hemi_of(raw, path)
    need = ["StructName"] + [_APARC_MEASURES[m] for m in measures]
    idx = _require_cols(raw, need, "cortical parcellation (aparc)")
    structs = _struct_names(raw, idx[0])
    names: list[str] = []
    vals: list[np.ndarray] = []
    for m, j in zip(measures, idx[1:], strict=True):
        names += [f"{hemi}_{s}_{m}" for s in structs]
        vals.append(numeric_column(raw.cells, j, raw.columns[j], raw.row_lines, path, structs))
        if m in _HEMI_SUMMARY and _HEMI_SUMMARY[m][0] in raw.measures:
            names.append(_HEMI_SUMMARY[m][1].replace("lh_", f"{hemi}_", 1))
            vals.append(np.array([raw.measures[_HEMI_SUMMARY[m][0]].value]))
    return names, np.concatenate(vals), hemi


def _one_row(subject_id, session_id, icv, kind, names, vals) -> pd.DataFrame:
    return _volumes_frame([(subject_id, session_id, icv, kind, names, vals)])
