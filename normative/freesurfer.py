"""Read FreeSurfer, FastSurfer and SynthSeg outputs into the ``volumes`` table.

The ``volumes`` table (ARCHITECTURE.md) has one row per scan: keys ``subject_id``,
``session_id``; meta columns ``age``, ``sex``, ``site``, ``icv`` (mm^3, from eTIV) and
``volume_kind``; then one column per region in FreeSurfer 7 names. Readers fill ``age``,
``sex`` and ``site`` with missing values (the files do not hold them): add them with
:func:`attach_demographics`.

Region columns
--------------
* aseg/wmparc regions: the FreeSurfer 7 ``StructName`` (``Left-Thalamus``);
* cortical parcels: ``lh_<StructName>_<measure>``, measure ``volume`` (GrayVol),
  ``thickness`` (ThickAvg) or ``area`` (SurfArea), as aparcstats2table writes them;
  hemisphere summaries ``lh_MeanThickness_thickness`` and ``lh_WhiteSurfArea_area``;
* whole-brain ``# Measure`` values under their short name (``BrainSegVol``, ``eTIV``,
  ``CortexVol``, ...). ``icv`` is the canonical intracranial volume (equal to ``eTIV``).

``volume_kind`` is ``pv_corrected`` for .stats-derived values, ``voxel_count`` for volumes
counted in ``aseg.mgz`` and ``soft`` for SynthSeg's posterior-based volumes; the normative
model refuses mixed kinds (:func:`require_single_volume_kind`).

Examples
--------
Files written by the simulator in FreeSurfer's formats, read back (the function
docstrings show the same calls on FreeSurfer's ``bert`` subject):

>>> import tempfile
>>> from pathlib import Path
>>> from normfuse.synthetic import simulate_cohort, write_cohort
>>> cohort = simulate_cohort(n_patients=3, n_controls_reference=20, seed=0, ehr=False, notes=False)
>>> tmp = tempfile.TemporaryDirectory()
>>> paths = write_cohort(cohort, Path(tmp.name) / "demo", duckdb_file=False, exports=())
>>> v = read_aseg_stats(paths["subjects"] / "sub-MS0002_ses-02" / "stats" / "aseg.stats")
>>> v.loc[0, "subject_id"], float(v.loc[0, "Left-Thalamus"]), v.loc[0, "volume_kind"]
('sub-MS0002_ses-02', 6401.8, 'pv_corrected')
>>> round(float(v.loc[0, "icv"]))          # eTIV, mm^3
1501014
>>> t = read_stats_table(paths["reference_controls_aseg.txt"])   # asegstats2table output
>>> len(t), t.loc[0, "subject_id"], float(t.loc[0, "Left-Thalamus"])
(20, 'sub-RC0001', 8829.3)
>>> tmp.cleanup()
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from normative._fscollect import SkippedScan, collect_subjects_dir
from normative._fsmeta import attach_demographics, require_single_volume_kind
from normative._fsnames import (
    harmonise_region_names,
    labels_to_names,
    load_label_table,
    split_long_id,
    synthseg_name_map,
)
from normative._fsparse import Measure, numeric_column, parse_table_text, read_text
from normative._fsrecords import (
    _aparc_record,
    _aseg_record,
    _check_harmonised_unique,
    _icv_of,
    _measure_items,
    _one_row,
    _parse_stats_file,
    _struct_names,
    _subject_from,
    _volumes_frame,
)
from normfuse.checks import get_logger
from normfuse.errors import (
    InputFormatError,
)

__all__ = [
    "Measure",
    "StatsFile",
    "SkippedScan",
    "read_stats",
    "read_aseg_stats",
    "read_aparc_stats",
    "read_brainvol_stats",
    "read_stats_table",
    "read_synthseg_csv",
    "read_aseg_mgz",
    "collect_subjects_dir",
    "harmonise_region_names",
    "split_long_id",
    "attach_demographics",
    "require_single_volume_kind",
]

logger = get_logger("normative.freesurfer")

VolumeKind = Literal["pv_corrected", "voxel_count", "soft"]
_INT_COLUMNS = ("Index", "SegId", "NVoxels", "NumVert")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class StatsFile:
    """A parsed FreeSurfer ``.stats`` file.

    Attributes
    ----------
    path : pathlib.Path
    header : dict of str to str
        ``# key value`` lines (``subjectname``, ``hemi``, ``cvs_version``,
        ``VoxelVolume_mm3``, ...), first occurrence of each key.
    measures : dict of str to Measure
        ``# Measure`` lines keyed by short name (``"BrainSegVol"``, ``"eTIV"``).
    table : pandas.DataFrame
        The table under ``# ColHeaders`` with those column names, in file order;
        ``StructName`` as text, the rest numeric (``Index``/``SegId``/``NVoxels``/
        ``NumVert`` as integers). Empty for files without a table (``brainvol.stats``).
    """

    path: Path
    header: dict
    measures: dict
    table: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """The ``# Measure`` lines as a DataFrame (name, structure, long_name, value, unit)."""
        rows = [(m.name, m.structure, m.long_name, m.value, m.unit) for m in self.measures.values()]
        return pd.DataFrame(rows, columns=["name", "structure", "long_name", "value", "unit"])


# --------------------------------------------------------------------------- .stats readers
def read_stats(path: str | Path) -> StatsFile:
    """Parse any FreeSurfer/FastSurfer ``.stats`` file into a :class:`StatsFile`.

    Works for ``aseg.stats``, ``wmparc.stats``, ``?h.aparc*.stats`` and ``brainvol.stats``
    from FreeSurfer 5-7 and FastSurfer. Table columns are found by name from the
    ``# ColHeaders`` line; FreeSurfer 6's ``# Measure`` line with a missing comma is read.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    StatsFile

    Raises
    ------
    InputFormatError
        Unreadable, truncated or malformed file (naming file, line and the fix).

    Examples
    --------
    >>> sf = read_stats("bert/stats/aseg.stats")                     # doctest: +SKIP
    >>> sf.measures["eTIV"].value                                    # doctest: +SKIP
    1520021.264474
    >>> int(sf.table.set_index("StructName").loc["Left-Thalamus", "NVoxels"])  # doctest: +SKIP
    8431
    """
    path = Path(path)
    raw = _parse_stats_file(path)
    data: dict[str, object] = {}
    structs = None
    if "StructName" in raw.columns:
        structs = _struct_names(raw, raw.columns.index("StructName"))
    for j, c in enumerate(raw.columns):
        if c == "StructName":
            data[c] = structs
            continue
        v = numeric_column(raw.cells, j, c, raw.row_lines, path, structs)
        if c in _INT_COLUMNS and np.all(np.isfinite(v)) and np.all(v == np.round(v)) \
                and (v.size == 0 or np.abs(v).max() < 2**62):
            v = v.astype(np.int64)
        data[c] = v
    table = pd.DataFrame(data, columns=raw.columns)
    return StatsFile(path, dict(raw.header), dict(raw.measures), table)


def read_aseg_stats(path: str | Path, *, subject_id: str | None = None,
                    session_id: str | None = None,
                    measure: Literal["volume", "nvoxels"] = "volume",
                    include_measures: bool = True) -> pd.DataFrame:
    """Read ``aseg.stats`` (or ``wmparc.stats``, FastSurfer ``aseg+DKT.stats``) as a one-row volumes table.

    Parameters
    ----------
    path : str or Path
    subject_id : str, optional
        Defaults to the file's ``# subjectname``, else the subject folder's name.
    session_id : str, optional
        Defaults to missing.
    measure : {"volume", "nvoxels"}
        ``"volume"``: ``Volume_mm3`` (partial-volume corrected, ``volume_kind`` =
        ``pv_corrected``); ``"nvoxels"``: ``NVoxels`` x ``VoxelVolume_mm3``
        (``voxel_count``).
    include_measures : bool
        Add the whole-brain ``# Measure`` values as columns (``BrainSegVol``, ``eTIV``, ...).

    Returns
    -------
    pandas.DataFrame
        One row: keys, meta (``icv`` from eTIV; ``age``/``sex``/``site`` missing), regions
        in file order under FreeSurfer 7 names, then measures.

    Raises
    ------
    InputFormatError

    Examples
    --------
    >>> v = read_aseg_stats("bert/stats/aseg.stats")                 # doctest: +SKIP
    >>> v.loc[0, ["Left-Thalamus", "icv"]].astype(float).tolist()    # doctest: +SKIP
    [8066.3, 1520021.264474]
    """
    path = Path(path)
    raw = _parse_stats_file(path)
    names, vals, kind = _aseg_record(raw, measure=measure, include_measures=include_measures)
    sid = subject_id if subject_id is not None else _subject_from(raw, path)
    return _one_row(sid, session_id, _icv_of(raw.measures), kind, names, vals)


def read_aparc_stats(path: str | Path, *,
                     measures: Sequence[Literal["volume", "thickness", "area"]] = (
                         "volume", "thickness", "area"),
                     subject_id: str | None = None,
                     session_id: str | None = None) -> pd.DataFrame:
    """Read one hemisphere's ``?h.aparc*.stats`` as a one-row volumes table.

    Columns are named as aparcstats2table does: ``lh_<StructName>_<measure>`` with
    ``volume`` = GrayVol, ``thickness`` = ThickAvg, ``area`` = SurfArea, plus
    ``lh_MeanThickness_thickness`` and ``lh_WhiteSurfArea_area`` from the ``# Measure``
    lines. Works for aparc, aparc.DKTatlas (FastSurfer: ``aparc.DKTatlas.mapped``) and
    aparc.a2009s. ``icv`` comes from the file's eTIV line (FreeSurfer >= 6).

    Parameters
    ----------
    path : str or Path
    measures : sequence of {"volume", "thickness", "area"}
    subject_id, session_id : str, optional
        As in :func:`read_aseg_stats`.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> v = read_aparc_stats("bert/stats/lh.aparc.stats", measures=("thickness",))  # doctest: +SKIP
    >>> float(v.loc[0, "lh_bankssts_thickness"])                     # doctest: +SKIP
    2.805
    """
    path = Path(path)
    raw = _parse_stats_file(path)
    names, vals, _ = _aparc_record(raw, path, tuple(measures))
    sid = subject_id if subject_id is not None else _subject_from(raw, path)
    return _one_row(sid, session_id, _icv_of(raw.measures), "pv_corrected", names, vals)


def read_brainvol_stats(path: str | Path, *, subject_id: str | None = None,
                        session_id: str | None = None) -> pd.DataFrame:
    """Read ``brainvol.stats`` (whole-brain ``# Measure`` lines only) as a one-row table.

    ``brainvol.stats`` holds no eTIV, so ``icv`` is missing; take it from ``aseg.stats``.

    Examples
    --------
    >>> float(read_brainvol_stats("bert/stats/brainvol.stats").loc[0, "BrainSegVol"])  # doctest: +SKIP
    1218061.0
    """
    path = Path(path)
    raw = _parse_stats_file(path)
    if not raw.measures:
        raise InputFormatError("holds no '# Measure' lines; is it a brainvol.stats file?",
                               path=path)
    names, vals = _measure_items(raw.measures)
    sid = subject_id if subject_id is not None else _subject_from(raw, path)
    return _one_row(sid, session_id, _icv_of(raw.measures), "pv_corrected", names,
                    np.asarray(vals, dtype=float))


# --------------------------------------------------------------------------- tables
_APARC_FIRST = re.compile(r"^([lr]h)\.(.+)\.([A-Za-z]+)$")


def read_stats_table(path: str | Path, *, kind: Literal["auto", "aseg", "aparc"] = "auto",
                     split_long: bool = False) -> pd.DataFrame:
    """Read an ``asegstats2table`` or ``aparcstats2table`` output as a volumes table.

    Tab- or space-separated; FreeSurfer 5.x column names (``Left-Thalamus-Proper``,
    ``IntraCranialVol``, ``lhCorticalWhiteMatterVol``) are harmonised to FreeSurfer 7
    (:func:`harmonise_region_names`); ``icv`` is filled from ``EstimatedTotalIntraCranialVol``
    / ``eTIV`` / ``IntraCranialVol``.

    Parameters
    ----------
    path : str or Path
    kind : {"auto", "aseg", "aparc"}
        ``"auto"`` tells them apart by the first header cell (``Measure:volume`` for
        asegstats2table, ``lh.aparc.thickness`` for aparcstats2table).
    split_long : bool
        Split FreeSurfer longitudinal ids ``<tp>.long.<base>`` into ``subject_id`` and
        ``session_id`` (:func:`split_long_id`); otherwise the whole id is ``subject_id``.

    Returns
    -------
    pandas.DataFrame
        One row per table row, in file order; ``volume_kind`` = ``pv_corrected``.

    Raises
    ------
    InputFormatError
        Unknown layout, ragged rows, duplicate subjects or non-numeric cells.

    Examples
    --------
    >>> t = read_stats_table("aseg_stats.txt", split_long=True)      # doctest: +SKIP
    >>> t.loc[0, ["subject_id", "session_id"]].tolist()              # doctest: +SKIP
    ['13900', '01']
    """
    if kind not in ("auto", "aseg", "aparc"):
        raise ValueError(f"kind={kind!r}; expected 'auto', 'aseg' or 'aparc'.")
    path = Path(path)
    text = read_text(path)
    head = next((ln.strip() for ln in text.split("\n") if ln.strip()), "")
    first = head.split("\t" if "\t" in head else None, 1)[0].strip() if head else ""
    detected = ("aseg" if first.startswith("Measure:")
                else "aparc" if _APARC_FIRST.match(first) else None)
    if detected is None:
        raise InputFormatError(
            f"unknown table format: the first header cell is {first[:60]!r}, but "
            "asegstats2table writes 'Measure:volume' and aparcstats2table "
            "'<hemi>.<parc>.<measure>' (e.g. 'lh.aparc.thickness'). Pass kind='aseg' or "
            "'aparc' if the header was edited.", path=path, line=1)
    if kind != "auto" and kind != detected:
        raise InputFormatError(f"kind={kind!r} but the header cell {first!r} is that of an "
                               f"{detected}stats2table output.", path=path, line=1)
    if detected == "aseg" and first != "Measure:volume":
        raise InputFormatError(
            f"this asegstats2table output holds {first!r}, not volumes; re-run "
            "asegstats2table with --meas volume (the default).", path=path, line=1)
    raw = parse_table_text(text, path)
    raw_names = list(raw.columns)
    names = harmonise_region_names(raw_names)
    _check_harmonised_unique(names, raw_names, path)
    vals = np.empty(raw.cells.shape, dtype=float)
    for j, c in enumerate(raw_names):
        vals[:, j] = numeric_column(raw.cells, j, c, raw.row_lines, path, None)
    icv_col = next((k for k, n in enumerate(names) if n == "eTIV"), None)
    records = []
    for r, rid in enumerate(raw.ids):
        sub, ses = split_long_id(rid) if split_long else (rid, None)
        icv = None if icv_col is None else vals[r, icv_col]
        records.append((sub, ses, icv, "pv_corrected", names, vals[r]))
    out = _volumes_frame(records)
    _check_unique_keys(out, path)
    return out


def _check_unique_keys(df: pd.DataFrame, where) -> None:
    keys = list(zip(df["subject_id"], df["session_id"].where(df["session_id"].notna(), None),
                    strict=True))
    if len(set(keys)) != len(keys):
        seen = set()
        dups = [k for k in keys if k in seen or seen.add(k)]
        raise InputFormatError(
            f"(subject_id, session_id) pairs repeat: {dups[:10]}. Each scan must appear once; "
            "with longitudinal ids use split_long=True only when timepoint ids are unique.",
            path=where)


# --------------------------------------------------------------------------- SynthSeg
_BIDS_SUB = re.compile(r"(?:^|[_/])(sub-[A-Za-z0-9]+)")
_BIDS_SES = re.compile(r"(?:^|[_/])(ses-[A-Za-z0-9]+)")
_IMG_EXT = re.compile(r"(\.nii\.gz|\.nii|\.mgz|\.mgh|\.img)$", re.IGNORECASE)


def _ids_from_image_name(name: str, parse_bids: bool) -> tuple[str, str | None]:
    base = _IMG_EXT.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    if parse_bids:
        m = _BIDS_SUB.search(base)
        if m:
            s = _BIDS_SES.search(base)
            return m.group(1), (s.group(1) if s else None)
    return base, None


def read_synthseg_csv(path: str | Path, *, parse_bids: bool = True) -> pd.DataFrame:
    """Read SynthSeg's ``--vol`` CSV as a volumes table (``volume_kind`` = ``soft``).

    SynthSeg writes one row per image: ``subject`` (the image name), ``total intracranial``
    (-> ``icv``), then one column per structure in lower-case names (``left thalamus``),
    mapped to FreeSurfer 7 names through the label ids (``Left-Thalamus``); with ``--parc``
    also ``ctx-lh-<parcel>`` columns, named ``lh_<parcel>_volume``.

    Parameters
    ----------
    path : str or Path
    parse_bids : bool
        When the image name holds BIDS entities (``sub-01_ses-02_T1w``), use ``sub-01`` as
        ``subject_id`` and ``ses-02`` as ``session_id``; otherwise the image name without
        folder and extension is ``subject_id``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InputFormatError
        Missing ``subject`` column, unknown structure names, ragged or non-numeric rows.

    Examples
    --------
    >>> v = read_synthseg_csv("volumes.csv")                         # doctest: +SKIP
    >>> v.loc[0, ["subject_id", "volume_kind"]].tolist()             # doctest: +SKIP
    ['sub-01', 'soft']
    """
    path = Path(path)
    text = read_text(path)
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise InputFormatError(f"is not a valid CSV file ({exc}).", path=path) from None
    if not rows:
        raise InputFormatError("the file is empty. Re-run SynthSeg with --vol.", path=path)
    head = [c.strip() for c in rows[0]]
    if not head or head[0].lower() != "subject":
        raise InputFormatError(
            f"the first header cell is {head[0][:40]!r}, not 'subject': this is not a "
            "SynthSeg --vol CSV (a --qc CSV holds QC scores, not volumes).", path=path, line=1)
    if len(set(head)) != len(head):
        dup = sorted({c for c in head if head.count(c) > 1})
        raise InputFormatError(f"the header repeats column(s) {dup}.", path=path, line=1)
    ss = synthseg_name_map()
    names: list[str] = []
    icv_j = None
    for j, c in enumerate(head[1:]):
        low = c.lower()
        if low == "total intracranial":
            icv_j = j
            names.append("eTIV_synthseg")
        elif low in ss:
            names.append(ss[low])
        elif c.startswith("ctx-"):
            names.append(harmonise_region_names(c))
        else:
            raise InputFormatError(
                f"unknown SynthSeg structure {c!r} in the header; expected SynthSeg 2 names "
                "such as 'left thalamus' or 'ctx-lh-insula'. Rename the column or drop it.",
                path=path, line=1)
    if len(set(names)) != len(names):
        raise InputFormatError("two header columns map to the same FreeSurfer 7 name.",
                               path=path, line=1)
    if icv_j is None:
        raise InputFormatError("no 'total intracranial' column; re-run SynthSeg with --vol.",
                               path=path, line=1)
    body = rows[1:]
    if not body:
        raise InputFormatError("the CSV has a header but no rows.", path=path, line=1)
    ids, cells = [], []
    for k, r in enumerate(body, 2):
        if len(r) != len(head):
            raise InputFormatError(f"row has {len(r)} fields but the header has {len(head)}; "
                                   "the file is truncated or edited.", path=path, line=k)
        ids.append(r[0].strip())
        cells.append([c.strip() for c in r[1:]])
    arr = np.array(cells, dtype=str)
    lines = list(range(2, len(body) + 2))
    vals = np.column_stack([numeric_column(arr, j, head[j + 1], lines, path, ids)
                            for j in range(arr.shape[1])])
    keep = [j for j in range(len(names)) if j != icv_j]
    region_names = [names[j] for j in keep]
    records = []
    for r, rid in enumerate(ids):
        sub, ses = _ids_from_image_name(rid, parse_bids)
        records.append((sub, ses, vals[r, icv_j], "soft", region_names, vals[r, keep]))
    out = _volumes_frame(records)
    _check_unique_keys(out, path)
    return out


# --------------------------------------------------------------------------- aseg.mgz
def read_aseg_mgz(path: str | Path, *, unit: Literal["mm3", "voxels"] = "mm3",
                  labels: Mapping[int, str] | None = None, include_zero: bool = False,
                  subject_id: str | None = None, session_id: str | None = None,
                  icv: float | None = None) -> pd.DataFrame:
    """Count the voxels of each label in a segmentation volume (``aseg.mgz``, ``aparc+aseg.mgz``).

    Label ids are named with the label table shipped in ``normative/data`` (FreeSurfer 7
    names; cortical parcels ``ctx-lh-X`` become ``lh_X_volume``). Counts are exact, so they
    equal ``NVoxels`` in ``aseg.stats``, while ``Volume_mm3`` there is partial-volume
    corrected and differs (bert Left-Thalamus: 8431 voxels, 8066.3 mm^3).

    Parameters
    ----------
    path : str or Path
        Any image nibabel reads (``.mgz``, ``.nii.gz``) holding integer labels.
    unit : {"mm3", "voxels"}
        ``"mm3"``: count x voxel volume (from the header's voxel sizes); ``"voxels"``: counts.
    labels : mapping of int to str, optional
        Your own id -> name table (e.g. from a custom LUT); default: the shipped table.
    include_zero : bool
        Also report labels of the table that are absent from the volume (as 0), so tables
        from different subjects share columns. Label 0 (background) is never reported.
    subject_id, session_id : str, optional
        ``subject_id`` defaults to the subject folder (``<subject>/mri/aseg.mgz``).
    icv : float, optional
        Intracranial volume to record (the volume holds none; e.g. eTIV from aseg.stats).

    Returns
    -------
    pandas.DataFrame
        One row, ``volume_kind`` = ``voxel_count``.

    Raises
    ------
    InputFormatError
        The file is not a readable image, holds non-integer or negative values, or
        mostly ids unknown to the label table (not a segmentation?).

    Examples
    --------
    >>> v = read_aseg_mgz("bert/mri/aseg.mgz", unit="voxels")        # doctest: +SKIP
    >>> int(v.loc[0, "Left-Thalamus"])                               # doctest: +SKIP
    8431
    """
    if unit not in ("mm3", "voxels"):
        raise ValueError(f"unit={unit!r}; expected 'mm3' or 'voxels'.")
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputFormatError("file not found. Check the path.", path=path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = img.header.get_zooms()[:3]
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputFormatError(f"cannot be read as an image by nibabel ({type(exc).__name__}: "
                               f"{exc}). Is the file complete?", path=path) from None
    if data.ndim < 3 or (data.ndim > 3 and int(np.prod(data.shape[3:])) != 1):
        raise InputFormatError(f"is not a single 3-D segmentation (shape {data.shape}).",
                               path=path)
    flat = data.ravel(order="K")            # no copy for FreeSurfer's Fortran-ordered data
    if not flat.dtype.isnative:             # .mgz is big-endian: swap once, cheaply
        flat = flat.byteswap().view(flat.dtype.newbyteorder())
    if flat.dtype.kind == "f":
        if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)):
            raise InputFormatError("holds non-integer values: it is an intensity image, not "
                                   "a segmentation (use aseg.mgz or aparc+aseg.mgz).", path=path)
    elif flat.dtype.kind not in "iu":
        raise InputFormatError(f"holds {flat.dtype} values, not integer labels.", path=path)
    if flat.size and flat.min() < 0:
        raise InputFormatError(f"holds negative label {int(flat.min())}.", path=path)
    if flat.dtype.kind == "f" or flat.dtype.itemsize > 4 or flat.dtype == np.uint32:
        flat = flat.astype(np.int64)
    counts = np.bincount(flat) if flat.size else np.zeros(1, dtype=np.int64)
    ids = np.flatnonzero(counts)
    ids = ids[ids != 0]
    table_ids = set(labels) if labels is not None else set(load_label_table())
    unknown = [int(i) for i in ids if int(i) not in table_ids]
    n_unknown = int(counts[unknown].sum()) if unknown else 0
    n_labelled = int(counts[ids].sum()) if ids.size else 0
    if n_labelled and n_unknown > 0.05 * n_labelled:
        raise InputFormatError(
            f"{n_unknown} of {n_labelled} labelled voxels carry ids the label table does not "
            f"know ({unknown[:10]}): this is not an aseg-style segmentation, or it uses another "
            "lookup table; pass labels={id: name, ...}.", path=path)
    if unknown:
        logger.warning("%s: %d label ids not in the label table, named 'label_<id>': %s",
                       path, len(unknown), unknown[:10])
    if include_zero:
        extra = sorted(i for i in table_ids if i != 0 and (i >= counts.size or counts[i] == 0))
        ids = np.array(sorted(set(ids.tolist()) | set(extra)), dtype=np.int64)
    ids_list = [int(i) for i in ids]
    named = labels_to_names(ids_list, labels)
    names = [n if n is not None else f"label_{i}" for n, i in zip(named, ids_list, strict=True)]
    _check_harmonised_unique(names, [str(i) for i in ids_list], path)
    padded = np.zeros(max(counts.size, (max(ids_list) + 1) if ids_list else 0), dtype=np.int64)
    padded[:counts.size] = counts
    vals = padded[ids].astype(float) if ids_list else np.empty(0)
    if unit == "mm3":
        vals = vals * float(np.prod(np.asarray(zooms, dtype=float)))
    if subject_id is None:
        parent = path.resolve().parent
        subject_id = parent.parent.name if parent.name == "mri" else parent.name
    return _one_row(subject_id, session_id, icv, "voxel_count", names, vals)
