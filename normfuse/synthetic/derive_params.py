"""Derive the simulator's control-curve parameters from real healthy-control data.

Run from the repository root when ``../shared/data`` is present::

    python -m normfuse.synthetic.derive_params [--shared ../shared/data] [--out PATH]

It writes ``normfuse/synthetic/params/control_curves.json`` holding **parameters
only** (coefficients, standard deviations, skewness, loadings) - no subject's data.

Sources and method
------------------
* Subcortical regions (and the total cortical volume per hemisphere) are fitted on
  ``controls/fcon1000.csv`` (1078 healthy controls, 23 sites, age 7.9-85, FreeSurfer 6):
  per region, ordinary least squares of ``log(volume)`` on a restricted cubic spline
  in age (knots 10, 20, 35, 55, 75 y; linear beyond the outer knots, which is how the
  curves are extrapolated to 6-90 y), sex, ``log(eTIV / 1.5e6)`` and site intercepts.
  From the residuals: a log-linear age trend of the residual SD (heteroscedasticity),
  the residual skewness (turned into a sinh-arcsinh skew parameter), the between-site
  SD of intercepts and of log residual SD (method of moments, sampling noise removed),
  (capped at 0.15: cerebellar FOV cropping inflates it in fcon1000)
  and one-factor loadings of the standardised residuals (first principal axis of
  their correlation matrix), which make regions co-vary as in real data.
* Cortical Desikan-Killiany parcels are **not** in fcon1000 (it holds Destrieux
  thickness). Each parcel is simulated as a share of its hemisphere's fitted total
  cortical volume; the shares are those of the FreeSurfer 7.2 test subject ``bert``
  (``freesurfer/bert_fs7.2/stats/?h.aparc.stats``). Assumptions, not fits:
  residual SD ``clip(0.08 + 3/sqrt(mean volume), 0.09, 0.20)`` in log units (parcel
  CVs of about 10-20 %, the range reported by FreeSurfer normative studies such as
  Potvin et al., 2017, NeuroImage 156:43-64), age effect scaled by lobe
  (frontal 1.2, parietal 1.1, temporal 1.0, insula 1.0, cingulate 0.8, occipital 0.6
  times the hemisphere's curve; the ordering of Fjell et al., 2009, Cereb Cortex
  19:2001-2012), and a factor loading of 0.7 times the hemisphere total's.
* File filler (aseg rows outside the contract, intensity columns, aparc surface
  columns, global ``# Measure`` lines) uses per-structure medians and CVs from
  fcon1000 and the ratios of ``bert``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from normfuse.synthetic._curves import rcs_basis, shash_eps_for_skew
from normfuse.synthetic._regions import (
    ASEG_ROWS,
    DK_LOBE,
    DK_PARCELS,
    FS6_TO_FS7,
    SUBCORTICAL_REGIONS,
)

__all__ = ["derive", "main", "DEFAULT_OUT"]

DEFAULT_OUT = Path(__file__).with_name("params") / "control_curves.json"
KNOTS = (10.0, 20.0, 35.0, 55.0, 75.0)
ICV_REF = 1.5e6
AGE_REF = 40.0  # heteroscedasticity is log-linear in (age - 40) / 10
LOBE_AGE_MULT = {"frontal": 1.2, "parietal": 1.1, "temporal": 1.0, "insula": 1.0,
                 "cingulate": 0.8, "occipital": 0.6}
_ELOG_ABS_NORMAL = -0.6351814227307391  # E log|Z|, Z ~ N(0, 1)


def _fit_region(y, basis, male, licv, site_idx, n_sites):
    """OLS with site intercepts; returns the curve, scale, skew and site parameters."""
    n = y.size
    onehot = np.zeros((n, n_sites))
    onehot[np.arange(n), site_idx] = 1.0
    X = np.column_stack([onehot, basis, male, licv])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    counts = np.bincount(site_idx, minlength=n_sites)
    site_int = coef[:n_sites]
    w = counts / n
    intercept = float(w @ site_int)
    # heteroscedastic residual SD: log|r| = c0 + c1 * (age - 40)/10
    age_s = basis[:, 0] / 1.0
    A = np.column_stack([np.ones(n), (age_s - AGE_REF) / 10.0])
    c, *_ = np.linalg.lstsq(A, np.log(np.abs(resid) + 1e-12), rcond=None)
    log_sd0 = float(c[0] - _ELOG_ABS_NORMAL)
    log_sd1 = float(np.clip(c[1], -0.15, 0.15))
    sd = np.exp(log_sd0 + log_sd1 * A[:, 1])
    u = resid / sd
    # skewness of the residuals winsorised at their 1st/99th centiles, so a few failed
    # segmentations do not set it; capped at |0.6|
    lo, hi = np.quantile(u, [0.01, 0.99])
    u_c = np.clip(u, lo, hi)
    u_c = u_c - u_c.mean()
    skew = float(np.clip(np.mean(u_c**3) / np.mean(u_c**2) ** 1.5, -0.6, 0.6))
    # rescale so the standardised residuals have unit variance
    log_sd0 += float(np.log(u.std()))
    u = u / u.std()
    ok = counts >= 15
    se2 = np.exp(2 * log_sd0) / counts[ok]
    var_site = np.average((site_int[ok] - intercept) ** 2, weights=counts[ok]) - se2.mean()
    site_sd = float(np.sqrt(max(var_site, 0.0)))
    log_scale = np.array([np.log(u[site_idx == s].std(ddof=1)) for s in np.flatnonzero(ok)])
    # sampling variance of a log SD is (kurtosis - 1) / (4 n) for non-normal residuals
    kurt = float(np.mean((u - u.mean()) ** 4))
    var_scale = log_scale.var() - np.mean((kurt - 1.0) / (4 * counts[ok]))
    site_scale_sd = float(min(np.sqrt(max(var_scale, 0.0)), 0.15))  # capped: see docstring
    p = {
        "intercept": intercept,
        "age_coef": coef[n_sites:n_sites + basis.shape[1]].tolist(),
        "male": float(coef[-2]),
        "log_icv": float(coef[-1]),
        "log_sd0": log_sd0,
        "log_sd_age": log_sd1,
        "skew": skew,
        "shash_eps": shash_eps_for_skew(skew),
        "site_sd": site_sd,
        "site_scale_sd": site_scale_sd,
    }
    return p, u


def _read_stats_table(path: Path) -> dict[str, list[str]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        rows[f[0] if not f[0].isdigit() else f[4]] = f
    return rows


def derive(shared: Path) -> dict:
    """Fit every parameter from ``shared`` (the ``../shared/data`` folder) and return them."""
    import pandas as pd

    d = pd.read_csv(shared / "controls" / "fcon1000.csv").rename(columns=FS6_TO_FS7)
    age = d["age"].to_numpy(float)
    male = d["sex"].to_numpy(float)  # 0 = female, 1 = male
    icv = d["EstimatedTotalIntraCranialVol"].to_numpy(float)
    licv = np.log(icv / ICV_REF)
    site_codes, site_idx = np.unique(d["site"].to_numpy(str), return_inverse=True)
    n_sites = site_codes.size
    basis = rcs_basis(age, np.array(KNOTS))

    fitted = list(SUBCORTICAL_REGIONS) + ["lhCortexVol", "rhCortexVol"]
    regions, U = {}, []
    for r in fitted:
        p, u = _fit_region(np.log(d[r].to_numpy(float)), basis, male, licv, site_idx, n_sites)
        regions[r] = p
        U.append(u)
    corr = np.corrcoef(np.array(U))
    vals, vecs = np.linalg.eigh(corr)
    load = np.abs(vecs[:, -1]) * np.sqrt(vals[-1])
    for r, lam in zip(fitted, load, strict=True):
        regions[r]["loading"] = float(np.clip(lam, 0.0, 0.8))

    # ICV: log eTIV by sex with site intercepts
    X = np.column_stack([np.eye(n_sites)[site_idx], male])
    coef, *_ = np.linalg.lstsq(X, np.log(icv), rcond=None)
    res = np.log(icv) - X @ coef
    counts = np.bincount(site_idx, minlength=n_sites)
    ok = counts >= 15
    icv_int = float(counts / counts.sum() @ coef[:n_sites])
    var_site = np.average((coef[:n_sites][ok] - icv_int) ** 2, weights=counts[ok]) - (
        res.var() / counts[ok]).mean()
    icv_p = {"log_mean_female": icv_int, "male": float(coef[-1]), "log_sd": float(res.std()),
             "site_sd": float(np.sqrt(max(var_site, 0.0)))}

    # cortical parcels: shares of bert's hemisphere totals
    fs = shared / "freesurfer" / "bert_fs7.2" / "stats"
    cortical = {}
    for hemi in ("lh", "rh"):
        rows = _read_stats_table(fs / f"{hemi}.aparc.stats")
        gv = np.array([float(rows[p][3]) for p in DK_PARCELS])
        total = gv.sum()
        cort_mean = float(np.exp(regions[f"{hemi}CortexVol"]["intercept"]))
        for p, v in zip(DK_PARCELS, gv, strict=True):
            f = rows[p]
            num_vert, area, vol, thick = float(f[1]), float(f[2]), float(f[3]), float(f[4])
            mean_vol = cort_mean * v / total
            cortical[f"{hemi}_{p}_volume"] = {
                "hemi": hemi, "parcel": p, "lobe": DK_LOBE[p],
                "log_share": float(np.log(v / total)),
                "age_mult": LOBE_AGE_MULT[DK_LOBE[p]],
                "log_sd": float(np.clip(0.08 + 3.0 / np.sqrt(mean_vol), 0.09, 0.20)),
                "loading": 0.7 * regions[f"{hemi}CortexVol"]["loading"],
                # file filler: ratios and surface statistics of bert
                "vert_per_area": num_vert / area, "area_thick_per_vol": area * thick / vol,
                "thick": thick, "thick_std": float(f[5]), "mean_curv": float(f[6]),
                "gaus_curv": float(f[7]), "fold_ind": float(f[8]), "curv_ind": float(f[9]),
            }
        cortical[f"{hemi}_sum_to_cortexvol"] = float(
            {"lh": 244352.047461, "rh": 242689.917301}[hemi] / total)

    # aseg filler: medians at the reference ICV, ICV exponent, CV; intensity columns of bert
    aseg_rows = _read_stats_table(fs / "aseg.stats")
    filler = {}
    for seg_id, name in ASEG_ROWS:
        col = name if name in d.columns else None
        f = aseg_rows[name]
        entry = {"seg_id": seg_id, "nvox_per_mm3": (float(f[2]) / float(f[3])) if float(f[3]) else 1.0,
                 "intensity": [float(x) for x in f[5:10]]}
        if col is not None and (d[col] > 0).mean() > 0.9:
            y = np.log(d[col].to_numpy(float).clip(1e-3))
            b = np.polyfit(licv, y, 1)
            entry.update(log_median=float(np.median(y - b[0] * licv)), log_icv=float(b[0]),
                         log_sd=float(np.std(y - np.polyval(b, licv))))
        filler[name] = entry

    meas = {}
    for line in (fs / "aseg.stats").read_text().splitlines():
        if line.startswith("# Measure "):
            parts = [s.strip() for s in line[len("# Measure "):].split(",")]
            meas[parts[1]] = float(parts[3])
    etiv = meas["eTIV"]
    global_ratio = {k: v / etiv for k, v in meas.items()
                    if k.endswith("Vol") and k != "eTIV"}

    return {
        "schema": 1,
        "description": "Control-curve parameters for normfuse.synthetic; derived by "
                       "normfuse/synthetic/derive_params.py (see its docstring). "
                       "Parameters only, no subject data.",
        "sources": {"subcortical": "controls/fcon1000.csv (n=1078, 23 sites, age 7.9-85)",
                    "cortical_shares": "freesurfer/bert_fs7.2/stats/?h.aparc.stats",
                    "cortical_assumptions": "SD, lobe age multipliers, loadings: see docstring"},
        "age_knots": list(KNOTS), "age_ref": AGE_REF, "icv_ref": ICV_REF,
        "age_range_fitted": [float(age.min()), float(age.max())],
        "n_controls": int(d.shape[0]), "n_sites": int(n_sites),
        "icv": icv_p, "regions": regions, "cortical": cortical,
        "aseg_filler": filler, "global_measure_ratio": global_ratio,
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: derive and write the JSON (atomically)."""
    from normfuse.persist import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[2]
    ap.add_argument("--shared", type=Path, default=root.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    params = derive(args.shared)
    atomic_write_text(args.out, json.dumps(params, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
