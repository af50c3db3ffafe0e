"""Simulate a multiple-sclerosis cohort with planted, documented effects.

The cohort is shaped like the published one this project reproduces (defaults: 362
patients with about 953 MRI scans, follow-up up to 12 years, baseline age 38.8 +- 9.7,
70.5 % female) and has healthy reference controls at several sites (age 6-90) plus
age/sex/ICV-matched controls who are not in the reference set. Everything is
generated with vectorised numpy from one seed; every size is a parameter.

Planted effects (all recorded in :class:`SyntheticTruth`)
-------------------------------------------------------
Brain volumes. Every subject has a standard-normal score ``z`` per region and scan,
built from a one-factor model (``z = loading * g + sqrt(1 - loading^2) * u``; 95 % of
the variance of ``g`` and ``u`` is a person's trait, 5 % scan-to-scan noise). The
control model (:mod:`normfuse.synthetic._volumes`) turns ``z`` into a volume whose
true normative quantile score is exactly ``z``, so *critical deviation* means
``|z| > 1.96`` against the true control distribution. Patients have::

    z_patient = z_healthy + direction_r * (offset_r + severity_loading_r * s_i)
                + direction_r * atrophy_r * atrophy_factor_i * years_since_baseline

with ``s_i ~ N(0, 1)``. ``offset_r`` is solved so that a region is critical at
baseline in a target fraction of patients (``truth.regions['prevalence']``): thalamus
25 % (the most often critical region), putamen 13 %, hippocampus 12 %, caudate 9 %,
pallidum 8 %, accumbens 7 %, amygdala 6 %, ventral DC and brain stem 5 %, cerebellar
cortex 4 %, cortical parcels 3.5 % (6 % for insula, precuneus, posterior cingulate);
the lateral and third ventricles are *enlarged* (upper tail, 20 % and 22 %). Atrophy
is faster than healthy ageing by ``atrophy_r`` SD per year (thalamus 0.10).

Disability. A latent continuous EDSS at every visit::

    L_it = a_i + 0.24 * n_crit_it + b_i * t + relapse_it + e_it

``n_crit_it`` counts regions with ``z < -1.96`` (lower tail, as in the MS study);
``a_i = 1.2 + 0.025 * (age - 38.8) + N(0, 0.9^2)``; ``b_i`` is the patient's
progression rate, from a two-class mixture (relapsing: lognormal with median 0.04
EDSS/year; progressive: N(0.25, 0.08^2) clipped at 0, class probability logistic in
severity and age); progressive patients also atrophy twice as fast. Relapses are a
Poisson process (0.35/year, lower with age, halved when progressive, scaled by the
therapy's rate ratio); each adds ``Gamma(2, 0.5)`` EDSS points that decay with a 0.25-year
time constant (transient). ``e_it ~ N(0, 0.3^2)``. EDSS is ``L`` bounded to [0, 9.5] and
rounded to the nearest point of the real scale 0, 1.0, 1.5, ..., 9.5 (no 0.5 step).
Confirmed disability progression is not planted: it emerges from ``b_i``, atrophy and
relapses.

EHR events and notes: see :mod:`normfuse.synthetic.ehr` and
:mod:`normfuse.synthetic.notes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from normfuse.checks import get_logger
from normfuse.results import ResultMixin
from normfuse.synthetic._regions import CORTICAL_REGIONS, DK_LOBE, SUBCORTICAL_REGIONS
from normfuse.synthetic._util import str_array
from normfuse.synthetic._volumes import RegionModel, region_model

__all__ = ["simulate_cohort", "SyntheticCohort", "SyntheticTruth", "EDSS_STEPS",
           "BETA_NCRIT", "round_edss"]

log = get_logger("normfuse.synthetic")

#: The real EDSS scale: 0, then 1.0 to 9.5 in half steps (10 = death is not simulated).
EDSS_STEPS = np.concatenate([[0.0], np.arange(1.0, 9.51, 0.5)])
#: EDSS points per critical deviation (cross-sectional), the published effect size.
BETA_NCRIT = 0.24
CRIT = 1.96
_TRAIT_SHARE = 0.95  # share of z variance that is a person's trait (scan-rescan reliability)

DMT_NAMES = ("none", "interferon beta-1a", "glatiramer acetate", "dimethyl fumarate",
             "fingolimod", "natalizumab", "ocrelizumab")
DMT_PROBS = (0.15, 0.15, 0.15, 0.15, 0.12, 0.10, 0.18)
DMT_RELAPSE_RR = (1.0, 0.7, 0.7, 0.55, 0.45, 0.3, 0.3)


def round_edss(latent: np.ndarray) -> np.ndarray:
    """Bound ``latent`` to [0, 9.5] and round to the nearest point of the EDSS scale."""
    x = np.clip(np.asarray(latent, dtype=float), 0.0, 9.5)
    idx = np.searchsorted(EDSS_STEPS, x)
    idx = np.clip(idx, 1, EDSS_STEPS.size - 1)
    lo, hi = EDSS_STEPS[idx - 1], EDSS_STEPS[idx]
    return np.where(x - lo < hi - x, lo, hi)


def _group_index(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., n_g - 1 within each consecutive group of sizes ``counts``."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def _truncnorm_u(u, mean, sd, lo, hi):
    """Normal(mean, sd) truncated to [lo, hi] at uniform quantiles ``u``."""
    from scipy.stats import norm

    a, b = norm.cdf((lo - mean) / sd), norm.cdf((hi - mean) / sd)
    return mean + sd * norm.ppf(a + (b - a) * u)


def _poisson_rate_for_capped_mean(target: float, cap: np.ndarray) -> float:
    """Rate ``lam`` with mean over patients of E[min(Poisson(lam), cap_i)] equal to ``target``."""
    from scipy.stats import poisson

    if target <= 0:
        return 0.0
    caps, counts = np.unique(cap, return_counts=True)
    ks = np.arange(int(caps.max()) + 1)

    def mean_capped(lam):
        sf = poisson.sf(ks, lam)                      # P(X > k)
        cum = np.concatenate([[0.0], np.cumsum(sf)])  # E[min(X, c)] = sum_{k<c} P(X > k)
        return float(counts @ cum[caps] / counts.sum())

    if mean_capped(50.0) < target:
        return 50.0
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_capped(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _region_effects() -> pd.DataFrame:
    """Planted patient effects per region (see the module docstring)."""
    from scipy.stats import norm

    prev, direction, load, atrophy = {}, {}, {}, {}
    deep = {"Thalamus": 0.25, "Putamen": 0.13, "Hippocampus": 0.12, "Caudate": 0.09,
            "Pallidum": 0.08, "Accumbens-area": 0.07, "Amygdala": 0.06, "VentralDC": 0.05,
            "Cerebellum-Cortex": 0.04}
    deep_atrophy = {"Thalamus": 0.10, "Putamen": 0.06, "Hippocampus": 0.05, "Caudate": 0.05,
                    "Pallidum": 0.04, "Accumbens-area": 0.04, "Amygdala": 0.03,
                    "VentralDC": 0.03, "Cerebellum-Cortex": 0.03}
    for r in SUBCORTICAL_REGIONS:
        base = r.split("-", 1)[1] if r.startswith(("Left-", "Right-")) else r
        if base == "Lateral-Ventricle":
            prev[r], direction[r], load[r], atrophy[r] = 0.20, 1, 0.6, 0.08
        elif r == "3rd-Ventricle":
            prev[r], direction[r], load[r], atrophy[r] = 0.22, 1, 0.6, 0.08
        elif r == "Brain-Stem":
            prev[r], direction[r], load[r], atrophy[r] = 0.05, -1, 0.4, 0.03
        else:
            prev[r], direction[r], load[r], atrophy[r] = deep[base], -1, 0.6, deep_atrophy[base]
    for r in CORTICAL_REGIONS:
        parcel = r.split("_")[1]
        special = parcel in ("insula", "precuneus", "posteriorcingulate")
        prev[r], direction[r] = (0.06 if special else 0.035), -1
        load[r], atrophy[r] = 0.4, 0.02
    df = pd.DataFrame({"prevalence": prev, "direction": direction,
                       "severity_loading": load, "atrophy_sd_per_year": atrophy})
    df.index.name = "region"
    # P(direction * (z + direction*(o + c s)) > 1.96) = p  with z, s ~ N(0, 1) independent
    df["offset_sd"] = CRIT + np.sqrt(1 + df["severity_loading"] ** 2) * norm.ppf(df["prevalence"])
    df["lobe"] = [DK_LOBE.get(r.split("_")[1], "subcortical") if r in CORTICAL_REGIONS
                  else "subcortical" for r in df.index]
    return df


@dataclass(frozen=True)
class SyntheticTruth(ResultMixin):
    """Every planted effect of a :class:`SyntheticCohort`, for checking recovery.

    Attributes
    ----------
    regions : per region: ``prevalence`` (target fraction critical at baseline),
        ``direction`` (-1 smaller, +1 larger in MS), ``offset_sd`` and
        ``severity_loading`` (the patient shift in SD units is
        ``direction * (offset_sd + severity_loading * s_i)``), ``atrophy_sd_per_year``.
    patients : per patient latent values: ``severity``, ``progressive``,
        ``progression_rate`` (EDSS/year), ``atrophy_factor``, ``relapse_rate`` (/year),
        ``edss_intercept``, ``n_relapses``.
    z_patients, z_reference, z_matched : true Z of every region for every scan, index
        aligned with the matching volume table, plus ``n_crit`` (``z < -1.96``),
        ``n_crit_neg``, ``n_crit_pos``.
    visit_latent : per visit (aligned with ``visits``): ``years``, ``n_crit``,
        ``latent_edss``, ``relapse_effect``.
    edss : the EDSS model constants (``beta_ncrit`` = 0.24, ...).
    sites : per site: ICV offset; ``site_offset``/``site_scale`` arrays are in
        ``site_effects`` (sites x regions DataFrames).
    ehr, notes : dictionaries documenting the informative variables and cues.
    phi : one row per planted PHI token: ``note_row`` (position in ``notes``), ``kind``,
        ``token``.
    irr : the incidence-rate ratio of critical-deviation counts, patients at baseline
        vs controls, implied by the planted effects (``expected``) and realised in
        the true Z (``realised``).
    """

    regions: pd.DataFrame
    patients: pd.DataFrame
    z_patients: pd.DataFrame
    z_reference: pd.DataFrame
    z_matched: pd.DataFrame
    visit_latent: pd.DataFrame
    edss: dict
    site_effects: dict
    ehr: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    phi: pd.DataFrame = field(default_factory=pd.DataFrame)
    irr: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    _title = "Planted effects of the synthetic MS cohort"

    def summary(self) -> pd.DataFrame:
        """Per-region planted effects and their realised baseline prevalence."""
        z = self.z_patients
        base = z[z["session_id"] == "ses-01"] if "session_id" in z.columns else z
        out = self.regions.copy()
        cols = list(self.regions.index)
        zz = base[cols].to_numpy()
        d = self.regions["direction"].to_numpy()
        out["realised_prevalence"] = np.mean(d * zz > CRIT, axis=0)
        return out


@dataclass(frozen=True)
class SyntheticCohort(ResultMixin):
    """A simulated MS cohort in the data contracts of ARCHITECTURE.md.

    Attributes
    ----------
    reference_controls, patient_volumes, matched_controls : volume tables
        (``subject_id``, ``session_id``, ``age``, ``sex``, ``site``, ``icv``, one column
        per region, ``volume_kind`` = ``"pv_corrected"``; plus ``scan_date``).
    visits : ``patient_id``, ``visit_date``, ``edss``, ``relapse``, ``pasat``, ``fss``.
    events : ``patient_id``, ``encounter_id``, ``time``, ``table``, ``variable``,
        ``value`` (string: raw, messy), ``unit``.
    encounters : ``patient_id``, ``encounter_id``, ``encounter_type``, ``start``, ``end``,
        ``visit_row`` (row of ``visits`` for the clinic encounter of a study visit, else -1).
    notes : ``patient_id``, ``time``, ``text``, ``encounter_id``.
    demographics : one row per patient.
    truth : :class:`SyntheticTruth`.
    seed : the seed it was generated from.
    """

    reference_controls: pd.DataFrame
    patient_volumes: pd.DataFrame
    matched_controls: pd.DataFrame
    visits: pd.DataFrame
    events: pd.DataFrame
    encounters: pd.DataFrame
    notes: pd.DataFrame
    demographics: pd.DataFrame
    truth: SyntheticTruth
    seed: int
    regions: tuple[str, ...] = field(default=tuple(SUBCORTICAL_REGIONS + CORTICAL_REGIONS))

    _title = "Synthetic MS cohort"

    def summary(self) -> pd.DataFrame:
        """Rows per table and headline numbers, as a one-column DataFrame."""
        d = self.demographics
        base = self.truth.z_patients.loc[self.patient_volumes["session_id"] == "ses-01"]
        rows = {
            "patients": len(d),
            "patient scans": len(self.patient_volumes),
            "reference controls": len(self.reference_controls),
            "matched controls": len(self.matched_controls),
            "visits": len(self.visits),
            "encounters": len(self.encounters),
            "events": len(self.events),
            "notes": len(self.notes),
            "baseline age mean": float(d["age_baseline"].mean()),
            "baseline age sd": float(d["age_baseline"].std()),
            "female fraction": float((d["sex"] == "F").mean()),
            "max follow-up (years)": float(d["follow_up_years"].max()),
            "thalamus critical at baseline": float((base["Left-Thalamus"] < -CRIT).mean()),
            "baseline EDSS median": float(
                self.visits.groupby("patient_id", sort=False)["edss"].first().median()),
        }
        return pd.DataFrame({"value": pd.Series(rows, dtype=float)})


def _site_effects(rng, model: RegionModel, n_sites: int):
    R = len(model.regions)
    offset = rng.standard_normal((n_sites, R)) * model.site_sd
    scale = np.exp(rng.standard_normal((n_sites, R)) * model.site_scale_sd)
    icv_off = rng.standard_normal(n_sites) * model.icv["site_sd"]
    return offset, scale, icv_off


def _draw_icv(rng, model: RegionModel, male, site_idx, icv_off):
    ic = model.icv
    return np.exp(ic["log_mean_female"] + ic["male"] * male + icv_off[site_idx]
                  + ic["log_sd"] * rng.standard_normal(male.size))


def _healthy_z(rng, loading, n):
    """Cross-sectional control scores with the one-factor correlation."""
    R = loading.size
    g = rng.standard_normal((n, 1))
    u = rng.standard_normal((n, R))
    return loading * g + np.sqrt(1 - loading**2) * u


def _volume_frame(ids, sessions, age, male, site_names, site_idx, icv, vols, regions, dates):
    df = pd.DataFrame({
        "subject_id": str_array(ids),
        "session_id": str_array(sessions),
        "age": np.round(age, 2),
        "sex": str_array(np.where(male == 1, "M", "F")),
        "site": str_array(np.asarray(site_names)[site_idx]),
        "icv": np.rint(icv * 1000) / 1000,
    })
    reg = pd.DataFrame(vols, columns=list(regions))
    df = pd.concat([df, reg], axis=1)
    df["volume_kind"] = str_array(["pv_corrected"] * len(df))
    df["scan_date"] = dates
    return df


def _z_frame(z, ids, sessions, regions):
    df = pd.DataFrame(z, columns=list(regions))
    df.insert(0, "session_id", str_array(sessions))
    df.insert(0, "subject_id", str_array(ids))
    neg = (z < -CRIT).sum(axis=1)
    pos = (z > CRIT).sum(axis=1)
    df["n_crit"] = neg + pos
    df["n_crit_neg"] = neg
    df["n_crit_pos"] = pos
    return df


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(4, len(str(n)))
    return np.char.add(f"sub-{prefix}", np.char.zfill(np.arange(1, n + 1).astype(str), width))


def simulate_cohort(
    n_patients: int = 362,
    n_controls_reference: int = 2000,
    n_matched_controls: int | None = None,
    n_sites: int = 6,
    n_patient_sites: int = 2,
    *,
    seed: int = 0,
    mean_scans_per_patient: float = 953 / 362,
    max_follow_up_years: float = 12.0,
    age_mean: float = 38.8,
    age_sd: float = 9.7,
    female_fraction: float = 0.705,
    reference_age_range: tuple[float, float] = (6.0, 90.0),
    beta_ncrit: float = BETA_NCRIT,
    messy_rate: float = 0.02,
    typo_rate: float = 0.05,
    ehr: bool = True,
    notes: bool = True,
) -> SyntheticCohort:
    """Simulate reference controls, MS patients (volumes, visits, EHR, notes) and matched controls.

    Parameters
    ----------
    n_patients : number of MS patients (published cohort: 362).
    n_controls_reference : healthy controls of the normative reference set.
    n_matched_controls : age/sex/ICV-matched controls (distinct from the reference set);
        default one per patient.
    n_sites : sites of the reference set; the first ``n_patient_sites`` also scan the
        patients and matched controls.
    seed : the only source of randomness; equal arguments give equal cohorts.
    mean_scans_per_patient : target mean number of MRI scans (published: 953 / 362).
    max_follow_up_years : longest follow-up (published: 12).
    age_mean, age_sd, female_fraction : patients' baseline age (truncated to 18-75) and sex.
    reference_age_range : uniform age range of the reference controls.
    beta_ncrit : EDSS points per critical deviation in the latent EDSS.
    messy_rate : fraction of lab/vital values written messily ("pending", padded, ...).
    typo_rate : fraction of note sentences with a typo.
    ehr, notes : set False to skip generating EHR events or notes (faster).

    Returns
    -------
    SyntheticCohort

    Examples
    --------
    >>> from normfuse.synthetic import simulate_cohort
    >>> c = simulate_cohort(n_patients=50, n_controls_reference=100, seed=1)
    >>> c.patient_volumes["subject_id"].nunique()
    50
    >>> sorted(c.visits["edss"].unique().tolist())[:3]
    [0.0, 1.0, 1.5]
    >>> round(float(c.truth.regions.loc["Left-Thalamus", "prevalence"]), 2)
    0.25
    """
    if n_patients < 1 or n_controls_reference < 1:
        raise ValueError(
            f"simulate_cohort: n_patients={n_patients} and n_controls_reference="
            f"{n_controls_reference} must both be at least 1.")
    if not 1 <= n_patient_sites <= n_sites:
        raise ValueError(
            f"simulate_cohort: n_patient_sites={n_patient_sites} must be between 1 and "
            f"n_sites={n_sites}.")
    if mean_scans_per_patient < 1:
        raise ValueError(f"simulate_cohort: mean_scans_per_patient={mean_scans_per_patient} "
                         "must be at least 1 (every patient has a baseline scan).")
    n_matched = n_patients if n_matched_controls is None else int(n_matched_controls)
    ss = np.random.SeedSequence(seed)
    (r_site, r_pat, r_vis, r_z, r_rel, r_edss, r_scan, r_ref, r_match, r_ehr,
     r_notes) = (np.random.default_rng(s) for s in ss.spawn(11))

    model = region_model()
    regions = model.regions
    R = len(regions)
    eff = _region_effects().loc[list(regions)]
    site_names = np.array([f"site{j + 1:02d}" for j in range(n_sites)])
    site_off, site_scale, icv_off = _site_effects(r_site, model, n_sites)

    # ---- patients -------------------------------------------------------------------
    P = n_patients
    pid = _ids("MS", P)
    # stratified draws: the sample's sex split and age distribution match the targets
    # closely even at the published size
    n_female = int(round(female_fraction * P))
    male = (r_pat.permutation(P) >= n_female).astype(float)
    u_age = (r_pat.permutation(P) + r_pat.random(P)) / P
    age0 = _truncnorm_u(u_age, age_mean, age_sd, 18.0, 75.0)
    if P > 1:  # truncation at 18 raises the mean: rescale to the target moments, re-bound
        age0 = np.clip(age_mean + age_sd * (age0 - age0.mean()) / age0.std(ddof=1), 18.0, 75.0)
    psite = r_pat.integers(0, n_patient_sites, P)
    icv = _draw_icv(r_pat, model, male, psite, icv_off)
    severity = r_pat.standard_normal(P)
    logit = -0.85 + 0.5 * severity + 0.04 * (age0 - age_mean)
    progressive = r_pat.random(P) < 1 / (1 + np.exp(-logit))
    rate = np.where(progressive,
                    np.clip(r_pat.normal(0.25, 0.08, P), 0, None),
                    np.exp(np.log(0.04) + 0.6 * r_pat.standard_normal(P)))
    atrophy_factor = np.exp(0.3 * r_pat.standard_normal(P)) * np.where(progressive, 2.0, 1.0)
    dmt_idx = r_pat.choice(len(DMT_NAMES), size=P, p=DMT_PROBS)
    relapse_rate = (0.35 * np.exp(-0.03 * (age0 - age_mean)) * np.where(progressive, 0.5, 1.0)
                    * np.asarray(DMT_RELAPSE_RR)[dmt_idx])
    a_i = 1.2 + 0.025 * (age0 - age_mean) + 0.9 * r_pat.standard_normal(P)
    follow = 0.5 + (max_follow_up_years - 0.5) * r_pat.beta(1.2, 1.6, P)
    interval = 0.5 + 0.5 * r_pat.random(P)
    base_day = r_pat.integers(0, 7 * 365, P)
    disease_years = r_pat.gamma(2.0, 4.0, P)

    # ---- visits ---------------------------------------------------------------------
    nv = (np.floor(follow / interval) + 1).astype(int)
    V = int(nv.sum())
    vpat = np.repeat(np.arange(P), nv)
    k = _group_index(nv)
    t = k * interval[vpat] + np.where(k > 0, r_vis.uniform(-0.05, 0.05, V), 0.0)
    t = np.clip(t, 0, follow[vpat])
    base_date = np.datetime64("2008-01-01") + base_day.astype("timedelta64[D]")
    vdate = base_date[vpat] + np.rint(t * 365.25).astype("timedelta64[D]")
    t = (vdate - base_date[vpat]).astype(float) / 365.25
    birth = base_date - np.rint(age0 * 365.25).astype("timedelta64[D]")

    # ---- scans: baseline + a random subset of later visits ----------------------------
    lam_scan = _poisson_rate_for_capped_mean(mean_scans_per_patient - 1, nv - 1)
    extra = r_scan.poisson(lam_scan, P)
    n_scan = 1 + np.minimum(extra, nv - 1)
    key = np.where(k == 0, -1.0, r_scan.random(V))
    order = np.lexsort((key, vpat))
    rank = np.empty(V, dtype=int)
    rank[order] = _group_index(nv)
    is_scan = rank < n_scan[vpat]
    scan_rows = np.flatnonzero(is_scan)
    scan_num = _group_index(n_scan)  # scans are in visit order within patient
    S = scan_rows.size

    # ---- true Z at every visit (region blocks keep memory at V x 16) ------------------
    lam = model.loading
    trait = np.sqrt(_TRAIT_SHARE)
    noise = np.sqrt(1 - _TRAIT_SHARE)
    g_pers = r_z.standard_normal(P)
    d = eff["direction"].to_numpy(float)
    shift_p = d * (eff["offset_sd"].to_numpy() + np.multiply.outer(severity,
                                                                    eff["severity_loading"].to_numpy()))
    atr = d * eff["atrophy_sd_per_year"].to_numpy()
    g_v = trait * g_pers[vpat] + noise * r_z.standard_normal(V)
    n_crit_v = np.zeros(V, dtype=np.int64)
    z_scan = np.empty((S, R))
    for j0 in range(0, R, 16):
        sl = slice(j0, min(j0 + 16, R))
        u_pers = r_z.standard_normal((P, sl.stop - sl.start))
        u_v = trait * u_pers[vpat] + noise * r_z.standard_normal((V, sl.stop - sl.start))
        zb = lam[sl] * g_v[:, None] + np.sqrt(1 - lam[sl] ** 2) * u_v
        zb += shift_p[vpat, sl] + np.multiply.outer(atrophy_factor[vpat] * t, atr[sl])
        n_crit_v += (zb < -CRIT).sum(axis=1)
        z_scan[:, sl] = zb[scan_rows]

    # ---- relapses and EDSS ---------------------------------------------------------
    n_rel = r_rel.poisson(relapse_rate * follow)
    rpat = np.repeat(np.arange(P), n_rel)
    onset = r_rel.random(rpat.size) * follow[rpat]
    amp = r_rel.gamma(2.0, 0.5, rpat.size)
    vstart = np.cumsum(nv) - nv
    pair_r = np.repeat(np.arange(rpat.size), nv[rpat])
    pair_v = vstart[rpat][pair_r] + _group_index(nv[rpat])
    dt = t[pair_v] - onset[pair_r]
    rel_effect = np.bincount(pair_v, weights=np.where(dt >= 0, amp[pair_r] * np.exp(-dt / 0.25), 0.0),
                             minlength=V)
    t_prev = np.where(k > 0, np.r_[0.0, t[:-1]], -np.inf)
    hit = (onset[pair_r] <= t[pair_v]) & (onset[pair_r] > t_prev[pair_v])
    relapse_flag = np.bincount(pair_v, weights=hit, minlength=V) > 0
    latent = (a_i[vpat] + beta_ncrit * n_crit_v + rate[vpat] * t + rel_effect
              + r_edss.normal(0, 0.3, V))
    edss = round_edss(latent)
    pasat = np.clip(np.rint(50 - 0.8 * n_crit_v - 1.5 * latent + r_edss.normal(0, 5, V)), 0, 60)
    pasat = np.where(r_edss.random(V) < 0.4, np.nan, pasat)
    fss = np.clip(np.round(2.5 + 0.35 * latent + r_edss.normal(0, 0.8, V), 2), 1, 7)
    fss = np.where(r_edss.random(V) < 0.3, np.nan, fss)

    visits = pd.DataFrame({
        "patient_id": str_array(pid[vpat]),
        "visit_date": vdate.astype("datetime64[ns]"),
        "edss": edss,
        "relapse": relapse_flag,
        "pasat": pasat,
        "fss": fss,
    })

    # ---- patient volumes --------------------------------------------------------------
    sp = vpat[scan_rows]
    age_scan = age0[sp] + t[scan_rows]
    icv_scan = icv[sp] * np.exp(0.005 * r_scan.standard_normal(S))
    sess = np.char.add("ses-", np.char.zfill((scan_num + 1).astype(str), 2))
    vols = model.volumes(z_scan, age_scan, male[sp], icv_scan, site_off[psite[sp]],
                         site_scale[psite[sp]])
    patient_volumes = _volume_frame(pid[sp], sess, age_scan, male[sp], site_names, psite[sp],
                                    icv_scan, vols, regions, vdate[scan_rows].astype("datetime64[ns]"))
    z_patients = _z_frame(z_scan, pid[sp], sess, regions)

    # ---- reference controls -----------------------------------------------------------
    N = n_controls_reference
    rid = _ids("RC", N)
    rmale = (r_ref.random(N) < 0.5).astype(float)
    rage = r_ref.uniform(*reference_age_range, N)
    rsite = r_ref.integers(0, n_sites, N)
    ricv = _draw_icv(r_ref, model, rmale, rsite, icv_off)
    rz = _healthy_z(r_ref, lam, N)
    rdate = (np.datetime64("2012-01-01") + r_ref.integers(0, 8 * 365, N).astype("timedelta64[D]"))
    ones = np.array(["ses-01"] * N)
    reference = _volume_frame(rid, ones, rage, rmale, site_names, rsite, ricv,
                              model.volumes(rz, rage, rmale, ricv, site_off[rsite], site_scale[rsite]),
                              regions, rdate.astype("datetime64[ns]"))
    z_reference = _z_frame(rz, rid, ones, regions)

    # ---- matched controls (age/sex/site/ICV of a patient's baseline) ------------------
    M = n_matched
    mid = _ids("HC", M)
    src = (r_match.permutation(P)[:M] if M <= P else r_match.integers(0, P, M))
    mmale = male[src]
    mage = np.clip(age0[src] + r_match.normal(0, 1.5, M), 18, None)
    msite = psite[src]
    micv = icv[src] * np.exp(r_match.normal(0, 0.03, M))
    mz = _healthy_z(r_match, lam, M)
    mdate = base_date[src] + r_match.integers(-180, 180, M).astype("timedelta64[D]")
    mones = np.array(["ses-01"] * M)
    matched = _volume_frame(mid, mones, mage, mmale, site_names, msite, micv,
                            model.volumes(mz, mage, mmale, micv, site_off[msite], site_scale[msite]),
                            regions, mdate.astype("datetime64[ns]"))
    z_matched = _z_frame(mz, mid, mones, regions)
    matched["matched_patient_id"] = str_array(pid[src])

    # ---- demographics and truth ---------------------------------------------------------
    phenotype = np.where(progressive, np.where(r_pat.random(P) < 0.15, "PPMS", "SPMS"), "RRMS")
    demographics = pd.DataFrame({
        "patient_id": str_array(pid),
        "sex": str_array(np.where(male == 1, "M", "F")),
        "birth_date": birth.astype("datetime64[ns]"),
        "age_baseline": np.round(age0, 2),
        "site": str_array(site_names[psite]),
        "baseline_date": base_date.astype("datetime64[ns]"),
        "follow_up_years": np.round(t[vstart + nv - 1], 3),
        "disease_duration_baseline": np.round(disease_years, 1),
        "phenotype": str_array(phenotype),
        "dmt": str_array(np.asarray(DMT_NAMES)[dmt_idx]),
        "n_visits": nv,
        "n_scans": n_scan,
    })
    patients_truth = pd.DataFrame({
        "patient_id": pid, "severity": severity, "progressive": progressive,
        "progression_rate": rate, "atrophy_factor": atrophy_factor,
        "relapse_rate": relapse_rate, "edss_intercept": a_i, "n_relapses": n_rel,
        "icv": icv, "site": site_names[psite],
    })
    visit_latent = pd.DataFrame({"years": t, "n_crit": n_crit_v, "latent_edss": latent,
                                 "relapse_effect": rel_effect})
    base_rows = scan_num == 0
    exp_ctrl = R * _norm_cdf(-CRIT)
    exp_pat = float(sum(_norm_cdf((-CRIT - dd * o) / np.sqrt(1 + c * c)) for dd, o, c in zip(
        eff["direction"], eff["offset_sd"], eff["severity_loading"], strict=True)))
    irr = {
        "definition": "mean lower-tail critical deviations per subject (z < -1.96), "
                      "patients at baseline / controls",
        "expected_controls": exp_ctrl, "expected_patients_baseline": exp_pat,
        "expected": exp_pat / exp_ctrl,
        "realised": float(z_patients.loc[base_rows, "n_crit_neg"].mean()
                          / max(z_matched["n_crit_neg"].mean(), 1e-12)),
    }
    edss_truth = {
        "beta_ncrit": beta_ncrit, "ncrit_definition": "regions with true z < -1.96",
        "intercept": "1.2 + 0.025 * (age - age_mean) + N(0, 0.9^2)",
        "progression": {"p_progressive": "logistic(-0.85 + 0.5 severity + 0.04 (age - mean))",
                        "relapsing_rate_median": 0.04, "relapsing_rate_log_sd": 0.6,
                        "progressive_rate_mean": 0.25, "progressive_rate_sd": 0.08},
        "relapses": {"rate_per_year": 0.35, "age_factor": "exp(-0.03 (age - mean))",
                     "age_log_rate_per_year": -0.03,
                     "progressive_factor": 0.5, "dmt_rate_ratio": dict(zip(DMT_NAMES, DMT_RELAPSE_RR, strict=True)),
                     "amplitude": "Gamma(shape 2, scale 0.5)", "decay_years": 0.25},
        "noise_sd": 0.3, "scale": EDSS_STEPS.tolist(), "bounds": [0.0, 9.5],
        "pasat": "50 - 0.8 n_crit - 1.5 latent + N(0, 5^2), 40 % missing",
        "fss": "2.5 + 0.35 latent + N(0, 0.8^2), 30 % missing",
    }
    site_effects = {"site_offset": pd.DataFrame(site_off, index=site_names, columns=list(regions)),
                    "site_scale": pd.DataFrame(site_scale, index=site_names, columns=list(regions)),
                    "icv_log_offset": pd.Series(icv_off, index=site_names)}

    # ---- EHR and notes ------------------------------------------------------------------
    from normfuse.synthetic import ehr as _ehr
    from normfuse.synthetic import notes as _notes

    ctx = _ehr.Context(pid=pid, male=male, age0=age0, birth=birth, base_date=base_date,
                       follow=follow, dmt_idx=dmt_idx, vpat=vpat, vdate=vdate, t=t,
                       latent=latent, edss=edss, relapse_flag=relapse_flag, rpat=rpat,
                       onset=onset, nv=nv)
    encounters, events, ehr_truth = _ehr.simulate_ehr(r_ehr, ctx, messy_rate=messy_rate,
                                                      with_events=ehr)
    if notes:
        notes_df, phi, notes_truth = _notes.simulate_notes(r_notes, ctx, encounters,
                                                           typo_rate=typo_rate)
    else:
        notes_df, phi, notes_truth = _notes.empty_notes()

    truth = SyntheticTruth(
        regions=eff, patients=patients_truth, z_patients=z_patients, z_reference=z_reference,
        z_matched=z_matched, visit_latent=visit_latent, edss=edss_truth,
        site_effects=site_effects, ehr=ehr_truth, notes=notes_truth, phi=phi, irr=irr,
        params={"seed": seed, "n_patients": P, "n_controls_reference": N,
                "n_matched_controls": M, "n_sites": n_sites, "n_patient_sites": n_patient_sites,
                "messy_rate": messy_rate, "typo_rate": typo_rate},
    )
    log.info("simulated %d patients (%d scans, %d visits), %d reference and %d matched controls",
             P, S, V, N, M)
    return SyntheticCohort(
        reference_controls=reference, patient_volumes=patient_volumes,
        matched_controls=matched, visits=visits, events=events, encounters=encounters,
        notes=notes_df, demographics=demographics, truth=truth, seed=seed,
    )


def _norm_cdf(x: float) -> float:
    from math import erf, sqrt

    return 0.5 * (1 + erf(x / sqrt(2)))

