"""Tests of normative.freesurfer against the real FreeSurfer/FastSurfer/SynthSeg files in
../shared/data/freesurfer (numbers read off those files; their provenance is in
../shared/data/PROVENANCE.md) and against planted truths in synthetic files."""
from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from normative._fsnames import load_label_table
from normative.freesurfer import (
    attach_demographics,
    collect_subjects_dir,
    harmonise_region_names,
    read_aparc_stats,
    read_aseg_mgz,
    read_aseg_stats,
    read_brainvol_stats,
    read_stats,
    read_stats_table,
    read_synthseg_csv,
    require_single_volume_kind,
    split_long_id,
)
from normfuse.errors import (
    ColumnContractError,
    DataDroppedWarning,
    InputFormatError,
    NormfuseError,
    NormfuseWarning,
    VolumeKindError,
)

META = ["subject_id", "session_id", "age", "sex", "site", "icv", "volume_kind"]


def _measure_re(path: Path, short: str) -> float:
    """Independent slow reader: the value of '# Measure ..., <short>, ...' by regex."""
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if line.startswith("# Measure") and fields[1].split()[0] == short:
            return float(fields[-2])
    raise KeyError(short)


def _rows_re(path: Path) -> dict[str, list[str]]:
    """Independent slow reader: table rows keyed by the StructName token (5th for aseg)."""
    return {ln.split()[4]: ln.split() for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}


# ----------------------------------------------------------------------------- aseg.stats
def test_bert_fs72_aseg_exact_values(fs_data):
    """bert (FS 7.2) aseg.stats: Left-Thalamus 8066.3 mm3 / 8431 voxels, eTIV, header."""
    sf = read_stats(fs_data / "bert_fs7.2/stats/aseg.stats")
    t = sf.table.set_index("StructName")
    assert len(t) == 45                                      # '# NRows 45'
    assert t.loc["Left-Thalamus", "Volume_mm3"] == 8066.3    # row 5 of the table
    assert t.loc["Left-Thalamus", "NVoxels"] == 8431
    assert t.loc["CC_Anterior", "SegId"] == 255
    assert sf.measures["eTIV"].value == 1520021.264474
    assert sf.measures["BrainSegVol"].long_name == "Brain Segmentation Volume"
    assert sf.header["subjectname"] == "bert" and sf.header["cvs_version"] == "7.2.0-beta"
    assert list(sf.summary().columns) == ["name", "structure", "long_name", "value", "unit"]
    v = read_aseg_stats(fs_data / "bert_fs7.2/stats/aseg.stats")
    assert list(v.columns[:7]) == META
    assert v.loc[0, "subject_id"] == "bert" and v.loc[0, "volume_kind"] == "pv_corrected"
    assert v.loc[0, "icv"] == 1520021.264474 == v.loc[0, "eTIV"]
    assert v.loc[0, "Left-Thalamus"] == 8066.3 and v.loc[0, "Right-Thalamus"] == 8287.8
    assert v.loc[0, "BrainSegVol"] == 1218061.0 and v.loc[0, "SurfaceHoles"] == 29
    assert np.isnan(v.loc[0, "age"]) and v.loc[0, "sex"] is None and v.loc[0, "site"] is None
    n = read_aseg_stats(fs_data / "bert_fs7.2/stats/aseg.stats", measure="nvoxels",
                        include_measures=False)
    assert n.loc[0, "Left-Thalamus"] == 8431 and n.loc[0, "volume_kind"] == "voxel_count"
    assert n.shape[1] == 7 + 45


def test_fs6_aseg_all_subjects_match_independent_reader(fs_data):
    """All nine FS 6.0 aseg.stats: every Volume_mm3 and eTIV equal a regex re-read; Thalamus renamed."""
    files = sorted((fs_data / "ds_training_fs6").glob("sub-*/stats/aseg.stats"))
    assert len(files) == 9
    for f in files:
        v = read_aseg_stats(f)
        rows = _rows_re(f)
        assert "Left-Thalamus-Proper" in rows and "Left-Thalamus-Proper" not in v.columns
        for name, tok in rows.items():
            assert v.loc[0, harmonise_region_names(name)] == float(tok[3]), (f, name)
        assert v.loc[0, "icv"] == _measure_re(f, "eTIV")
        assert v.loc[0, "subject_id"] == f.parent.parent.name
    v1 = read_aseg_stats(files[0])
    assert v1.loc[0, "Left-Thalamus"] == 8727.9 and v1.loc[0, "icv"] == 1516267.932629


def test_soichi_fs70_stats(fs_data):
    """soichi (FS 7.0.0): aseg, wmparc, brainvol and both aparc files."""
    d = fs_data / "soichi_fs7.0/stats"
    a = read_aseg_stats(d / "aseg.stats", subject_id="soichi", session_id="s1")
    assert a.loc[0, "Left-Hippocampus"] == 4333.5 and a.loc[0, "icv"] == 1420434.160521
    assert (a.loc[0, "subject_id"], a.loc[0, "session_id"]) == ("soichi", "s1")
    w = read_aseg_stats(d / "wmparc.stats")
    assert w.loc[0, "Left-UnsegmentedWhiteMatter"] == 36106.6 and w.loc[0, "icv"] == 1420434.160521
    b = read_brainvol_stats(d / "brainvol.stats")
    assert b.loc[0, "BrainSegVol"] == _measure_re(d / "brainvol.stats", "BrainSegVol")
    assert np.isnan(b.loc[0, "icv"])              # brainvol.stats has no eTIV line
    lh = read_aparc_stats(d / "lh.aparc.stats")
    assert lh.loc[0, "lh_bankssts_volume"] == 1536 and lh.loc[0, "lh_bankssts_thickness"] == 2.144
    assert lh.loc[0, "lh_MeanThickness_thickness"] == 2.39891
    rh = read_aparc_stats(d / "rh.aparc.stats", measures=("thickness",))
    assert rh.loc[0, "rh_MeanThickness_thickness"] == 2.35815
    assert not any(c.endswith("_volume") for c in rh.columns)


def test_bert_wmparc_and_brainvol(fs_data):
    """bert wmparc.stats (70 rows) and brainvol.stats (16 measures, no table)."""
    w = read_stats(fs_data / "bert_fs7.2/stats/wmparc.stats")
    assert len(w.table) == 70
    assert w.table.set_index("StructName").loc["wm-rh-insula", "Volume_mm3"] == 10658.6
    b = read_stats(fs_data / "bert_fs7.2/stats/brainvol.stats")
    assert len(b.measures) == 16 and b.table.empty
    assert b.measures["CortexVol"].value == 487041.964762492396
    v = read_brainvol_stats(fs_data / "bert_fs7.2/stats/brainvol.stats")
    assert v.loc[0, "SupraTentorialVolNotVentVox"] == 1042551.0


# ----------------------------------------------------------------------------- aparc
def test_bert_aparc_family(fs_data):
    """bert lh/rh aparc, DKTatlas and a2009s: named columns, cortex measures, eTIV as icv."""
    d = fs_data / "bert_fs7.2/stats"
    lh = read_aparc_stats(d / "lh.aparc.stats")
    # bankssts row: NumVert 1210, SurfArea 821, GrayVol 2293, ThickAvg 2.805
    assert lh.loc[0, ["lh_bankssts_volume", "lh_bankssts_thickness", "lh_bankssts_area"]
                  ].tolist() == [2293, 2.805, 821]
    assert lh.loc[0, "lh_MeanThickness_thickness"] == 2.60273
    assert lh.loc[0, "lh_WhiteSurfArea_area"] == 84499.5
    assert lh.loc[0, "icv"] == 1520021.264474 and lh.loc[0, "subject_id"] == "bert"
    assert lh.shape[1] == 7 + 3 * 34 + 2
    rh = read_aparc_stats(d / "rh.aparc.stats", measures=("volume",))
    assert rh.loc[0, "rh_bankssts_volume"] == 1802 and rh.shape[1] == 7 + 34
    dkt = read_stats(d / "lh.aparc.DKTatlas.stats")
    a2009 = read_stats(d / "lh.aparc.a2009s.stats")
    assert len(dkt.table) == 31 and len(a2009.table) == 74
    a = read_aparc_stats(d / "lh.aparc.a2009s.stats", measures=("volume",))
    assert a.loc[0, "lh_G_and_S_frontomargin_volume"] == 2345
    ctab = [ln.split()[1] for ln in (fs_data / "bert_fs7.2/aparc.annot.ctab").read_text().splitlines()
            if ln.strip()]
    assert set(read_stats(d / "lh.aparc.stats").table["StructName"]) <= set(ctab)


def test_fabian_fs6_missing_comma_measure(fs_data):
    """FS 6's '# Measure Cortex, CortexVol Total cortical ...' line (missing comma) is read."""
    for f in ("lh.aparc.stats", "rh.aparc.stats", "lh.aparc.DKTatlas.stats"):
        sf = read_stats(fs_data / "fabian_fs6/stats" / f)
        m = sf.measures["CortexVol"]
        assert (m.structure, m.long_name, m.value, m.unit) == (
            "Cortex", "Total cortical gray matter volume", 553998.311189, "mm^3")
        assert sf.measures["eTIV"].value == 1670487.274486
    lh = read_aparc_stats(fs_data / "fabian_fs6/stats/lh.aparc.stats")
    assert lh.loc[0, "lh_bankssts_volume"] == 2508 and lh.loc[0, "icv"] == 1670487.274486
    rh = read_aparc_stats(fs_data / "fabian_fs6/stats/rh.aparc.stats")
    assert rh.loc[0, "rh_MeanThickness_thickness"] == 2.4817
    dkt = read_aparc_stats(fs_data / "fabian_fs6/stats/lh.aparc.DKTatlas.stats")
    assert dkt.loc[0, "lh_caudalanteriorcingulate_volume"] == 4258


# ----------------------------------------------------------------------------- aseg.mgz
@pytest.mark.parametrize("subject", ["bert_fs7.2", "ds_training_fs6/sub-01"])
def test_nvoxels_equal_mgz_voxel_counts(fs_data, subject):
    """For every aseg.stats row, NVoxels equals that label's voxel count in the same aseg.mgz."""
    sf = read_stats(fs_data / subject / "stats/aseg.stats")
    counts = read_aseg_mgz(fs_data / subject / "mri/aseg.mgz", unit="voxels", include_zero=True)
    assert counts.loc[0, "volume_kind"] == "voxel_count"
    for _, row in sf.table.iterrows():
        name = harmonise_region_names(row["StructName"])
        assert counts.loc[0, name] == row["NVoxels"], name
    mm3 = read_aseg_mgz(fs_data / subject / "mri/aseg.mgz")
    assert_allclose(mm3.loc[0, "Left-Hippocampus"], counts.loc[0, "Left-Hippocampus"] * 1.0)
    if subject == "bert_fs7.2":
        assert mm3.loc[0, "Left-Thalamus"] == 8431.0 != 8066.3   # PV-corrected differs
        assert mm3.loc[0, "subject_id"] == "bert_fs7.2"


def test_aparc_aseg_mgz_and_intensity_image(fs_data):
    """aparc+aseg.mgz names cortical parcels lh_X_volume; norm.mgz is refused as non-segmentation."""
    v = read_aseg_mgz(fs_data / "bert_fs7.2/mri/aparc+aseg.mgz", unit="voxels", icv=1.5e6)
    assert "lh_superiorfrontal_volume" in v.columns and "rh_insula_volume" in v.columns
    assert v.shape[1] == 7 + 109           # 41 aseg labels + 2 x 34 DK parcels
    assert v.loc[0, "icv"] == 1.5e6
    aseg = read_aseg_mgz(fs_data / "bert_fs7.2/mri/aseg.mgz", unit="voxels")
    assert v.loc[0, "Left-Hippocampus"] == aseg.loc[0, "Left-Hippocampus"]
    with pytest.raises(InputFormatError, match="not an aseg-style segmentation"):
        read_aseg_mgz(fs_data / "bert_fs7.2/mri/norm.mgz")


def test_label_table_agrees_with_luts(fs_data):
    """The shipped label table equals FreeSurfer 7's LUT and FastSurfer's LUT on shared ids."""
    table = load_label_table()
    lut = {}
    for ln in (fs_data / "fastsurfer/FreeSurferColorLUT_from_FastSurfer_repo.txt").read_text().splitlines():
        p = ln.split()
        if p and p[0].isdigit():
            lut[int(p[0])] = p[1]
    assert all(lut[i] == name for i, (name, _) in table.items())
    fast = pd.read_csv(fs_data / "fastsurfer/FastSurfer_ColorLUT.tsv", sep="\t")
    for i, name in zip(fast["ID"], fast["LabelName"], strict=True):
        if i != 0:
            assert table[int(i)][0] == name
    ids = [int(ln.split()[0]) for ln in
           (fs_data / "bert_fs7.2/aseg.auto_noCCseg.label_intensities.txt").read_text().splitlines()]
    # ids 186/187 have no name in that file nor in the LUT (unnamed atlas classes)
    assert set(ids) - set(table) == {186, 187}
    ss_ids = re.findall(r"^(\d+)\s+\S", (fs_data / "synthseg_labels_table.txt").read_text(), re.M)
    assert all(table[int(i)][1] for i in ss_ids)


def test_fastsurfer_threshold_measures_present(fs_data):
    """Every measure FastSurfer's aseg.stats test checks exists in bert's aseg.stats."""
    text = (fs_data / "fastsurfer/quick_test_thresholds_aseg.stats.yaml").read_text()
    structs = re.findall(r"^\s+- '([^']+)'", text, re.M)
    assert len(structs) == 20
    sf = read_stats(fs_data / "bert_fs7.2/stats/aseg.stats")
    assert set(structs) <= set(sf.measures)


def test_non_stats_real_files_are_refused(fs_data):
    """talairach.xfm, label_intensities.txt and a .mgz given to read_stats raise InputFormatError."""
    for f in ("bert_fs7.2/mri/transforms/talairach.xfm",
              "bert_fs7.2/aseg.auto_noCCseg.label_intensities.txt", "bert_fs7.2/mri/aseg.mgz",
              "fastsurfer/quick_test_thresholds_aseg.stats.yaml"):
        with pytest.raises(InputFormatError, match=re.escape(Path(f).name)):
            read_stats(fs_data / f)


# ----------------------------------------------------------------------------- tables
def test_fs5_asegstats2table_renames(fs_data):
    """FS 5.x asegstats2table: Thalamus-Proper, IntraCranialVol (-> icv) and CorticalWhiteMatter renamed."""
    t = read_stats_table(fs_data / "tables_fs5_abide/aseg_stats_head5.txt")
    assert len(t) == 5 and t["subject_id"].tolist()[0] == "FS_CMU_a_0050642"
    assert t.loc[0, "Left-Thalamus"] == 7394.0 and t.loc[0, "Right-Thalamus"] == 7709.0
    assert t.loc[0, "icv"] == 1549336.76617 == t.loc[0, "eTIV"]
    assert t.loc[0, "lhCerebralWhiteMatterVol"] == 272139.328125
    assert "IntraCranialVol" not in t.columns and "Left-Thalamus-Proper" not in t.columns
    assert t["session_id"].isna().all()


def test_fs7_long_tables_split_ids(fs_data):
    """FS 7 longitudinal tables: '13900_01.long.13900_base' -> subject 13900, session 01."""
    d = fs_data / "tables_fs7_long"
    a = read_stats_table(d / "aseg_stats_13900.txt", split_long=True)
    assert len(a) == 10 and set(a["subject_id"]) == {"13900"}
    assert a["session_id"].tolist()[:3] == ["01", "02", "03"]
    assert a.loc[0, "Left-Thalamus"] == 6682.3 and a.loc[0, "icv"] == 1620529.664888
    whole = read_stats_table(d / "aseg_stats.txt")
    assert whole.loc[0, "subject_id"] == "13900_01.long.13900_base"
    lh = read_stats_table(d / "aparc_stats_13900_LH.txt", kind="aparc", split_long=True)
    assert lh.loc[0, "lh_bankssts_thickness"] == 2.374
    assert lh.loc[0, "lh_MeanThickness_thickness"] == 2.36807 and lh.loc[0, "icv"] == 1620529.664888
    rh = read_stats_table(d / "aparc_stats_13900_RH.txt", split_long=True)
    assert len(rh) == 10 and rh.columns[7].startswith("rh_")


def test_space_separated_table_equals_tab(fs_data, tmp_path):
    """A space-separated asegstats2table output reads the same as the tab-separated one."""
    src = fs_data / "tables_fs7_long/aseg_stats.txt"
    (tmp_path / "sp.txt").write_text(src.read_text().replace("\t", "  "))
    pd.testing.assert_frame_equal(read_stats_table(tmp_path / "sp.txt"), read_stats_table(src))


def test_long_id_split_and_harmonise_examples():
    """split_long_id and harmonise_region_names on hand-written cases."""
    assert split_long_id("13900_01.long.13900_base") == ("13900", "01")
    assert split_long_id("sub-01_ses-02.long.sub-01") == ("sub-01", "ses-02")
    assert split_long_id("tp1.long.templateA") == ("templateA", "tp1")
    assert split_long_id("bert") == ("bert", None)
    assert harmonise_region_names(["Left-Thalamus-Proper", "Right-Thalamus-Proper",
                                   "left ventral DC", "brain-stem", "csf", "ctx-lh-insula",
                                   "CorticalWhiteMatterVol", "Left-Hippocampus"]) == [
        "Left-Thalamus", "Right-Thalamus", "Left-VentralDC", "Brain-Stem", "CSF",
        "lh_insula_volume", "CerebralWhiteMatterVol", "Left-Hippocampus"]
    assert harmonise_region_names("IntraCranialVol") == "eTIV"


# ----------------------------------------------------------------------------- SynthSeg
def _synthseg_csv(fs_data: Path, path: Path, rng, parc: bool = False):
    lines = (fs_data / "synthseg_vol_csv_header_derived.txt").read_text().splitlines()
    head = lines[1].split(",")
    if parc:
        names = [n for i, (n, _) in load_label_table().items()
                 if (1001 <= i <= 1035 or 2001 <= i <= 2035) and i not in (1004, 2004)]
        head = head + names
        assert len(head) == int(lines[2])        # the header file says 102 columns with --parc
    vals = np.round(rng.uniform(200.0, 20000.0, size=(2, len(head) - 1)), 3)
    vals[:, 0] = [1.45e6, 1.61e6]
    ids = ["/data/sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz", "sub-03_T1w"]
    rows = [",".join(head)] + [",".join([ids[k]] + [f"{x:.3f}" for x in vals[k]]) for k in range(2)]
    path.write_text("\n".join(rows) + "\n")
    return head, vals


@pytest.mark.parametrize("parc", [False, True])
def test_synthseg_csv_planted_values(fs_data, tmp_path, rng, parc):
    """A SynthSeg --vol CSV built from the real header: names, ids, icv and values recovered."""
    head, vals = _synthseg_csv(fs_data, tmp_path / "vol.csv", rng, parc)
    v = read_synthseg_csv(tmp_path / "vol.csv")
    assert v["subject_id"].tolist() == ["sub-01", "sub-03"]
    assert v["session_id"].tolist()[0] == "ses-02" and v["session_id"].isna().tolist()[1]
    assert (v["volume_kind"] == "soft").all()
    assert_allclose(v["icv"], [1.45e6, 1.61e6])
    j = head.index("left thalamus") - 1
    assert_allclose(v["Left-Thalamus"], vals[:, j])
    assert_allclose(v["Left-VentralDC"], vals[:, head.index("left ventral DC") - 1])
    assert v.shape[1] == 7 + len(head) - 2
    if parc:
        assert_allclose(v["rh_insula_volume"], vals[:, head.index("ctx-rh-insula") - 1])
    plain = read_synthseg_csv(tmp_path / "vol.csv", parse_bids=False)
    assert plain["subject_id"].tolist() == ["sub-01_ses-02_T1w", "sub-03_T1w"]


def test_synthseg_unknown_column(fs_data, tmp_path, rng):
    """An unknown SynthSeg column and a non-SynthSeg CSV are named in InputFormatError."""
    _synthseg_csv(fs_data, tmp_path / "v.csv", rng)
    txt = (tmp_path / "v.csv").read_text().replace("left thalamus", "left thalamus proper", 1)
    (tmp_path / "bad.csv").write_text(txt)
    with pytest.raises(InputFormatError, match="left thalamus proper"):
        read_synthseg_csv(tmp_path / "bad.csv")
    (tmp_path / "qc.csv").write_text("id,a\n1,2\n")
    with pytest.raises(InputFormatError, match="not a SynthSeg --vol CSV"):
        read_synthseg_csv(tmp_path / "qc.csv")


# ----------------------------------------------------------------------------- FastSurfer
def _fastsurfer_aseg(src: Path, dst: Path) -> None:
    """Rewrite an aseg.stats as FastSurfer's segstats.py style with reordered columns."""
    out = ["# Title Segmentation Statistics", "# generating_program segstats.py",
           "# subjectname fs_sub"]
    out += [ln for ln in src.read_text().splitlines() if ln.startswith("# Measure")]
    out += ["# NRows 45", "# NTableCols 10",
            "# ColHeaders SegId StructName Volume_mm3 NVoxels Index Mean StdDev Min Max Range"]
    for ln in src.read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            p = ln.split()
            out.append("\t".join([p[1], p[4], p[3], p[2], p[0], *p[5:]]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(out) + "\n")


def test_fastsurfer_style_columns_found_by_name(fs_data, tmp_path):
    """Columns are located by '# ColHeaders' name, not position (FastSurfer-style reordering)."""
    src = fs_data / "bert_fs7.2/stats/aseg.stats"
    _fastsurfer_aseg(src, tmp_path / "fs_sub/stats/aseg.stats")
    a = read_aseg_stats(tmp_path / "fs_sub/stats/aseg.stats")
    b = read_aseg_stats(src)
    assert a.loc[0, "subject_id"] == "fs_sub"
    pd.testing.assert_frame_equal(a.drop(columns="subject_id"), b.drop(columns="subject_id"))


# ----------------------------------------------------------------------------- collector
def _subjects_dir(fs_data: Path, root: Path) -> Path:
    for name, src in (("bert", "bert_fs7.2"), ("soichi", "soichi_fs7.0")):
        shutil.copytree(fs_data / src / "stats", root / name / "stats")
    (root / "fsaverage" / "surf").mkdir(parents=True)
    return root


def test_collect_subjects_dir_aseg_aparc_wmparc(fs_data, tmp_path):
    """SUBJECTS_DIR with two subjects and fsaverage: values equal the single-file readers."""
    root = _subjects_dir(fs_data, tmp_path / "subjects")
    v = collect_subjects_dir(root, atlases=("aseg", "aparc", "wmparc", "brainvol"))
    assert v["subject_id"].tolist() == ["bert", "soichi"] and v.attrs["skipped"] == ()
    assert list(v.columns[:7]) == META and v.index.tolist() == [0, 1]
    one = read_aseg_stats(root / "bert/stats/aseg.stats")
    lh = read_aparc_stats(root / "bert/stats/lh.aparc.stats")
    for c in one.columns[7:]:
        assert v.loc[0, c] == one.loc[0, c], c
    for c in lh.columns[7:]:
        assert v.loc[0, c] == lh.loc[0, c], c
    assert v.loc[1, "Left-Hippocampus"] == 4333.5 and v.loc[1, "icv"] == 1420434.160521
    assert v.loc[0, "wm-rh-insula"] == 10658.6 and v.loc[0, "rh_bankssts_volume"] == 1802
    assert v.loc[0, "SupraTentorialVolNotVentVox"] == 1042551.0
    sel = collect_subjects_dir(root, subjects=["soichi"])
    assert sel["subject_id"].tolist() == ["soichi"]
    with pytest.raises(ValueError, match="two calls"):
        collect_subjects_dir(root, atlases=("aparc", "aparc.DKTatlas"))
    with pytest.raises(ValueError, match="atlas 'aseg2' is unknown"):
        collect_subjects_dir(root, atlases=("aseg2",))


def test_collect_mixed_fs6_fs7_harmonised(fs_data, tmp_path):
    """FS 6 and FS 7 subjects in one SUBJECTS_DIR share the FS 7 'Left-Thalamus' column."""
    root = tmp_path / "s"
    shutil.copytree(fs_data / "ds_training_fs6/sub-01/stats", root / "sub-01/stats")
    shutil.copytree(fs_data / "bert_fs7.2/stats", root / "bert/stats")
    v = collect_subjects_dir(root, layout="freesurfer")
    assert v.set_index("subject_id")["Left-Thalamus"].to_dict() == {"bert": 8066.3,
                                                                   "sub-01": 8727.9}
    assert "Left-Thalamus-Proper" not in v.columns and not v["Left-Thalamus"].isna().any()
    all9 = collect_subjects_dir(fs_data / "ds_training_fs6", aseg_measure="nvoxels")
    assert len(all9) == 9 and (all9["volume_kind"] == "voxel_count").all()


def test_collect_skip_and_raise(fs_data, tmp_path):
    """A subject without stats raises naming it; errors='skip' records, logs and warns."""
    root = _subjects_dir(fs_data, tmp_path / "subjects")
    (root / "crashed" / "mri").mkdir(parents=True)
    bad = root / "truncated" / "stats"
    bad.mkdir(parents=True)
    txt = (fs_data / "bert_fs7.2/stats/aseg.stats").read_text()
    (bad / "aseg.stats").write_text(txt[: len(txt) * 2 // 3])
    with pytest.raises(InputFormatError, match="crashed.*no 'stats' folder"):
        collect_subjects_dir(root)
    with pytest.warns(DataDroppedWarning, match="skipped 2 of 4 scans"):
        v = collect_subjects_dir(root, errors="skip")
    assert v["subject_id"].tolist() == ["bert", "soichi"]
    sk = {s.subject_id: s.reason for s in v.attrs["skipped"]}
    assert set(sk) == {"crashed", "truncated"}
    assert "NRows" in sk["truncated"] or "fields" in sk["truncated"]


def test_collect_empty_and_missing(tmp_path):
    """An empty SUBJECTS_DIR and a missing folder are clear InputFormatErrors."""
    with pytest.raises(InputFormatError, match="holds no subject folders"):
        collect_subjects_dir(tmp_path)
    with pytest.raises(InputFormatError, match="is not a folder"):
        collect_subjects_dir(tmp_path / "nope")
    (tmp_path / "fsaverage").mkdir()
    with pytest.raises(InputFormatError, match="holds no subject folders"):
        collect_subjects_dir(tmp_path)
    (tmp_path / "s1" / "stats").mkdir(parents=True)
    with pytest.raises(InputFormatError, match="s1.*file not found"):
        collect_subjects_dir(tmp_path)
    with pytest.raises(InputFormatError, match="all 1 scans were skipped"):
        collect_subjects_dir(tmp_path, errors="skip")


def test_collect_bids_and_longitudinal_layouts(fs_data, tmp_path):
    """BIDS sub-*/ses-* and FS7 '<tp>.long.<base>' folders give subject and session ids."""
    src = fs_data / "ds_training_fs6"
    bids = tmp_path / "bids"
    for sub, ses, s in (("sub-01", "ses-1", "sub-01"), ("sub-01", "ses-2", "sub-02"),
                        ("sub-03", "ses-1", "sub-03")):
        shutil.copytree(src / s / "stats", bids / sub / ses / "stats")
    v = collect_subjects_dir(bids)
    assert v.attrs["layout"] == "bids"
    assert list(zip(v["subject_id"], v["session_id"], strict=True)) == [
        ("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-03", "ses-1")]
    assert v.loc[1, "icv"] == _measure_re(src / "sub-02/stats/aseg.stats", "eTIV")
    long = tmp_path / "long"
    for d, s in (("13900_01.long.13900_base", "sub-01"), ("13900_02.long.13900_base", "sub-02"),
                 ("13900_base", "sub-03"), ("13900_01", "sub-04")):
        shutil.copytree(src / s / "stats", long / d / "stats")
    lv = collect_subjects_dir(long, split_long=True)
    assert list(zip(lv["subject_id"], lv["session_id"], strict=True)) == [("13900", "01"),
                                                                          ("13900", "02")]
    assert len(collect_subjects_dir(long)) == 4


# ----------------------------------------------------------------------------- bad input
def _aseg_text(fs_data) -> str:
    return (fs_data / "bert_fs7.2/stats/aseg.stats").read_text()


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.split("\n"), 1) if needle in ln)


def test_bad_stats_files_name_file_and_line(fs_data, tmp_path):
    """Truncated, header-less, non-numeric, duplicated and empty .stats files: file and line named."""
    txt = _aseg_text(fs_data)
    f = tmp_path / "aseg.stats"
    # truncated inside the table (NRows says 45)
    f.write_text(txt[: txt.index("Right-Hippocampus")])
    with pytest.raises(InputFormatError, match=r"aseg\.stats, line \d+: .*fields"):
        read_aseg_stats(f)
    f.write_text(txt[: txt.index(" 30  60")])
    with pytest.raises(InputFormatError, match="NRows' declares 45 table rows but the file holds 29"):
        read_aseg_stats(f)
    # no ColHeaders line
    f.write_text(re.sub(r"# ColHeaders.*\n", "", txt))
    with pytest.raises(InputFormatError, match=rf"line {_line_of(txt, 'ColHeaders')}: a table row "
                                               "comes before any '# ColHeaders'"):
        read_aseg_stats(f)
    # non-numeric cell
    bad = txt.replace("8066.3", "80x6.3")
    f.write_text(bad)
    with pytest.raises(InputFormatError, match=rf"line {_line_of(bad, '80x6.3')}: column "
                                               r"'Volume_mm3' of 'Left-Thalamus' holds '80x6\.3'"):
        read_aseg_stats(f)
    # duplicate structure
    dup = txt.replace("Left-Caudate  ", "Left-Thalamus ")
    f.write_text(dup)
    with pytest.raises(InputFormatError, match=rf"'Left-Thalamus' appears twice \(lines "
                                               rf"{_line_of(txt, 'Left-Thalamus ')} and "
                                               rf"{_line_of(txt, 'Left-Caudate ')}\)"):
        read_aseg_stats(f)
    # FS6 and FS7 names of one structure in one file
    assert "Left-Caudate        " in txt
    f.write_text(txt.replace("Left-Caudate        ", "Left-Thalamus-Proper"))
    with pytest.raises(InputFormatError, match="both map to the FreeSurfer 7 name 'Left-Thalamus'"):
        read_aseg_stats(f)
    f.write_text("   \n\n")
    with pytest.raises(InputFormatError, match="the file is empty"):
        read_stats(f)
    f.write_bytes(b"# Title\n# ColHeaders a b\n1 \xff\n")
    with pytest.raises(InputFormatError, match="line 3: holds a byte that is not text"):
        read_stats(f)
    with pytest.raises(InputFormatError, match="file not found"):
        read_stats(tmp_path / "missing.stats")
    with pytest.raises(InputFormatError, match="is a folder"):
        read_stats(tmp_path)


def _as_lh(fs_data, tmp_path) -> Path:
    shutil.copy(fs_data / "bert_fs7.2/stats/aseg.stats", tmp_path / "lh.aseg.stats")
    return tmp_path / "lh.aseg.stats"


def test_non_finite_and_damaged_size_cells_are_refused(fs_data, tmp_path):
    """'nan' in Volume_mm3 and a damaged NVoxels cell are refused, naming line, column and region."""
    txt = _aseg_text(fs_data)
    row = "  5  10      8431     8066.3  Left-Thalamus"
    line = _line_of(txt, row)
    f = tmp_path / "aseg.stats"
    f.write_text(txt.replace(row, "  5  10      8431        nan  Left-Thalamus"))
    with pytest.raises(InputFormatError, match=rf"line {line}: column 'Volume_mm3' of "
                       r"'Left-Thalamus' holds 'nan', which is not a finite number"):
        read_aseg_stats(f)
    f.write_text(txt.replace(row, "  5  10      84x1     8066.3  Left-Thalamus"))
    with pytest.raises(InputFormatError, match=rf"line {line}: column 'NVoxels' of "
                       r"'Left-Thalamus' holds '84x1', which is not a number"):
        read_aseg_stats(f)


def test_bad_measure_and_wrong_kind(fs_data, tmp_path):
    """A broken '# Measure' line and an aparc file given to read_aseg_stats are named."""
    txt = _aseg_text(fs_data)
    f = tmp_path / "aseg.stats"
    f.write_text(txt.replace("Brain Segmentation Volume, 1218061.000000", "1218061.000000"))
    with pytest.raises(InputFormatError, match=r"line 15: a '# Measure' line must read"):
        read_stats(f)
    f.write_text(txt.replace("1520021.264474, mm^3", "lots, mm^3"))
    with pytest.raises(InputFormatError, match="measure 'eTIV' is not a number: 'lots'"):
        read_stats(f)
    with pytest.raises(InputFormatError, match=r"lacks column\(s\) \['Volume_mm3'\]"):
        read_aseg_stats(fs_data / "bert_fs7.2/stats/lh.aparc.stats")
    with pytest.raises(InputFormatError, match="no '# ColHeaders' line"):
        read_aseg_stats(fs_data / "bert_fs7.2/stats/brainvol.stats")
    with pytest.raises(InputFormatError, match="cannot tell the hemisphere"):
        read_aparc_stats(fs_data / "bert_fs7.2/stats/aseg.stats")
    with pytest.raises(InputFormatError, match=r"lacks column\(s\) \['GrayVol', 'ThickAvg', 'SurfArea'\]"):
        read_aparc_stats(_as_lh(fs_data, tmp_path))
    with pytest.raises(ValueError, match="choose from"):
        read_aparc_stats(fs_data / "bert_fs7.2/stats/lh.aparc.stats", measures=("curv",))


def test_bad_tables(fs_data, tmp_path):
    """Unknown table formats, ragged rows, duplicate subjects and bad cells are named."""
    with pytest.raises(InputFormatError, match="unknown table format"):
        read_stats_table(fs_data / "bert_fs7.2/stats/aseg.stats")
    txt = (fs_data / "tables_fs7_long/aseg_stats.txt").read_text()
    f = tmp_path / "t.txt"
    lines = txt.split("\n")
    f.write_text("\n".join(lines[:2] + [lines[1]] + lines[2:]))
    with pytest.raises(InputFormatError, match=r"line 3: subject '13900_01\.long\.13900_base' "
                                               r"appears twice \(lines 2 and 3\)"):
        read_stats_table(f)
    f.write_text(txt[: len(txt) - 40])
    with pytest.raises(InputFormatError, match="line 4: row has"):
        read_stats_table(f)
    f.write_text(txt.replace("6682.3", "NA?"))
    with pytest.raises(InputFormatError, match=r"line 2: column 'Left-Thalamus' holds 'NA\?'"):
        read_stats_table(f)
    f.write_text(txt.replace("Measure:volume", "Measure:mean"))
    with pytest.raises(InputFormatError, match="--meas volume"):
        read_stats_table(f)
    with pytest.raises(InputFormatError, match="kind='aparc' but"):
        read_stats_table(fs_data / "tables_fs7_long/aseg_stats.txt", kind="aparc")


# ----------------------------------------------------------------------------- fuzzing
_FUZZ_FILES = {
    "aseg": ("bert_fs7.2/stats/aseg.stats", lambda p: read_aseg_stats(p)),
    "stats": ("ds_training_fs6/sub-01/stats/aseg.stats", lambda p: read_stats(p)),
    "aparc": ("fabian_fs6/stats/lh.aparc.stats", lambda p: read_aparc_stats(p)),
    "brainvol": ("soichi_fs7.0/stats/brainvol.stats", lambda p: read_brainvol_stats(p)),
    "table": ("tables_fs5_abide/aseg_stats_head5.txt", lambda p: read_stats_table(p)),
    "aparc_table": ("tables_fs7_long/aparc_stats_13900_LH.txt",
                    lambda p: read_stats_table(p, split_long=True)),
}


@st.composite
def _mutation(draw, data: bytes):
    kind = draw(st.sampled_from(["truncate", "flip", "delete", "duplicate", "swap"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        return bytes(b)
    lines = data.split(b"\n")
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    else:
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(_FUZZ_FILES))
def test_fuzzed_real_files_raise_only_our_errors(fs_data, which):
    """Truncations, byte flips, line deletions/duplications/swaps raise nothing but NormfuseError."""
    rel, reader = _FUZZ_FILES[which]
    data = (fs_data / rel).read_bytes()
    tmpdir = Path(tempfile.mkdtemp())
    target = tmpdir / Path(rel).name

    @settings(max_examples=120, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_mutation(data))
    def run(mutated):
        target.write_bytes(mutated)
        try:
            out = reader(target)
        except NormfuseError:
            return
        assert isinstance(out, (pd.DataFrame, object))

    try:
        run()
    finally:
        shutil.rmtree(tmpdir)


@pytest.mark.slow
def test_fuzzed_synthseg_csv(fs_data, rng):
    """Mutated SynthSeg CSVs raise nothing but NormfuseError."""
    tmpdir = Path(tempfile.mkdtemp())
    _synthseg_csv(fs_data, tmpdir / "v.csv", rng, parc=True)
    data = (tmpdir / "v.csv").read_bytes()
    target = tmpdir / "m.csv"

    @settings(max_examples=120, deadline=None, derandomize=True)
    @given(_mutation(data))
    def run(mutated):
        target.write_bytes(mutated)
        try:
            read_synthseg_csv(target)
        except NormfuseError:
            pass

    try:
        run()
    finally:
        shutil.rmtree(tmpdir)


# ----------------------------------------------------------------------------- demographics
def _vols():
    v = pd.DataFrame({"subject_id": ["s1", "s2", "s3"], "session_id": [None, None, None],
                      "age": np.nan, "sex": None, "site": None, "icv": 1.5e6,
                      "volume_kind": "pv_corrected", "Left-Thalamus": [8066.3, 7900.0, 8100.0]},
                     index=[10, 11, 12])
    v["sex"] = pd.Series([None] * 3, index=v.index, dtype=object)
    v["site"] = pd.Series([None] * 3, index=v.index, dtype=object)
    return v


def test_attach_demographics_maps_and_keeps_order():
    """Sex words/codes map to F/M, index and order kept, input untouched."""
    v = _vols()
    before = v.copy()
    demo = pd.DataFrame({"subject_id": ["s3", "s1", "s2", "s9"], "age": [30, "41.5", 52, 1],
                         "sex": ["female", "M", "Male", "f"], "site": ["A", "B", "A", "C"]})
    out = attach_demographics(v, demo)
    pd.testing.assert_frame_equal(v, before)
    assert out.index.tolist() == [10, 11, 12]
    assert out["age"].tolist() == [41.5, 52.0, 30.0]
    assert out["sex"].tolist() == ["M", "M", "F"] and out["site"].tolist() == ["B", "A", "A"]
    coded = pd.DataFrame({"subject_id": ["s1", "s2", "s3"], "sex": [0, 1, 0]})
    with pytest.raises(ColumnContractError, match=r"sex_map=\{0: 'F', 1: 'M'\}"):
        attach_demographics(v, coded)
    got = attach_demographics(v, coded, sex_map={0: "F", 1: "M"})
    assert got["sex"].tolist() == ["F", "M", "F"]
    assert attach_demographics(v, coded.assign(sex=[1, 2, 2]), sex_map={1: "M", 2: "F"}
                               )["sex"].tolist() == ["M", "F", "F"]


def test_attach_demographics_errors_and_sessions():
    """Unmatched scans, duplicates, bad ages and conflicts are reported; sessions match."""
    v = _vols()
    part = pd.DataFrame({"subject_id": ["s1"], "age": [40]})
    with pytest.raises(ColumnContractError, match=r"2 of 3 scans have no demographics row: "
                                                  r"\['s2', 's3'\]"):
        attach_demographics(v, part)
    with pytest.warns(NormfuseWarning, match="2 of 3 scans"):
        out = attach_demographics(v, part, unmatched="warn")
    assert out["age"].isna().tolist() == [False, True, True]
    with pytest.raises(ColumnContractError, match="repeats the key 's1'"):
        attach_demographics(v, pd.DataFrame({"subject_id": ["s1", "s1"], "age": [1, 2]}))
    with pytest.raises(ColumnContractError, match="'age' holds 'old'"):
        attach_demographics(v, pd.DataFrame({"subject_id": ["s1", "s2", "s3"],
                                             "age": [1, "old", 3]}))
    with pytest.raises(ColumnContractError, match="Missing: \\['subject_id'\\]"):
        attach_demographics(v, pd.DataFrame({"sub_id": ["s1"], "age": [1]}))
    filled = v.assign(age=[40.0, np.nan, np.nan])
    with pytest.raises(ColumnContractError, match="already has age=40.0"):
        attach_demographics(filled, pd.DataFrame({"subject_id": ["s1", "s2", "s3"],
                                                  "age": [41, 50, 60]}))
    lv = v.assign(subject_id=["p1", "p1", "p2"], session_id=["01", "02", "01"])
    demo = pd.DataFrame({"subject_id": ["p1", "p1", "p2"], "session_id": ["02", "01", "01"],
                         "age": [31.0, 30.0, 50.0]})
    assert attach_demographics(lv, demo)["age"].tolist() == [30.0, 31.0, 50.0]
    ints = pd.DataFrame({"subject_id": [1, 2, 3], "age": [1, 2, 3]})
    assert attach_demographics(v.assign(subject_id=["1", "2", "3"]), ints)["age"].tolist() == [1, 2, 3]


def test_require_single_volume_kind(fs_data, tmp_path, rng):
    """One kind is returned; .stats + SynthSeg rows together raise VolumeKindError."""
    a = read_aseg_stats(fs_data / "bert_fs7.2/stats/aseg.stats")
    assert require_single_volume_kind(a) == "pv_corrected"
    _synthseg_csv(fs_data, tmp_path / "v.csv", rng)
    s = read_synthseg_csv(tmp_path / "v.csv")
    assert require_single_volume_kind(s) == "soft"
    both = pd.concat([a, s], ignore_index=True)
    with pytest.raises(VolumeKindError, match="pv_corrected: 1 rows, soft: 2 rows|soft: 2 rows, "
                                              "pv_corrected: 1 rows"):
        require_single_volume_kind(both)
    with pytest.raises(VolumeKindError, match=r"\['guess'\]"):
        require_single_volume_kind(pd.DataFrame({"volume_kind": ["guess"]}))
    with pytest.raises(ColumnContractError, match="volume_kind"):
        require_single_volume_kind(pd.DataFrame({"x": [1]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert require_single_volume_kind(a.iloc[:1]) == "pv_corrected"

