"""Control volume model: from a standard-normal score ``z`` to a regional volume.

For region ``r``, subject covariates (age, sex, ICV) and site ``s``::

    log V = mu_r(age, sex, ICV) + site_offset[s, r]
            + sd_r(age) * site_scale[s, r] * shash(z; eps_r)

``mu_r`` is a restricted cubic spline in age plus sex and ``log(ICV / 1.5e6)`` terms,
``sd_r(age) = exp(log_sd0_r + log_sd_age_r * (age - 40) / 10)`` and ``shash`` the
standardised sinh-arcsinh transform (increasing in ``z``). Because the map is
increasing, the true normative quantile score of a simulated volume at its own site
is exactly ``z``: ``Phi^-1(F_site(V)) = z``. Parameters come from
``params/control_curves.json`` (see :mod:`normfuse.synthetic.derive_params`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from normfuse.synthetic._curves import rcs_basis, shash_moments
from normfuse.synthetic._regions import CORTICAL_REGIONS, SUBCORTICAL_REGIONS

__all__ = ["load_params", "RegionModel", "region_model"]

PARAMS_PATH = Path(__file__).with_name("params") / "control_curves.json"


@lru_cache(maxsize=4)
def _load_cached(path: str) -> str:
    return Path(path).read_text()


def load_params(path: str | Path | None = None) -> dict:
    """Return the shipped control-curve parameters (a fresh dict each call)."""
    return json.loads(_load_cached(str(path or PARAMS_PATH)))


@dataclass(frozen=True)
class RegionModel:
    """Per-region arrays of the control model, in the order of ``regions``."""

    regions: tuple[str, ...]
    knots: np.ndarray
    intercept: np.ndarray      # (R,) log volume at the reference age part
    age_coef: np.ndarray       # (R, K) spline coefficients
    age_mult: np.ndarray       # (R,) lobe multiplier of the age effect (1 for subcortical)
    male: np.ndarray
    log_icv: np.ndarray
    log_sd0: np.ndarray
    log_sd_age: np.ndarray
    eps: np.ndarray
    shash_mean: np.ndarray
    shash_sd: np.ndarray
    site_sd: np.ndarray
    site_scale_sd: np.ndarray
    loading: np.ndarray
    decimals: np.ndarray       # rounding of the written value: 1 (aseg) or 0 (aparc GrayVol)
    icv: dict
    icv_ref: float
    age_ref: float

    def mean_log(self, age: np.ndarray, male: np.ndarray, log_icv_rel: np.ndarray) -> np.ndarray:
        """Population mean of log volume (no site effect), shape (n, R)."""
        B = rcs_basis(age, self.knots)
        B30 = rcs_basis(np.array([30.0]), self.knots)
        base = self.intercept + B30 @ self.age_coef.T                      # (1, R)
        age_part = (B - B30) @ self.age_coef.T * self.age_mult             # (n, R)
        return (base + age_part + np.multiply.outer(male, self.male)
                + np.multiply.outer(log_icv_rel, self.log_icv))

    def sd_log(self, age: np.ndarray) -> np.ndarray:
        """Residual SD of log volume at ``age`` (before site scaling), shape (n, R)."""
        return np.exp(self.log_sd0 + np.multiply.outer((age - self.age_ref) / 10.0,
                                                       self.log_sd_age))

    def volumes(self, z, age, male, icv, site_offset, site_scale) -> np.ndarray:
        """Volumes (mm^3, rounded as FreeSurfer writes them) from scores ``z`` (n, R)."""
        lic = np.log(icv / self.icv_ref)
        resid = (np.sinh(np.arcsinh(z) + self.eps) - self.shash_mean) / self.shash_sd
        logv = (self.mean_log(age, male, lic) + site_offset
                + self.sd_log(age) * site_scale * resid)
        v = np.exp(logv)
        scale = 10.0 ** self.decimals
        # rint(x * 10) / 10 is the double nearest to the printed decimal, so the
        # value written with '%.1f' parses back to exactly this number
        return np.rint(v * scale) / scale


@lru_cache(maxsize=4)
def _region_model_cached(path: str | None) -> RegionModel:
    p = load_params(path)
    knots = np.asarray(p["age_knots"], dtype=float)
    rows = []
    for r in SUBCORTICAL_REGIONS:
        q = p["regions"][r]
        rows.append((q["intercept"], q["age_coef"], 1.0, q["male"], q["log_icv"], q["log_sd0"],
                     q["log_sd_age"], q["shash_eps"], q["site_sd"], q["site_scale_sd"],
                     q["loading"], 1))
    for r in CORTICAL_REGIONS:
        c = p["cortical"][r]
        h = p["regions"][f"{c['hemi']}CortexVol"]
        rows.append((h["intercept"] + c["log_share"], h["age_coef"], c["age_mult"], h["male"],
                     h["log_icv"], np.log(c["log_sd"]), h["log_sd_age"], h["shash_eps"],
                     h["site_sd"], h["site_scale_sd"], c["loading"], 0))
    cols = list(zip(*rows, strict=True))
    eps = np.asarray(cols[7], dtype=float)
    m, s, _ = shash_moments(eps)
    return RegionModel(
        regions=SUBCORTICAL_REGIONS + CORTICAL_REGIONS, knots=knots,
        intercept=np.asarray(cols[0], float), age_coef=np.asarray(cols[1], float),
        age_mult=np.asarray(cols[2], float), male=np.asarray(cols[3], float),
        log_icv=np.asarray(cols[4], float), log_sd0=np.asarray(cols[5], float),
        log_sd_age=np.asarray(cols[6], float), eps=eps, shash_mean=m, shash_sd=s,
        site_sd=np.asarray(cols[8], float), site_scale_sd=np.asarray(cols[9], float),
        loading=np.asarray(cols[10], float), decimals=np.asarray(cols[11], float),
        icv=dict(p["icv"]), icv_ref=float(p["icv_ref"]), age_ref=float(p["age_ref"]),
    )


def region_model(path: str | Path | None = None) -> RegionModel:
    """The :class:`RegionModel` built from the shipped (or given) parameter file."""
    return _region_model_cached(None if path is None else str(path))
