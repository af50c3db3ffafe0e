"""Simulated healthy controls with known normative structure, for tests and benchmarks.

Each region's volume is generated as ``mu(age, sex, icv, site) + sigma(age, site) * X``
with ``X`` SHASH-distributed (skew ``eps``, tail ``delta``), so a correct normative
model must recover standard-normal deviation scores. The planted truth is returned so
tests can compare. (The full MS cohort simulator, with patients, EHR and notes, lives in
:mod:`normfuse.synthetic`.)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from normative import _shash

__all__ = ["simulate_controls", "true_zscores"]


def _region_truth(regions, rng):
    R = len(regions)
    return {
        "base": rng.uniform(1500, 9000, R),            # mm3 at age 40
        "age_lin": rng.uniform(-0.006, -0.001, R),      # fraction per year
        "age_quad": rng.uniform(-6e-5, -1e-5, R),
        "sex_eff": rng.uniform(0.02, 0.08, R),          # males larger (fraction)
        "icv_eff": rng.uniform(0.4, 0.9, R),            # elasticity to ICV
        "cv": rng.uniform(0.07, 0.12, R),               # residual sd as fraction
        "cv_age": rng.uniform(0.0, 0.006, R),           # scale grows with age (per year)
        "eps": rng.uniform(-0.4, 0.4, R),
        "delta": rng.uniform(0.8, 1.25, R),
    }


def _site_truth(n_sites, R, rng):
    return {"offset": rng.normal(0, 0.04, (n_sites, R)),      # fraction of volume
            "log_scale": rng.normal(0, 0.12, (n_sites, R))}


def simulate_controls(n: int = 1000, regions: Sequence[str] | int = 18, *, n_sites: int = 8,
                      age_range=(8.0, 85.0), seed: int = 0, site_prefix: str = "site",
                      truth=None, sites=None, return_truth: bool = False):
    """Simulate healthy controls in the ``volumes`` contract.

    Parameters
    ----------
    n : number of scans.
    regions : region names, or a number of regions (named ``region_000``...).
    n_sites : number of sites (``site_00`` ...), of unequal sizes.
    truth : reuse the regional and site truth of an earlier call (e.g. to simulate
        held-out controls of the same population); ``sites`` restricts the sites drawn.
    return_truth : also return the planted parameters.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    if isinstance(regions, int):
        regions = [f"region_{i:03d}" for i in range(regions)]
    regions = list(regions)
    R = len(regions)
    if truth is None:
        trng = np.random.default_rng(seed + 7919)
        truth = {"regions": regions, **_region_truth(regions, trng), **_site_truth(n_sites, R, trng),
                 "sites": [f"{site_prefix}_{i:02d}" for i in range(n_sites)]}
    all_sites = truth["sites"]
    use = list(range(len(all_sites))) if sites is None else [all_sites.index(s) for s in sites]
    w = rng.dirichlet(np.full(len(use), 3.0))
    s_idx = np.asarray(use)[rng.choice(len(use), size=n, p=w)]
    age = rng.uniform(*age_range, n)
    male = rng.random(n) < 0.5
    icv = rng.normal(1.45e6, 1.2e5, n) * np.where(male, 1.07, 0.95)
    ages = age - 40.0
    logicv = np.log(icv / 1.45e6)
    base = truth["base"][None, :]
    frac = (truth["age_lin"][None, :] * ages[:, None] + truth["age_quad"][None, :] * ages[:, None] ** 2
            + truth["sex_eff"][None, :] * male[:, None] + truth["icv_eff"][None, :] * logicv[:, None]
            + truth["offset"][s_idx])
    mu = base * np.exp(frac)
    sigma = base * truth["cv"][None, :] * (1 + truth["cv_age"][None, :] * np.clip(ages, 0, None)[:, None]) \
        * np.exp(truth["log_scale"][s_idx])
    z = rng.standard_normal((n, R))
    y = _shash.quantile(np, z, mu, sigma, truth["eps"][None, :], truth["delta"][None, :])
    df = pd.DataFrame(y, columns=regions)
    df.insert(0, "subject_id", [f"sub-{seed:03d}{i:06d}" for i in range(n)])
    df.insert(1, "session_id", "ses-01")
    df.insert(2, "age", age)
    df.insert(3, "sex", np.where(male, "M", "F"))
    df.insert(4, "site", np.asarray(all_sites, dtype=object)[s_idx])
    df.insert(5, "icv", icv)
    df["volume_kind"] = "pv_corrected"
    if return_truth:
        return df, truth, z
    return df


def true_zscores(df, truth):
    """The planted deviation scores of simulated rows (inverse of the generator)."""
    regions = truth["regions"]
    sites = truth["sites"]
    s_idx = np.asarray([sites.index(s) for s in df["site"]])
    male = (df["sex"].to_numpy() == "M")
    ages = df["age"].to_numpy(float) - 40.0
    logicv = np.log(df["icv"].to_numpy(float) / 1.45e6)
    base = truth["base"][None, :]
    frac = (truth["age_lin"][None, :] * ages[:, None] + truth["age_quad"][None, :] * ages[:, None] ** 2
            + truth["sex_eff"][None, :] * male[:, None] + truth["icv_eff"][None, :] * logicv[:, None]
            + truth["offset"][s_idx])
    mu = base * np.exp(frac)
    sigma = base * truth["cv"][None, :] * (1 + truth["cv_age"][None, :] * np.clip(ages, 0, None)[:, None]) \
        * np.exp(truth["log_scale"][s_idx])
    y = df[regions].to_numpy(float)
    return _shash.zscore(np, y, mu, sigma, truth["eps"][None, :], truth["delta"][None, :])
