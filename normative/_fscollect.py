"""SUBJECTS_DIR / BIDS-derivatives collector (private; public via :mod:`normative.freesurfer`)."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from normative._fsnames import split_long_id
from normative._fsrecords import (
    _aparc_record,
    _aseg_record,
    _icv_of,
    _measure_items,
    _parse_stats_file,
    _volumes_frame,
)
from normfuse.checks import get_logger, log_dropped
from normfuse.errors import DataDroppedWarning, InputFormatError, NormfuseError

logger = get_logger("normative.freesurfer")

# Folders of a SUBJECTS_DIR that are templates, not subjects.
_NOT_SUBJECTS = ("fsaverage", "lh.EC_average", "rh.EC_average", "cvs_avg35", "V1_average")


@dataclass(frozen=True)
class SkippedScan:
    """A scan :func:`collect_subjects_dir` skipped with ``errors="skip"``, and why."""

    subject_id: str
    session_id: str | None
    path: str
    reason: str


def _atlas_files(stats: Path, atlas: str) -> list[Path]:
    if atlas in ("aseg", "wmparc", "brainvol"):
        return [stats / f"{atlas}.stats"]
    if atlas.startswith("aparc"):
        out = []
        for h in ("lh", "rh"):
            p = stats / f"{h}.{atlas}.stats"
            if not p.is_file() and atlas == "aparc.DKTatlas":
                alt = stats / f"{h}.aparc.DKTatlas.mapped.stats"   # FastSurfer's name
                p = alt if alt.is_file() else p
            out.append(p)
        return out
    raise ValueError(f"atlas {atlas!r} is unknown; choose from 'aseg', 'wmparc', 'brainvol', "
                     "'aparc', 'aparc.DKTatlas', 'aparc.a2009s' (or another 'aparc.*').")


def _find_scans(root: Path, layout: str, subjects, split_long: bool):
    """Return [(subject_id, session_id, stats folder)] in sorted order, and the layout used."""
    if layout not in ("auto", "freesurfer", "bids"):
        raise ValueError(f"layout={layout!r}; expected 'auto', 'freesurfer' or 'bids'.")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if layout == "auto":
        bids = any(p.name.startswith("sub-") and any(q.is_dir() and q.name.startswith("ses-")
                                                     for q in p.iterdir()) for p in dirs)
        layout = "bids" if bids else "freesurfer"
    scans: list[tuple[str, str | None, Path]] = []
    if layout == "bids":
        for p in dirs:
            if not p.name.startswith("sub-"):
                continue
            if subjects is not None and p.name not in subjects:
                continue
            sessions = sorted(q for q in p.iterdir() if q.is_dir() and q.name.startswith("ses-"))
            if sessions:
                scans += [(p.name, q.name, q / "stats") for q in sessions]
            else:
                scans.append((p.name, None, p / "stats"))
        return scans, layout
    n_excluded = 0
    for p in dirs:
        name = p.name
        if name.startswith(_NOT_SUBJECTS):
            continue
        if subjects is not None and name not in subjects:
            continue
        if split_long:
            sub, ses = split_long_id(name)
            if ses is None:       # cross-sectional run or base template: not a timepoint
                n_excluded += 1
                continue
            scans.append((sub, ses, p / "stats"))
        else:
            scans.append((name, None, p / "stats"))
    if n_excluded:
        logger.info("split_long=True: left out %d folders that are not '<tp>.long.<base>' "
                    "timepoints (cross-sectional runs and base templates)", n_excluded)
    return scans, layout


def _read_scan(stats: Path, atlases: Sequence[str], measures, aseg_measure: str):
    names: list[str] = []
    vals: list[np.ndarray] = []
    seen: set[str] = set()
    icv = None
    if not stats.is_dir():
        raise InputFormatError("has no 'stats' folder: recon-all did not finish for this "
                               "subject (or this is not a subject folder).", path=stats.parent)
    for atlas in atlases:
        for f in _atlas_files(stats, atlas):
            raw = _parse_stats_file(f)
            if atlas in ("aseg", "wmparc"):
                n, v, _ = _aseg_record(raw, measure=aseg_measure, include_measures=True)
            elif atlas == "brainvol":
                n, mv = _measure_items(raw.measures)
                v = np.asarray(mv, dtype=float)
            else:
                n, v, _ = _aparc_record(raw, f, measures)
            if icv is None:
                icv = _icv_of(raw.measures)
            keep = [k for k, nm in enumerate(n) if nm not in seen]
            if len(keep) != len(n):     # whole-brain measures repeated across files
                n = [n[k] for k in keep]
                v = v[keep]
            seen.update(n)
            names += n
            vals.append(v)
    return icv, names, (np.concatenate(vals) if vals else np.empty(0))


def collect_subjects_dir(
    path: str | Path,
    *,
    layout: Literal["auto", "freesurfer", "bids"] = "auto",
    atlases: Sequence[str] = ("aseg",),
    measures: Sequence[Literal["volume", "thickness", "area"]] = ("volume", "thickness", "area"),
    aseg_measure: Literal["volume", "nvoxels"] = "volume",
    subjects: Sequence[str] | None = None,
    split_long: bool = False,
    errors: Literal["raise", "skip"] = "raise",
) -> pd.DataFrame:
    """Collect the ``.stats`` files of every subject (and session) into one volumes table.

    Layouts: FreeSurfer ``SUBJECTS_DIR/<subject>/stats/*.stats`` (template folders such as
    ``fsaverage`` are ignored) and BIDS derivatives ``<root>/sub-*/ses-*/stats/*.stats``
    (or ``sub-*/stats`` without sessions). FastSurfer outputs use the same layout.

    Parameters
    ----------
    path : str or Path
        The SUBJECTS_DIR or BIDS-derivatives folder.
    layout : {"auto", "freesurfer", "bids"}
        ``"auto"`` picks ``"bids"`` when some ``sub-*`` folder holds ``ses-*`` folders.
    atlases : sequence of str
        Files to read per scan: ``"aseg"`` (aseg.stats), ``"wmparc"``, ``"brainvol"``,
        ``"aparc"``, ``"aparc.DKTatlas"`` (FastSurfer: ``aparc.DKTatlas.mapped``),
        ``"aparc.a2009s"`` (both hemispheres). ``aparc`` and ``aparc.DKTatlas`` share
        parcel names, so collect them in separate calls.
    measures : sequence of {"volume", "thickness", "area"}
        Cortical measures taken from aparc files.
    aseg_measure : {"volume", "nvoxels"}
        As ``measure`` in :func:`read_aseg_stats`.
    subjects : sequence of str, optional
        Only these subject folders (``sub-*`` names in the BIDS layout).
    split_long : bool
        FreeSurfer layout: collect only longitudinal timepoints ``<tp>.long.<base>`` and split
        their ids into ``subject_id``/``session_id`` (:func:`split_long_id`).
    errors : {"raise", "skip"}
        ``"skip"``: leave out scans whose files are missing or malformed; the skipped scans
        (:class:`SkippedScan`, with reasons) are in ``result.attrs["skipped"]``, logged, and
        counted in a :class:`~normfuse.errors.DataDroppedWarning`.

    Returns
    -------
    pandas.DataFrame
        One row per scan, sorted by folder name; ``subject_id`` is the folder name
        (``sub-01`` style ids keep their prefix).

    Raises
    ------
    InputFormatError
        The folder is missing or holds no subjects; a subject has no stats (with
        ``errors="raise"``); every subject was skipped.

    Examples
    --------
    A simulated SUBJECTS_DIR (three patients, four scans) read back; the volumes are the
    ones the simulator wrote:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from normfuse.synthetic import simulate_cohort, write_cohort
    >>> cohort = simulate_cohort(n_patients=3, n_controls_reference=20, seed=0, ehr=False, notes=False)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> paths = write_cohort(cohort, Path(tmp.name) / "demo", duckdb_file=False, exports=())
    >>> vols = collect_subjects_dir(paths["subjects"], atlases=("aseg", "aparc"))
    >>> vols["subject_id"].tolist()                  # one row per <subject>_<session> folder
    ['sub-MS0001_ses-01', 'sub-MS0002_ses-01', 'sub-MS0002_ses-02', 'sub-MS0003_ses-01']
    >>> vols["Left-Thalamus"].round(1).tolist()
    [5721.3, 6400.9, 6401.8, 7360.0]
    >>> tmp.cleanup()
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors={errors!r}; expected 'raise' or 'skip'.")
    atlases = tuple(atlases)
    if not atlases:
        raise ValueError("atlases is empty; pass e.g. atlases=('aseg',).")
    if "aparc" in atlases and "aparc.DKTatlas" in atlases:
        raise ValueError("atlases holds both 'aparc' and 'aparc.DKTatlas', whose parcels share "
                         "column names (lh_<parcel>_<measure>); collect them in two calls.")
    for a in atlases:
        _atlas_files(Path("."), a)          # validates the atlas name
    root = Path(path)
    if not root.is_dir():
        raise InputFormatError("is not a folder. Pass your SUBJECTS_DIR (or BIDS derivatives "
                               "folder).", path=root)
    scans, used = _find_scans(root, layout, None if subjects is None else set(subjects),
                              split_long)
    if not scans:
        raise InputFormatError(
            "holds no subject folders. Expected <SUBJECTS_DIR>/<subject>/stats/aseg.stats or "
            "<root>/sub-*/ses-*/stats/aseg.stats"
            + (" (with split_long=True only '<tp>.long.<base>' folders count)"
               if split_long else "") + ".", path=root)
    records = []
    skipped: list[SkippedScan] = []
    for sub, ses, stats in scans:
        try:
            icv, names, vals = _read_scan(stats, atlases, tuple(measures), aseg_measure)
        except NormfuseError as exc:
            if errors == "raise":
                raise
            skipped.append(SkippedScan(sub, ses, str(stats.parent), str(exc)))
            continue
        records.append((sub, ses, icv, "voxel_count" if aseg_measure == "nvoxels" and
                        "aseg" in atlases else "pv_corrected", names, vals))
    if skipped:
        for s in skipped:
            logger.warning("skipped %s%s: %s", s.subject_id,
                           f"/{s.session_id}" if s.session_id else "", s.reason)
        log_dropped(logger, len(skipped), "scans", "their stats files are missing or malformed")
    if not records:
        raise InputFormatError(
            f"all {len(skipped)} scans were skipped; first reason: {skipped[0].reason}",
            path=root)
    if skipped:
        warnings.warn(
            f"collect_subjects_dir: skipped {len(skipped)} of {len(scans)} scans with missing or "
            "malformed stats files (see result.attrs['skipped'] and the log). Silence with "
            "warnings.filterwarnings('ignore', category=DataDroppedWarning).",
            DataDroppedWarning, stacklevel=2)
    out = _volumes_frame(records)
    out.attrs["skipped"] = tuple(skipped)
    out.attrs["layout"] = used
    logger.info("collected %d scans (%s layout) from %s", len(records), used, root)
    return out
