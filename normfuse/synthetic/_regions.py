"""Region names, FreeSurfer segmentation ids and Desikan-Killiany parcels used by the simulator.

Facts from FreeSurfer 7 (``FreeSurferColorLUT.txt`` / ``ASegStatsLUT.txt``) and the
Desikan-Killiany atlas (Desikan et al., 2006). Names follow the data contract:
subcortical regions use FreeSurfer 7 aseg ``StructName`` (``Left-Thalamus``, not
``Left-Thalamus-Proper``); cortical regions use ``aparcstats2table`` column names
(``lh_superiorfrontal_volume``).
"""
from __future__ import annotations

__all__ = [
    "ASEG_ROWS", "SUBCORTICAL_REGIONS", "DK_PARCELS", "CORTICAL_REGIONS", "REGIONS",
    "DK_LOBE", "FS6_TO_FS7", "cortical_name",
]

# (SegId, StructName) in the order FreeSurfer 7 writes aseg.stats rows.
ASEG_ROWS: tuple[tuple[int, str], ...] = (
    (4, "Left-Lateral-Ventricle"), (5, "Left-Inf-Lat-Vent"),
    (7, "Left-Cerebellum-White-Matter"), (8, "Left-Cerebellum-Cortex"),
    (10, "Left-Thalamus"), (11, "Left-Caudate"), (12, "Left-Putamen"), (13, "Left-Pallidum"),
    (14, "3rd-Ventricle"), (15, "4th-Ventricle"), (16, "Brain-Stem"),
    (17, "Left-Hippocampus"), (18, "Left-Amygdala"), (24, "CSF"),
    (26, "Left-Accumbens-area"), (28, "Left-VentralDC"), (30, "Left-vessel"),
    (31, "Left-choroid-plexus"), (43, "Right-Lateral-Ventricle"), (44, "Right-Inf-Lat-Vent"),
    (46, "Right-Cerebellum-White-Matter"), (47, "Right-Cerebellum-Cortex"),
    (49, "Right-Thalamus"), (50, "Right-Caudate"), (51, "Right-Putamen"),
    (52, "Right-Pallidum"), (53, "Right-Hippocampus"), (54, "Right-Amygdala"),
    (58, "Right-Accumbens-area"), (60, "Right-VentralDC"), (62, "Right-vessel"),
    (63, "Right-choroid-plexus"), (72, "5th-Ventricle"), (77, "WM-hypointensities"),
    (78, "Left-WM-hypointensities"), (79, "Right-WM-hypointensities"),
    (80, "non-WM-hypointensities"), (81, "Left-non-WM-hypointensities"),
    (82, "Right-non-WM-hypointensities"), (85, "Optic-Chiasm"),
    (251, "CC_Posterior"), (252, "CC_Mid_Posterior"), (253, "CC_Central"),
    (254, "CC_Mid_Anterior"), (255, "CC_Anterior"),
)

_BILATERAL = ("Lateral-Ventricle", "Thalamus", "Caudate", "Putamen", "Pallidum",
              "Hippocampus", "Amygdala", "Accumbens-area", "VentralDC", "Cerebellum-Cortex")

#: The 22 subcortical regions simulated as data-contract columns (the other aseg rows are
#: written to the .stats files as filler only).
SUBCORTICAL_REGIONS: tuple[str, ...] = (
    tuple(f"Left-{r}" for r in _BILATERAL)
    + tuple(f"Right-{r}" for r in _BILATERAL)
    + ("3rd-Ventricle", "Brain-Stem")
)

#: The 34 Desikan-Killiany parcels in the order mris_anatomical_stats writes them.
DK_PARCELS: tuple[str, ...] = (
    "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal",
    "fusiform", "inferiorparietal", "inferiortemporal", "isthmuscingulate",
    "lateraloccipital", "lateralorbitofrontal", "lingual", "medialorbitofrontal",
    "middletemporal", "parahippocampal", "paracentral", "parsopercularis", "parsorbitalis",
    "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate", "precentral",
    "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal",
    "superiorparietal", "superiortemporal", "supramarginal", "frontalpole", "temporalpole",
    "transversetemporal", "insula",
)

#: Lobe of each DK parcel (Desikan et al., 2006, Table 1 grouping; cingulate kept apart).
DK_LOBE: dict[str, str] = {
    "bankssts": "temporal", "caudalanteriorcingulate": "cingulate",
    "caudalmiddlefrontal": "frontal", "cuneus": "occipital", "entorhinal": "temporal",
    "fusiform": "temporal", "inferiorparietal": "parietal", "inferiortemporal": "temporal",
    "isthmuscingulate": "cingulate", "lateraloccipital": "occipital",
    "lateralorbitofrontal": "frontal", "lingual": "occipital",
    "medialorbitofrontal": "frontal", "middletemporal": "temporal",
    "parahippocampal": "temporal", "paracentral": "frontal", "parsopercularis": "frontal",
    "parsorbitalis": "frontal", "parstriangularis": "frontal", "pericalcarine": "occipital",
    "postcentral": "parietal", "posteriorcingulate": "cingulate", "precentral": "frontal",
    "precuneus": "parietal", "rostralanteriorcingulate": "cingulate",
    "rostralmiddlefrontal": "frontal", "superiorfrontal": "frontal",
    "superiorparietal": "parietal", "superiortemporal": "temporal",
    "supramarginal": "parietal", "frontalpole": "frontal", "temporalpole": "temporal",
    "transversetemporal": "temporal", "insula": "insula",
}


def cortical_name(hemi: str, parcel: str) -> str:
    """Contract column name of a DK parcel volume, e.g. ``lh_superiorfrontal_volume``."""
    return f"{hemi}_{parcel}_volume"


CORTICAL_REGIONS: tuple[str, ...] = tuple(
    cortical_name(h, p) for h in ("lh", "rh") for p in DK_PARCELS
)

#: Every simulated region column: 22 subcortical then 68 cortical.
REGIONS: tuple[str, ...] = SUBCORTICAL_REGIONS + CORTICAL_REGIONS

#: FreeSurfer 6 -> 7 renames needed to read fcon1000's columns.
FS6_TO_FS7: dict[str, str] = {
    "Left-Thalamus-Proper": "Left-Thalamus",
    "Right-Thalamus-Proper": "Right-Thalamus",
}
