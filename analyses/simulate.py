"""A seeded simulated MS cohort with planted effects, for truth-recovery tests and benchmarks.

Everything the analyses estimate is planted here with a known value, so a test can
check that a 95 % CI covers the truth and a benchmark can measure CI coverage:

* critical-deviation counts: negative binomial (theta ``nb_theta``) with an incidence
  rate ratio ``irr`` for patients versus controls (adjusted for age);
* EDSS: a random-intercept LMM, ``edss = 2 + edss_beta * n_crit + 0.15 * years + u + e``
  (continuous, not rounded to 0.5 steps, so the linear model is exactly true);
* progression: exponential times with hazard ratio ``hr`` for patients flagged by the
  deep-grey rule (>= 1 critical lower deviation in thalamus, hippocampus or putamen),
  administrative censoring at the end of follow-up; relapses independent of the flag.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SimulatedCohort", "simulate_cohort", "DEEP_GREY"]

DEEP_GREY = ("Left-Thalamus", "Right-Thalamus", "Left-Hippocampus", "Right-Hippocampus",
             "Left-Putamen", "Right-Putamen")


@dataclass(frozen=True)
class SimulatedCohort:
    """Tables of one simulated cohort and the planted truth.

    ``subjects``: one row per subject (patients and controls): ``subject_id`` index,
    ``group``, ``age``, ``sex``, ``icv``, ``n_crit``, the deep-grey Z columns, and for
    patients the endpoint columns ``time_cdp``, ``event_cdp``, ``time_relapse``,
    ``event_relapse``, ``followup`` and ``high_risk``. ``visits``: patients' EDSS in long
    format (``subject_id``, ``years``, ``edss``, ``n_crit``).
    """

    subjects: pd.DataFrame
    visits: pd.DataFrame
    truth: dict


def simulate_cohort(n_patients: int = 300, n_controls: int = 300, n_visits: int = 4,
                    irr: float = 2.7, edss_beta: float = 0.24, hr: float = 2.0,
                    nb_theta: float = 1.5, seed: int = 0) -> SimulatedCohort:
    """Simulate one cohort (see the module docstring for the generating model)."""
    rng = np.random.default_rng(seed)
    n = n_patients + n_controls
    patient = np.r_[np.ones(n_patients), np.zeros(n_controls)].astype(bool)
    age = np.where(patient, rng.normal(42, 9, n), rng.normal(44, 11, n))
    sex = np.where(rng.uniform(size=n) < np.where(patient, 0.7, 0.55), "F", "M")
    icv = rng.normal(1.45e6, 1.3e5, n) + np.where(sex == "M", 1.2e5, 0)
    mu = np.exp(np.log(1.2) + np.log(irr) * patient + 0.01 * (age - 43))
    n_crit = rng.negative_binomial(nb_theta, nb_theta / (nb_theta + mu))
    z = rng.normal(0, 1, (n, len(DEEP_GREY))) - 0.9 * patient[:, None]
    ids = np.array([f"P{i:04d}" for i in range(n_patients)] + [f"C{i:04d}" for i in range(n_controls)])
    subj = pd.DataFrame({"group": np.where(patient, "patient", "control"), "age": age, "sex": sex,
                         "icv": icv, "n_crit": n_crit}, index=pd.Index(ids, name="subject_id"))
    for j, r in enumerate(DEEP_GREY):
        subj[r] = z[:, j]
    flag = (z[:n_patients] < -1.96).sum(1) >= 1
    fu = rng.uniform(2, 8, n_patients)
    t_cdp = rng.exponential(1 / (0.12 * np.exp(np.log(hr) * flag)))
    t_rel = rng.exponential(1 / 0.25, n_patients)
    pat = subj.index[:n_patients]
    subj.loc[pat, "followup"] = fu
    subj.loc[pat, "time_cdp"] = np.minimum(t_cdp, fu)
    subj.loc[pat, "event_cdp"] = (t_cdp <= fu).astype(float)
    subj.loc[pat, "time_relapse"] = np.minimum(t_rel, fu)
    subj.loc[pat, "event_relapse"] = (t_rel <= fu).astype(float)
    subj.loc[pat, "high_risk"] = flag.astype(float)
    years = np.tile(np.arange(n_visits, dtype=float), n_patients)
    pid = np.repeat(np.arange(n_patients), n_visits)
    u = rng.normal(0, 1.0, n_patients)
    edss = 2 + edss_beta * n_crit[pid] + 0.15 * years + u[pid] + rng.normal(0, 0.6, pid.size)
    visits = pd.DataFrame({"subject_id": ids[pid], "years": years, "edss": edss,
                           "n_crit": n_crit[pid]})
    truth = {"irr": irr, "edss_beta": edss_beta, "hr": hr, "nb_theta": nb_theta}
    return SimulatedCohort(subjects=subj, visits=visits, truth=truth)
