"""Fixtures shared by the pipeline tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_study():
    """``make(root, regions) -> cfg``: a 30-patient simulated cohort written under
    ``root / "data"`` in the real formats, and its demo config restricted to ``regions``
    (no models stage, no notes), for quick pipeline runs."""
    def make(root, regions):
        from normfuse.pipeline import demo_config
        from normfuse.synthetic import simulate_cohort, write_cohort

        c = simulate_cohort(n_patients=30, n_controls_reference=150, n_matched_controls=60, seed=3)
        write_cohort(c, root / "data")
        cfg = demo_config(root / "data", seed=3, n_local=10)
        cfg["models"]["enabled"] = False
        cfg["features"]["notes"] = False
        cfg["normative"]["regions"] = list(regions)
        cfg["analyses"]["rule_regions"] = list(regions)
        return cfg

    return make
