"""The embedded demo cohort: simulated controls and MS patients in real file formats.

>>> from normfuse.synthetic import simulate_cohort, write_cohort
>>> cohort = simulate_cohort(seed=0)              # 362 patients, ~953 scans   # doctest: +SKIP
>>> write_cohort(cohort, "demo_data")             # FreeSurfer stats, DuckDB  # doctest: +SKIP

See :mod:`normfuse.synthetic.cohort` for the planted effects,
:mod:`normfuse.synthetic.ehr` and :mod:`normfuse.synthetic.notes` for the clinical
modalities, and :mod:`normfuse.synthetic.writers` for the file formats.
"""
from __future__ import annotations

from normfuse.synthetic._regions import (
    CORTICAL_REGIONS,
    DK_PARCELS,
    REGIONS,
    SUBCORTICAL_REGIONS,
)
from normfuse.synthetic.cohort import (
    BETA_NCRIT,
    EDSS_STEPS,
    SyntheticCohort,
    SyntheticTruth,
    round_edss,
    simulate_cohort,
)
from normfuse.synthetic.writers import write_cohort

__all__ = [
    "simulate_cohort", "write_cohort", "SyntheticCohort", "SyntheticTruth", "round_edss",
    "EDSS_STEPS", "BETA_NCRIT", "REGIONS", "SUBCORTICAL_REGIONS", "CORTICAL_REGIONS",
    "DK_PARCELS",
]
