"""The embedded demo cohort: simulated controls and MS patients in real file formats.

>>> from normfuse.synthetic import simulate_cohort, write_cohort
>>> cohort = simulate_cohort(n_patients=3, n_controls_reference=20, seed=0, ehr=False, notes=False)
>>> len(cohort.patient_volumes), len(cohort.reference_controls)    # scans
(4, 20)

``simulate_cohort(seed=0)`` is the full demo cohort (362 patients, ~953 scans, with EHR and
notes); ``write_cohort(cohort, "demo_data")`` writes it as FreeSurfer stats files,
tables and a DuckDB database.

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
