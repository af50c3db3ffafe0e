"""Write a :class:`~normfuse.synthetic.cohort.SyntheticCohort` in the formats users have.

Layout of ``out_dir`` (replaced as a whole, atomically)::

    subjects/<subject_id>_<session_id>/stats/aseg.stats      FreeSurfer 7 mri_segstats format
    subjects/<subject_id>_<session_id>/stats/lh.aparc.stats  mris_anatomical_stats format
    subjects/<subject_id>_<session_id>/stats/rh.aparc.stats
    participants.tsv                subject_id, session_id, age, sex, site, scan_date
    reference_controls_aseg.txt     asegstats2table --meas volume (tab-separated)
    reference_controls_lh.aparc.volume.txt / _rh.  aparcstats2table --meas volume
    reference_controls.tsv          subject_id, age, sex, site, scan_date
    matched_controls_aseg.txt, matched_controls_?h.aparc.volume.txt, matched_controls.tsv
    ehr.duckdb                      OMOP-CDM-shaped tables (see :func:`omop_tables`)
    exports/{events,notes,visits,demographics,encounters}.{csv,parquet}
    normfuse_synthetic.json         manifest: seed, sizes, file list

The contract values round-trip exactly: ``Volume_mm3`` is written with one decimal and
``GrayVol`` as an integer, which is how the simulator rounds them, and eTIV with six
decimals (ICV is rounded to three). Rows and measures outside the contract (other aseg
structures, intensity columns, surface statistics, global volumes) are filler drawn
from the parameters in ``params/control_curves.json``; patients' white-matter
hypointensities (MS lesions) are multiplied by ``exp(1.6 + 0.6 N(0, 1))`` (about x5).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from normfuse.checks import get_logger
from normfuse.persist import atomic_path
from normfuse.synthetic._regions import ASEG_ROWS, DK_PARCELS
from normfuse.synthetic._volumes import load_params

__all__ = ["write_cohort", "aseg_table", "omop_tables", "MANIFEST", "VITAL_CONCEPT_IDS"]

log = get_logger("normfuse.synthetic")
MANIFEST = "normfuse_synthetic.json"

#: Global measures of an FS7 ``asegstats2table`` table, in its column order.
GLOBAL_TABLE_MEASURES = (
    "BrainSegVol", "BrainSegVolNotVent", "lhCortexVol", "rhCortexVol", "CortexVol",
    "lhCerebralWhiteMatterVol", "rhCerebralWhiteMatterVol", "CerebralWhiteMatterVol",
    "SubCortGrayVol", "TotalGrayVol", "SupraTentorialVol", "SupraTentorialVolNotVent",
    "MaskVol", "BrainSegVol-to-eTIV", "MaskVol-to-eTIV", "EstimatedTotalIntraCranialVol",
)
_ZERO_ROWS = ("5th-Ventricle", "Left-WM-hypointensities", "Right-WM-hypointensities",
              "non-WM-hypointensities", "Left-non-WM-hypointensities",
              "Right-non-WM-hypointensities")
_SUBCORT_GRAY = tuple(f"{s}-{r}" for s in ("Left", "Right") for r in (
    "Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala", "Accumbens-area",
    "VentralDC"))
_VENT = ("Left-Lateral-Ventricle", "Right-Lateral-Ventricle", "Left-Inf-Lat-Vent",
         "Right-Inf-Lat-Vent", "3rd-Ventricle", "4th-Ventricle", "5th-Ventricle",
         "Left-choroid-plexus", "Right-choroid-plexus")


def aseg_table(volumes: pd.DataFrame, *, seed: int = 0, patient: bool = False) -> pd.DataFrame:
    """All 45 FS7 aseg rows and the global measures for each scan of ``volumes``.

    Contract regions and ICV are copied; the rest is filler (module docstring).
    Returns a DataFrame with the ``volumes`` index, aseg ``StructName`` columns, the
    ``GLOBAL_TABLE_MEASURES`` and ``lhSurfaceHoles``/``rhSurfaceHoles``.
    """
    p = load_params()
    rng = np.random.default_rng([seed, 7, int(patient)])
    n = len(volumes)
    icv = volumes["icv"].to_numpy(float)
    licv = np.log(icv / p["icv_ref"])
    out = {}
    for _, name in ASEG_ROWS:
        if name in volumes.columns:
            out[name] = volumes[name].to_numpy(float)
        elif name in _ZERO_ROWS:
            out[name] = np.zeros(n)
        else:
            f = p["aseg_filler"][name]
            v = np.exp(f["log_median"] + f["log_icv"] * licv + f["log_sd"] * rng.standard_normal(n))
            if patient and name == "WM-hypointensities":
                v = v * np.exp(1.6 + 0.6 * rng.standard_normal(n))  # MS lesion load
            out[name] = np.rint(v * 10) / 10
    lh = volumes[[f"lh_{q}_volume" for q in DK_PARCELS]].to_numpy(float).sum(axis=1)
    rh = volumes[[f"rh_{q}_volume" for q in DK_PARCELS]].to_numpy(float).sum(axis=1)
    g = p["global_measure_ratio"]
    m = {}
    m["lhCortexVol"] = lh * p["cortical"]["lh_sum_to_cortexvol"]
    m["rhCortexVol"] = rh * p["cortical"]["rh_sum_to_cortexvol"]
    m["CortexVol"] = m["lhCortexVol"] + m["rhCortexVol"]
    wm_scale = np.exp(0.05 * rng.standard_normal(n))
    m["lhCerebralWhiteMatterVol"] = np.rint(icv * g["lhCerebralWhiteMatterVol"] * wm_scale)
    m["rhCerebralWhiteMatterVol"] = np.rint(icv * g["rhCerebralWhiteMatterVol"] * wm_scale)
    m["CerebralWhiteMatterVol"] = m["lhCerebralWhiteMatterVol"] + m["rhCerebralWhiteMatterVol"]
    m["SubCortGrayVol"] = np.rint(sum(out[r] for r in _SUBCORT_GRAY))
    m["TotalGrayVol"] = (m["CortexVol"] + m["SubCortGrayVol"] + out["Left-Cerebellum-Cortex"]
                         + out["Right-Cerebellum-Cortex"])
    vent = np.rint(sum(out[r] for r in _VENT))
    m["BrainSegVol"] = np.rint(m["TotalGrayVol"] + m["CerebralWhiteMatterVol"] + vent
                               + out["Left-Cerebellum-White-Matter"]
                               + out["Right-Cerebellum-White-Matter"] + out["Brain-Stem"]
                               + out["WM-hypointensities"])
    m["BrainSegVolNotVent"] = m["BrainSegVol"] - vent
    infra = (out["Left-Cerebellum-White-Matter"] + out["Right-Cerebellum-White-Matter"]
             + out["Left-Cerebellum-Cortex"] + out["Right-Cerebellum-Cortex"] + out["Brain-Stem"])
    m["SupraTentorialVol"] = np.rint(m["BrainSegVol"] - infra)
    m["SupraTentorialVolNotVent"] = m["SupraTentorialVol"] - vent
    m["MaskVol"] = np.rint(icv * g["MaskVol"] * np.exp(0.03 * rng.standard_normal(n)))
    m["BrainSegVol-to-eTIV"] = np.round(m["BrainSegVol"] / icv, 6)
    m["MaskVol-to-eTIV"] = np.round(m["MaskVol"] / icv, 6)
    m["EstimatedTotalIntraCranialVol"] = icv
    m["VentricleChoroidVol"] = vent
    m["lhSurfaceHoles"] = rng.poisson(15, n).astype(float)
    m["rhSurfaceHoles"] = rng.poisson(15, n).astype(float)
    return pd.DataFrame({**out, **m}, index=volumes.index)


_ASEG_MEASURES = (
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", "mm^3"),
    ("VentricleChoroidVol", "VentricleChoroidVol", "Volume of ventricles and choroid plexus", "mm^3"),
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", "mm^3"),
    ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume", "mm^3"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", "mm^3"),
    ("lhCerebralWhiteMatter", "lhCerebralWhiteMatterVol", "Left hemisphere cerebral white matter volume", "mm^3"),
    ("rhCerebralWhiteMatter", "rhCerebralWhiteMatterVol", "Right hemisphere cerebral white matter volume", "mm^3"),
    ("CerebralWhiteMatter", "CerebralWhiteMatterVol", "Total cerebral white matter volume", "mm^3"),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", "mm^3"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", "mm^3"),
    ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "mm^3"),
    ("SupraTentorialNotVent", "SupraTentorialVolNotVent", "Supratentorial volume", "mm^3"),
    ("Mask", "MaskVol", "Mask Volume", "mm^3"),
    ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV", "Ratio of BrainSegVol to eTIV", "unitless"),
    ("MaskVol-to-eTIV", "MaskVol-to-eTIV", "Ratio of MaskVol to eTIV", "unitless"),
    ("lhSurfaceHoles", "lhSurfaceHoles", "Number of defect holes in lh surfaces prior to fixing", "unitless"),
    ("rhSurfaceHoles", "rhSurfaceHoles", "Number of defect holes in rh surfaces prior to fixing", "unitless"),
    ("SurfaceHoles", "SurfaceHoles", "Total number of defect holes in surfaces prior to fixing", "unitless"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
)

#: FreeSurfer 7.2's table header lines, verbatim (their irregular trailing spaces included).
_ASEG_TABLE_HEADER = (
    '# TableCol  1 ColHeader Index ',
    '# TableCol  1 FieldName Index ',
    '# TableCol  1 Units     NA ',
    '# TableCol  2 ColHeader SegId ',
    '# TableCol  2 FieldName Segmentation Id',
    '# TableCol  2 Units     NA',
    '# TableCol  3 ColHeader NVoxels ',
    '# TableCol  3 FieldName Number of Voxels',
    '# TableCol  3 Units     unitless',
    '# TableCol  4 ColHeader Volume_mm3',
    '# TableCol  4 FieldName Volume',
    '# TableCol  4 Units     mm^3',
    '# TableCol  5 ColHeader StructName',
    '# TableCol  5 FieldName Structure Name',
    '# TableCol  5 Units     NA',
    '# TableCol  6 ColHeader normMean ',
    '# TableCol  6 FieldName Intensity normMean',
    '# TableCol  6 Units     MR',
    '# TableCol  7 ColHeader normStdDev',
    '# TableCol  7 FieldName Itensity normStdDev',
    '# TableCol  7 Units     MR',
    '# TableCol  8 ColHeader normMin',
    '# TableCol  8 FieldName Intensity normMin',
    '# TableCol  8 Units     MR',
    '# TableCol  9 ColHeader normMax',
    '# TableCol  9 FieldName Intensity normMax',
    '# TableCol  9 Units     MR',
    '# TableCol 10 ColHeader normRange',
    '# TableCol 10 FieldName Intensity normRange',
    '# TableCol 10 Units     MR',
    '# NRows 45 ',
    '# NTableCols 10 ',
    '# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin normMax normRange  ',
)
_APARC_TABLE_HEADER = (
    '# NTableCols 10',
    '# TableCol  1 ColHeader StructName',
    '# TableCol  1 FieldName Structure Name',
    '# TableCol  1 Units     NA',
    '# TableCol  2 ColHeader NumVert',
    '# TableCol  2 FieldName Number of Vertices',
    '# TableCol  2 Units     unitless',
    '# TableCol  3 ColHeader SurfArea',
    '# TableCol  3 FieldName Surface Area',
    '# TableCol  3 Units     mm^2',
    '# TableCol  4 ColHeader GrayVol',
    '# TableCol  4 FieldName Gray Matter Volume',
    '# TableCol  4 Units     mm^3',
    '# TableCol  5 ColHeader ThickAvg ',
    '# TableCol  5 FieldName Average Thickness',
    '# TableCol  5 Units     mm',
    '# TableCol  6 ColHeader ThickStd',
    '# TableCol  6 FieldName Thickness StdDev',
    '# TableCol  6 Units     mm ',
    '# TableCol  7 ColHeader MeanCurv',
    '# TableCol  7 FieldName Integrated Rectified Mean Curvature',
    '# TableCol  7 Units     mm^-1',
    '# TableCol  8 ColHeader GausCurv ',
    '# TableCol  8 FieldName Integrated Rectified Gaussian Curvature',
    '# TableCol  8 Units     mm^-2',
    '# TableCol  9 ColHeader  FoldInd',
    '# TableCol  9 FieldName  Folding Index ',
    '# TableCol  9 Units      unitless ',
    '# TableCol 10 ColHeader CurvInd',
    '# TableCol 10 FieldName Intrinsic Curvature Index',
    '# TableCol 10 Units     unitless',
    '# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd',
)


def _aseg_header(subject: str, subjects_dir: str) -> str:
    lines = [
        "# Title Segmentation Statistics ", "# ", "# generating_program mri_segstats",
        "# cvs_version 7.2.0",
        "# cmdline mri_segstats --seed 1234 --seg mri/aseg.mgz --sum stats/aseg.stats --pv "
        "mri/norm.mgz --empty --brainmask mri/brainmask.mgz --brain-vol-from-seg --excludeid 0 "
        "--excl-ctxgmwm --supratent --subcortgray --in mri/norm.mgz --in-intensity-name norm "
        "--in-intensity-units MR --etiv --surf-wm-vol --surf-ctx-vol --totalgray --euler "
        "--ctab $FREESURFER_HOME/ASegStatsLUT.txt --subject " + subject + " ",
        "# sysname  Linux", "# hostname normfuse-synthetic", "# machine  x86_64",
        "# user     normfuse", "# anatomy_type volume", "# ",
        f"# SUBJECTS_DIR {subjects_dir}", f"# subjectname {subject}",
        "# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3",
    ]
    return "\n".join(lines) + "\n"


def _aseg_tail_header() -> str:
    lines = [
        "# SegVolFile mri/aseg.mgz ", "# ColorTable $FREESURFER_HOME/ASegStatsLUT.txt ",
        "# InVolFile  mri/norm.mgz ", "# InVolFrame 0 ", "# PVVolFile  mri/norm.mgz ",
        "# Excluding Cortical Gray and White Matter", "# ExcludeSegId 0 2 3 41 42 ",
        "# VoxelVolume_mm3 1 ",
    ]
    lines += list(_ASEG_TABLE_HEADER)
    return "\n".join(lines) + "\n"


def _fmt_measure(val: float, unit: str) -> str:
    return f"{int(val)}" if unit == "unitless" and float(val).is_integer() else f"{val:f}"


def _write_subject_stats(root: Path, vols: pd.DataFrame, full: pd.DataFrame, seed: int) -> int:
    """aseg.stats and ?h.aparc.stats for every scan; returns the number of files written."""
    p = load_params()
    rng = np.random.default_rng([seed, 11])
    n = len(vols)
    names = [nm for _, nm in ASEG_ROWS]
    V = full[names].to_numpy(float)
    nvox_ratio = np.array([p["aseg_filler"][nm]["nvox_per_mm3"] for nm in names])
    nvox = np.rint(V * nvox_ratio * np.exp(0.01 * rng.standard_normal(V.shape))).astype(np.int64)
    inten = np.array([p["aseg_filler"][nm]["intensity"] for nm in names])   # (45, 5)
    jitter = 1 + 0.02 * rng.standard_normal((n, len(names), 1))
    inten_n = inten[None] * jitter
    inten_n[:, :, 4] = inten_n[:, :, 3] - inten_n[:, :, 2]
    inten_n[V == 0] = 0.0
    nvox[V == 0] = 0
    row_fmt = "%3d %3d %9d %10.1f  %-30s %10.4f %10.4f %10.4f %10.4f %10.4f "
    table_fmt = "\n".join(row_fmt for _ in names) + "\n"
    seg_ids = [sid for sid, _ in ASEG_ROWS]
    tail = _aseg_tail_header()
    full = full.assign(SurfaceHoles=full["lhSurfaceHoles"] + full["rhSurfaceHoles"])
    meas = full[[k for _, k, _, _ in _ASEG_MEASURES if k != "eTIV"]
                + ["EstimatedTotalIntraCranialVol"]].to_numpy(float)
    units = [u for *_, u in _ASEG_MEASURES]

    cort = {h: vols[[f"{h}_{q}_volume" for q in DK_PARCELS]].to_numpy(float) for h in ("lh", "rh")}
    sids = vols["subject_id"].to_numpy(str)
    sess = vols["session_id"].to_numpy(str)
    sdir = str(root)
    count = 0
    for i in range(n):
        subj = f"{sids[i]}_{sess[i]}"
        stats = root / subj / "stats"
        stats.mkdir(parents=True)
        head = _aseg_header(subj, sdir)
        mlines = "".join(
            f"# Measure {a}, {b}, {c}, {_fmt_measure(meas[i, j], u)}, {u}\n"
            for j, ((a, b, c, _), u) in enumerate(zip(_ASEG_MEASURES, units, strict=True)))
        vals = []
        for j in range(len(names)):
            vals += [j + 1, seg_ids[j], nvox[i, j], V[i, j], names[j], *inten_n[i, j]]
        (stats / "aseg.stats").write_text(head + mlines + tail + table_fmt % tuple(vals))
        for h in ("lh", "rh"):
            (stats / f"{h}.aparc.stats").write_text(
                _aparc_text(subj, sdir, h, cort[h][i], full.iloc[i], p, rng))
        count += 3
    return count


def _aparc_text(subj, sdir, hemi, gray, full_row, p, rng) -> str:
    c = [p["cortical"][f"{hemi}_{q}_volume"] for q in DK_PARCELS]
    thick = np.array([x["thick"] for x in c]) * np.exp(0.05 * rng.standard_normal(len(c)))
    area = np.rint(gray * np.array([x["area_thick_per_vol"] for x in c]) / thick)
    nvert = np.rint(area * np.array([x["vert_per_area"] for x in c])).astype(int)
    rows = "".join(
        "%-40s%5d %6d %6d %6.3f %5.3f %9.3f %9.3f %8d %7.1f\n" % (  # noqa: UP031 (FreeSurfer printf)
            q, nvert[k], area[k], gray[k], thick[k], x["thick_std"], x["mean_curv"],
            x["gaus_curv"], x["fold_ind"], x["curv_ind"])
        for k, (q, x) in enumerate(zip(DK_PARCELS, c, strict=True)))
    tot_area = area.sum()
    mean_thick = float((thick * area).sum() / tot_area)
    head = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ", "# ",
        "# CreationTime 2020/01/01-00:00:00-GMT", "# generating_program mris_anatomical_stats",
        "# cvs_version 7.2.0", "# mrisurf.c-cvs_version 7.2.0",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label -f "
        f"../stats/{hemi}.aparc.stats -b -a ../label/{hemi}.aparc.annot -c "
        f"../label/aparc.annot.ctab {subj} {hemi} white ",
        "# sysname  Linux", "# hostname normfuse-synthetic", "# machine  x86_64",
        "# user     normfuse", "# ", f"# SUBJECTS_DIR {sdir}", "# anatomy_type surface",
        f"# subjectname {subj}", f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.aparc.annot",
        "# AnnotationFileTimeStamp 2020/01/01 00:00:00",
        f"# Measure Cortex, NumVert, Number of Vertices, {int(nvert.sum())}, unitless",
        f"# Measure Cortex, WhiteSurfArea, White Surface Total Area, {tot_area:g}, mm^2",
        f"# Measure Cortex, MeanThickness, Mean Thickness, {mean_thick:.5f}, mm",
        "# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3",
        f"# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, {full_row['BrainSegVol']:f}, mm^3",
        f"# Measure BrainSegNotVent, BrainSegVolNotVent, Brain Segmentation Volume Without "
        f"Ventricles, {full_row['BrainSegVolNotVent']:f}, mm^3",
        f"# Measure BrainSegNotVentSurf, BrainSegVolNotVentSurf, Brain Segmentation Volume "
        f"Without Ventricles from Surf, {full_row['BrainSegVolNotVent']:f}, mm^3",
        f"# Measure Cortex, CortexVol, Total cortical gray matter volume, {full_row['CortexVol']:f}, mm^3",
        f"# Measure SupraTentorial, SupraTentorialVol, Supratentorial volume, "
        f"{full_row['SupraTentorialVol']:f}, mm^3",
        f"# Measure SupraTentorialNotVent, SupraTentorialVolNotVent, Supratentorial volume, "
        f"{full_row['SupraTentorialVolNotVent']:f}, mm^3",
        f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        f"{full_row['EstimatedTotalIntraCranialVol']:f}, mm^3",
    ]
    head += list(_APARC_TABLE_HEADER)
    return "\n".join(head) + "\n" + rows


def _write_tables(folder: Path, stem: str, vols: pd.DataFrame, full: pd.DataFrame,
                  demo_cols: list[str]) -> list[str]:
    names = [nm for _, nm in ASEG_ROWS] + list(GLOBAL_TABLE_MEASURES)
    tab = full[names].copy()
    tab.insert(0, "Measure:volume", vols["subject_id"].to_numpy(str))
    tab.to_csv(folder / f"{stem}_aseg.txt", sep="\t", index=False)
    files = [f"{stem}_aseg.txt"]
    for h in ("lh", "rh"):
        cols = [f"{h}_{q}_volume" for q in DK_PARCELS]
        t = vols[cols].astype(np.int64)
        t.insert(0, f"{h}.aparc.volume", vols["subject_id"].to_numpy(str))
        t["BrainSegVolNotVent"] = full["BrainSegVolNotVent"].to_numpy()
        t["eTIV"] = full["EstimatedTotalIntraCranialVol"].to_numpy()
        t.to_csv(folder / f"{stem}_{h}.aparc.volume.txt", sep="\t", index=False)
        files.append(f"{stem}_{h}.aparc.volume.txt")
    demo = vols[demo_cols].copy()
    demo["scan_date"] = demo["scan_date"].dt.strftime("%Y-%m-%d")
    demo.to_csv(folder / f"{stem}.tsv", sep="\t", index=False)
    files.append(f"{stem}.tsv")
    return files


_OPERATOR = {"<": 4171756, ">": 4172704}  # OMOP concepts for '<' and '>'
#: OMOP standard (LOINC) concepts of the vital signs; labs keep concept 0 (source value only)
VITAL_CONCEPT_IDS = {"bp_systolic": 3004249, "bp_diastolic": 3012888, "heart_rate": 3027018,
                     "weight": 3025315, "bmi": 3038553, "temperature": 3020891}


def omop_tables(cohort) -> dict[str, pd.DataFrame]:
    """The cohort's clinical data as OMOP-CDM-shaped tables (real OMOP column names).

    ``person``, ``visit_occurrence`` (one row per encounter; ``visit_occurrence_id`` =
    ``encounter_id``), ``measurement`` (labs with ``measurement_type_concept_id`` 32856
    "Lab", vitals with 44818701 "From physical examination"; ``value_source_value`` is the
    raw string, ``value_as_number`` its numeric value when it parses, with
    ``operator_concept_id`` set for "<5"/">1000"), ``drug_exposure``, ``note`` and
    ``observation`` (``observation_source_value`` in "EDSS", "MS relapse" (one row,
    value 1, per visit with a relapse since the previous visit), "PASAT",
    "FSS"). Vitals carry their OMOP standard LOINC ``measurement_concept_id``
    (:data:`VITAL_CONCEPT_IDS`); labs carry concept 0 and are named by
    ``measurement_source_value``.
    """
    d = cohort.demographics
    person_id = pd.Series(np.arange(1, len(d) + 1), index=d["patient_id"].to_numpy(str))
    birth = d["birth_date"]
    person = pd.DataFrame({
        "person_id": person_id.to_numpy(),
        "gender_concept_id": np.where(d["sex"].to_numpy(str) == "M", 8507, 8532),
        "year_of_birth": birth.dt.year.to_numpy(), "month_of_birth": birth.dt.month.to_numpy(),
        "day_of_birth": birth.dt.day.to_numpy(), "birth_datetime": birth.to_numpy(),
        "race_concept_id": 0, "ethnicity_concept_id": 0,
        "care_site_id": pd.to_numeric(d["site"].str.slice(4)).to_numpy(),
        "person_source_value": d["patient_id"].to_numpy(str),
        "gender_source_value": d["sex"].to_numpy(str),
    })
    enc = cohort.encounters
    pid_e = person_id.loc[enc["patient_id"].to_numpy(str)].to_numpy()
    etype = enc["encounter_type"].to_numpy(str)
    visit = pd.DataFrame({
        "visit_occurrence_id": enc["encounter_id"].to_numpy(),
        "person_id": pid_e,
        "visit_concept_id": np.where(etype == "emergency", 9203, 9202),
        "visit_start_date": enc["start"].dt.normalize().to_numpy(),
        "visit_start_datetime": enc["start"].to_numpy(),
        "visit_end_date": enc["end"].dt.normalize().to_numpy(),
        "visit_end_datetime": enc["end"].to_numpy(),
        "visit_type_concept_id": 32817,
        "visit_source_value": etype,
    })
    ev = cohort.events
    table = ev["table"].to_numpy(str)
    pid_v = person_id.loc[ev["patient_id"].to_numpy(str)].to_numpy()
    raw = ev["value"]
    stripped = raw.str.strip()
    op = stripped.str.slice(0, 1)
    num = pd.to_numeric(stripped.str.lstrip("<>"), errors="coerce").to_numpy(float)
    is_meas = table != "med"
    m = np.flatnonzero(is_meas)
    measurement = pd.DataFrame({
        "measurement_id": np.arange(1, m.size + 1),
        "person_id": pid_v[m],
        "measurement_concept_id": ev["variable"].iloc[m].map(VITAL_CONCEPT_IDS).fillna(0)
        .to_numpy(dtype=np.int64),
        "measurement_date": ev["time"].dt.normalize().to_numpy()[m],
        "measurement_datetime": ev["time"].to_numpy()[m],
        "measurement_type_concept_id": np.where(table[m] == "lab", 32856, 44818701),
        "operator_concept_id": op.map(_OPERATOR).to_numpy(dtype=float, na_value=np.nan)[m],
        "value_as_number": num[m],
        "unit_source_value": ev["unit"].to_numpy(str)[m],
        "visit_occurrence_id": ev["encounter_id"].to_numpy()[m],
        "measurement_source_value": ev["variable"].to_numpy(str)[m],
        "value_source_value": raw.iloc[m].reset_index(drop=True),
    })
    k = np.flatnonzero(~is_meas)
    drug = ev["variable"].to_numpy(str)[k]
    route = np.select([np.isin(drug, ["natalizumab", "ocrelizumab"]),
                       np.isin(drug, ["interferon beta-1a", "glatiramer acetate"])],
                      ["intravenous", "subcutaneous"], "oral")
    day = ev["time"].dt.normalize().to_numpy()[k]
    drug_exposure = pd.DataFrame({
        "drug_exposure_id": np.arange(1, k.size + 1),
        "person_id": pid_v[k],
        "drug_concept_id": 0,
        "drug_exposure_start_date": day,
        "drug_exposure_start_datetime": ev["time"].to_numpy()[k],
        "drug_exposure_end_date": day + np.timedelta64(30, "D"),
        "drug_type_concept_id": 32838,
        "quantity": num[k],
        "route_source_value": route,
        "dose_unit_source_value": ev["unit"].to_numpy(str)[k],
        "visit_occurrence_id": ev["encounter_id"].to_numpy()[k],
        "drug_source_value": drug,
    })
    nt = cohort.notes
    note = pd.DataFrame({
        "note_id": np.arange(1, len(nt) + 1),
        "person_id": person_id.loc[nt["patient_id"].to_numpy(str)].to_numpy(),
        "note_date": nt["time"].dt.normalize().to_numpy(),
        "note_datetime": nt["time"].to_numpy(),
        "note_type_concept_id": 44814645, "note_class_concept_id": 0,
        "note_title": "Neurology progress note",
        "note_text": nt["text"].reset_index(drop=True),
        "encoding_concept_id": 0, "language_concept_id": 4180186,
        "visit_occurrence_id": nt["encounter_id"].to_numpy(),
        "note_source_value": "neurology clinic",
    })
    vis = cohort.visits
    clinic = enc.loc[enc["visit_row"].to_numpy() >= 0]
    visit_enc = np.empty(len(vis), dtype=np.int64)
    visit_enc[clinic["visit_row"].to_numpy()] = clinic["encounter_id"].to_numpy()
    vp = person_id.loc[vis["patient_id"].to_numpy(str)].to_numpy()
    obs = []
    for src, vals in (("EDSS", vis["edss"].to_numpy(float)),
                      ("MS relapse", vis["relapse"].to_numpy(float)),
                      ("PASAT", vis["pasat"].to_numpy(float)),
                      ("FSS", vis["fss"].to_numpy(float))):
        keep = ~np.isnan(vals)
        if src == "MS relapse":  # OMOP records what happened: one row per relapse
            keep &= vals == 1
        obs.append(pd.DataFrame({
            "person_id": vp[keep], "observation_concept_id": 0,
            "observation_date": vis["visit_date"].to_numpy()[keep],
            "observation_datetime": vis["visit_date"].to_numpy()[keep],
            "observation_type_concept_id": 32817, "value_as_number": vals[keep],
            "visit_occurrence_id": visit_enc[keep], "observation_source_value": src,
        }))
    observation = pd.concat(obs, ignore_index=True)
    observation = observation.sort_values(["person_id", "observation_date"], kind="stable")
    observation.insert(0, "observation_id", np.arange(1, len(observation) + 1))
    return {"person": person, "visit_occurrence": visit, "measurement": measurement,
            "drug_exposure": drug_exposure, "note": note,
            "observation": observation.reset_index(drop=True)}


def _write_duckdb(path: Path, tables: dict[str, pd.DataFrame]) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    try:
        for name, df in tables.items():
            con.register("_src", df)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _src')
            con.unregister("_src")
    finally:
        con.close()


def write_cohort(cohort, out_dir: str | Path, *, stats_files: bool = True,
                 duckdb_file: bool = True, exports: tuple[str, ...] = ("csv", "parquet"),
                 overwrite: bool = False) -> dict[str, Path]:
    """Write ``cohort`` under ``out_dir`` in FreeSurfer, asegstats2table, DuckDB, CSV, Parquet.

    The folder is built under a temporary name and renamed into place, so a reader
    never sees a half-written cohort.

    Parameters
    ----------
    cohort : SyntheticCohort from :func:`~normfuse.synthetic.simulate_cohort`.
    out_dir : folder to create.
    stats_files : write ``subjects/*/stats/*.stats`` (three files per scan).
    duckdb_file : write ``ehr.duckdb``.
    exports : table export formats (``"csv"``, ``"parquet"``).
    overwrite : replace an existing ``out_dir`` that was written by this function.

    Returns
    -------
    dict mapping ``"root"``, ``"subjects"``, ``"participants"``, ``"duckdb"``, ... to paths.

    Raises
    ------
    FileExistsError if ``out_dir`` exists and ``overwrite`` is False, or it exists and was
    not written by ``write_cohort`` (so a user's folder is never replaced).
    """
    out_dir = Path(out_dir)
    bad = [e for e in exports if e not in ("csv", "parquet")]
    if bad:
        raise ValueError(f"write_cohort: exports={exports!r} holds {bad}; use 'csv' and/or 'parquet'.")
    if out_dir.exists():
        if not (out_dir / MANIFEST).is_file():
            raise FileExistsError(
                f"write_cohort: {out_dir} exists and was not written by write_cohort "
                f"(no {MANIFEST}); it would be replaced. Choose a new folder.")
        if not overwrite:
            raise FileExistsError(
                f"write_cohort: {out_dir} exists. Pass overwrite=True to replace it, or "
                "choose a new folder.")
    seed = int(cohort.seed)
    files: dict[str, str] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        pv = cohort.patient_volumes
        full_p = aseg_table(pv, seed=seed, patient=True)
        if stats_files:
            _write_subject_stats(tmp / "subjects", pv, full_p, seed)
            files["subjects"] = "subjects"
        part = pv[["subject_id", "session_id", "age", "sex", "site", "scan_date"]].copy()
        part["scan_date"] = part["scan_date"].dt.strftime("%Y-%m-%d")
        part.to_csv(tmp / "participants.tsv", sep="\t", index=False)
        files["participants"] = "participants.tsv"
        demo_cols = ["subject_id", "age", "sex", "site", "scan_date"]
        ref = cohort.reference_controls
        for f in _write_tables(tmp, "reference_controls", ref,
                               aseg_table(ref, seed=seed + 1), demo_cols):
            files[f] = f
        mc = cohort.matched_controls
        for f in _write_tables(tmp, "matched_controls", mc, aseg_table(mc, seed=seed + 2),
                               demo_cols + ["matched_patient_id"]):
            files[f] = f
        if duckdb_file:
            _write_duckdb(tmp / "ehr.duckdb", omop_tables(cohort))
            files["duckdb"] = "ehr.duckdb"
        if exports:
            (tmp / "exports").mkdir()
            enc = cohort.encounters.drop(columns=["visit_row"])
            for name, df in (("events", cohort.events), ("notes", cohort.notes),
                             ("visits", cohort.visits), ("demographics", cohort.demographics),
                             ("encounters", enc)):
                if "csv" in exports:
                    df.to_csv(tmp / "exports" / f"{name}.csv", index=False)
                    files[f"{name}_csv"] = f"exports/{name}.csv"
                if "parquet" in exports:
                    df.to_parquet(tmp / "exports" / f"{name}.parquet", index=False)
                    files[f"{name}_parquet"] = f"exports/{name}.parquet"
        manifest = {"format": "normfuse-synthetic", "schema": 1, "seed": seed,
                    "params": cohort.truth.params, "files": files,
                    "n_scans": len(pv), "n_patients": len(cohort.demographics)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    log.info("wrote synthetic cohort to %s (%d scans)", out_dir, len(cohort.patient_volumes))
    out = {k: out_dir / v for k, v in files.items()}
    out["root"] = out_dir
    return out

