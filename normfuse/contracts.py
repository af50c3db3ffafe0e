"""Column names of the data contracts in ARCHITECTURE.md, in one place.

Stages import these constants instead of spelling column names again, so a
contract changes in one line.
"""
from __future__ import annotations

__all__ = [
    "VOLUME_KEYS", "VOLUME_META", "VOLUME_KINDS", "DEVIATION_COUNTS",
    "EVENT_COLUMNS", "EVENT_TABLES", "NOTE_COLUMNS", "VISIT_COLUMNS",
    "ANALYSIS_KEYS", "MODALITY_PREFIXES", "milestone_label",
]

# volumes: one row per scan
VOLUME_KEYS = ("subject_id", "session_id")
VOLUME_META = ("age", "sex", "site", "icv", "volume_kind")
VOLUME_KINDS = ("pv_corrected", "voxel_count", "soft")
SEXES = ("F", "M")

# deviations: same keys, one Z column per region, plus counts
DEVIATION_COUNTS = ("n_crit", "n_crit_neg", "n_crit_pos")

# EHR events, notes, visits
EVENT_COLUMNS = ("patient_id", "encounter_id", "time", "table", "variable", "value")
EVENT_TABLES = ("lab", "vital", "med")
NOTE_COLUMNS = ("patient_id", "time", "text")
VISIT_COLUMNS = ("patient_id", "visit_date", "edss", "relapse")

# analysis table
ANALYSIS_KEYS = ("patient_id", "index_date")
MODALITY_PREFIXES = {"dev": "dev__", "ehr": "ehr__", "txt": "txt__", "demo": "demo__"}


def milestone_label(threshold: float, horizon_years: float = 3) -> str:
    """Label column for 'EDSS >= threshold within horizon', e.g. ``y_edss4_3y``."""
    t = f"{threshold:g}".replace(".", "p")
    h = f"{horizon_years:g}".replace(".", "p")
    return f"y_edss{t}_{h}y"
