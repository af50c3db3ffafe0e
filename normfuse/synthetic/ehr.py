"""Simulated EHR: encounters and the lab, vital and medication events inside them.

Encounters per patient: one neurology clinic encounter per study visit, plus primary
care, laboratory and emergency encounters (Poisson, 1.5 per year of follow-up) and
emergency encounters after 60 % of relapses, and
infusion encounters for natalizumab (every 8 weeks) and ocrelizumab (every 6 months).
Every event's time lies between its encounter's start and end.

Informative variables (recorded in ``truth.ehr``):

* ``vitamin_d_25oh`` (ng/mL): ``32 - 2 * (latent EDSS - 2)`` + season + N(0, 8^2).
* ``baclofen``: started when the latent EDSS first reaches a patient threshold
  ``4 + N(0, 0.5^2)`` (spasticity), in 70 % of patients who reach it.
* ``gabapentin``: threshold 3 (40 % adopt), plus 8 % background use from baseline.
* ``oxybutynin``: threshold 4.5 (bladder; 50 % adopt).
* ``prednisone`` 1250 mg: at encounters within 30 days after a relapse onset (80 %).
* ``lymphocytes_abs`` (10^9/L): lowered by therapy (fingolimod x0.35, dimethyl
  fumarate x0.70, ocrelizumab x0.85): informative of treatment, not of EDSS.

Noise: white cells, neutrophils, platelets, haemoglobin, CRP, ALT, creatinine; all
vitals (blood pressure, heart rate, weight, BMI, temperature); lisinopril,
atorvastatin, sertraline, ibuprofen. Raw values are strings: values below a
reporting limit are written ``"<5"`` (CRP) or ``"<4"`` (vitamin D), above one
``">1000"`` (platelets, ALT); a further ``messy_rate`` of lab/vital values is
written ``"pending"`` (45 %), padded with spaces (``"  7.2 "``, 45 %) or empty (10 %).
Missingness: panels are drawn per encounter type with the probabilities in
``_LABS``/``_VITALS`` and single results go missing at 2-20 %.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from normfuse.synthetic._util import str_array, take_str

__all__ = ["Context", "simulate_ehr", "ENCOUNTER_TYPES", "LAB_UNITS"]

ENCOUNTER_TYPES = ("neurology outpatient", "primary care", "laboratory", "emergency", "infusion")
_CLINIC, _PC, _LAB, _ED, _INF = range(5)
_DURATION_MIN = {_CLINIC: (20, 90), _PC: (15, 60), _LAB: (5, 20), _ED: (120, 480),
                 _INF: (120, 300)}

# name: (unit, decimals, per-encounter-type probability [clinic, pc, lab, ed, infusion], panel)
_LABS = {
    "wbc": ("10^9/L", 1, "cbc"), "neutrophils_abs": ("10^9/L", 2, "cbc"),
    "lymphocytes_abs": ("10^9/L", 2, "cbc"), "platelets": ("10^9/L", 0, "cbc"),
    "hemoglobin": ("g/dL", 1, "cbc"), "vitamin_d_25oh": ("ng/mL", 0, "vitd"),
    "crp": ("mg/L", 1, "chem"), "alt": ("U/L", 0, "chem"), "creatinine": ("mg/dL", 2, "chem"),
}
_PANEL_P = {"cbc": (0.5, 0.3, 0.95, 0.9, 0.6), "vitd": (0.3, 0.15, 0.5, 0.0, 0.0),
            "chem": (0.3, 0.2, 0.7, 0.8, 0.3)}
LAB_UNITS = {k: v[0] for k, v in _LABS.items()}
_VITALS = {"bp_systolic": ("mmHg", 0, 0.1), "bp_diastolic": ("mmHg", 0, 0.1),
           "heart_rate": ("bpm", 0, 0.1), "weight": ("kg", 1, 0.2), "bmi": ("kg/m2", 1, 0.2),
           "temperature": ("degC", 1, 0.15)}
_VITAL_P = (0.9, 0.9, 0.0, 1.0, 0.8)
_LIMITS = {"crp": (5.0, None), "vitamin_d_25oh": (4.0, None), "platelets": (None, 1000.0),
           "alt": (None, 1000.0)}

_DMT_DOSE = {"interferon beta-1a": ("44", "mcg"), "glatiramer acetate": ("40", "mg"),
             "dimethyl fumarate": ("240", "mg"), "fingolimod": ("0.5", "mg"),
             "natalizumab": ("300", "mg"), "ocrelizumab": ("600", "mg")}
_DMT_LYMPH = {"fingolimod": 0.35, "dimethyl fumarate": 0.70, "ocrelizumab": 0.85}
# symptomatic drugs started at a latent-EDSS threshold: (threshold, adopt prob, doses)
_SYMPTOMATIC = {"baclofen": (4.0, 0.7, ("10", "20")), "gabapentin": (3.0, 0.4, ("300", "600")),
                "oxybutynin": (4.5, 0.5, ("5",))}
_NOISE_MEDS = {"lisinopril": (0.10, ("10", "20")), "atorvastatin": (0.12, ("20", "40")),
               "sertraline": (0.15, ("50", "100")), "ibuprofen": (0.20, ("400", "600"))}


@dataclass(frozen=True)
class Context:
    """Per-patient and per-visit arrays the EHR and note simulators condition on."""

    pid: np.ndarray
    male: np.ndarray
    age0: np.ndarray
    birth: np.ndarray
    base_date: np.ndarray
    follow: np.ndarray
    dmt_idx: np.ndarray
    vpat: np.ndarray
    vdate: np.ndarray
    t: np.ndarray
    latent: np.ndarray
    edss: np.ndarray
    relapse_flag: np.ndarray
    rpat: np.ndarray
    onset: np.ndarray
    nv: np.ndarray


def _asof(key_sorted: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Index of the last ``key_sorted`` <= ``key`` (-1 when none)."""
    return np.searchsorted(key_sorted, key, side="right") - 1


def _encounters(rng, ctx: Context):
    from normfuse.synthetic.cohort import DMT_NAMES

    P = ctx.pid.size
    # clinic: one per visit
    c_pat, c_t = ctx.vpat, ctx.t
    c_type = np.full(c_pat.size, _CLINIC)
    # other encounters
    n_o = rng.poisson(1.5 * ctx.follow)
    o_pat = np.repeat(np.arange(P), n_o)
    o_t = rng.random(o_pat.size) * ctx.follow[o_pat]
    o_type = rng.choice([_PC, _LAB, _ED], size=o_pat.size, p=[0.5, 0.4, 0.1])
    # relapse encounters: 60 % of relapses lead to an emergency visit 0-14 days after onset
    seen = rng.random(ctx.rpat.size) < 0.6
    r_pat = ctx.rpat[seen]
    r_t = np.minimum(ctx.onset[seen] + rng.uniform(0, 14, r_pat.size) / 365.25, ctx.follow[r_pat])
    o_pat = np.concatenate([o_pat, r_pat])
    o_t = np.concatenate([o_t, r_t])
    o_type = np.concatenate([o_type, np.full(r_pat.size, _ED)])
    # infusions
    dmt = np.asarray(DMT_NAMES)[ctx.dmt_idx]
    every = np.where(dmt == "natalizumab", 8 / 52, np.where(dmt == "ocrelizumab", 0.5, np.inf))
    n_i = np.where(np.isfinite(every), np.floor(ctx.follow / np.where(np.isfinite(every), every, 1)) + 1,
                   0).astype(int)
    i_pat = np.repeat(np.arange(P), n_i)
    from normfuse.synthetic.cohort import _group_index

    i_t = np.clip(_group_index(n_i) * every[i_pat] + rng.uniform(0, 0.02, i_pat.size), 0,
                  ctx.follow[i_pat])
    pat = np.concatenate([c_pat, o_pat, i_pat])
    tt = np.concatenate([c_t, o_t, i_t])
    typ = np.concatenate([c_type, o_type, np.full(i_pat.size, _INF)])
    visit_row = np.concatenate([np.arange(c_pat.size), np.full(o_pat.size + i_pat.size, -1)])
    order = np.lexsort((tt, pat))
    pat, tt, typ, visit_row = pat[order], tt[order], typ[order], visit_row[order]
    day = ctx.base_date[pat] + np.rint(tt * 365.25).astype("timedelta64[D]")
    day = np.where(visit_row >= 0, ctx.vdate[np.maximum(visit_row, 0)], day)
    start_min = rng.integers(7 * 60, 17 * 60, pat.size)
    start_min = np.where(typ == _ED, rng.integers(0, 24 * 60, pat.size), start_min)
    lo = np.array([_DURATION_MIN[k][0] for k in range(5)])[typ]
    hi = np.array([_DURATION_MIN[k][1] for k in range(5)])[typ]
    dur = rng.integers(lo, hi + 1)
    start = day.astype("datetime64[m]") + start_min.astype("timedelta64[m]")
    end = start + dur.astype("timedelta64[m]")
    return pat, tt, typ, visit_row, start, end


def simulate_ehr(rng: np.random.Generator, ctx: Context, *, messy_rate: float = 0.02,
                 with_events: bool = True):
    """Encounters, raw events and the documentation of informative variables."""
    from normfuse.synthetic.cohort import DMT_NAMES

    if not 0 <= messy_rate <= 1:
        raise ValueError(f"simulate_cohort: messy_rate={messy_rate} must be in [0, 1].")
    pat, tt, typ, visit_row, start, end = _encounters(rng, ctx)
    E = pat.size
    enc_id = np.arange(1, E + 1, dtype=np.int64)
    encounters = pd.DataFrame({
        "patient_id": str_array(ctx.pid[pat]),
        "encounter_id": enc_id,
        "encounter_type": take_str(ENCOUNTER_TYPES, typ),
        "start": start.astype("datetime64[ns]"),
        "end": end.astype("datetime64[ns]"),
        "visit_row": visit_row,
    })
    # latent EDSS at each encounter: as-of the patient's last visit
    vkey = ctx.vpat * 100.0 + ctx.t
    ekey = pat * 100.0 + tt
    vi = _asof(vkey, ekey)
    vi = np.where(visit_row >= 0, visit_row, np.maximum(vi, 0))
    lat = ctx.latent[vi]
    # days since the last relapse onset
    rkey = ctx.rpat * 100.0 + ctx.onset
    rord = np.argsort(rkey)
    rk = rkey[rord]
    ri = _asof(rk, ekey)
    same = (ri >= 0) & (ctx.rpat[rord][np.maximum(ri, 0)] == pat) if rk.size else np.zeros(E, bool)
    since_rel = np.where(same, (tt - ctx.onset[rord][np.maximum(ri, 0)] if rk.size else 0) * 365.25,
                         np.inf)
    truth = {
        "informative": {
            "vitamin_d_25oh": "32 - 2 * (latent EDSS - 2) + 5 sin(season) + N(0, 8^2) ng/mL",
            "baclofen": "started when latent EDSS >= 4 + N(0, 0.5^2); 70 % adopt",
            "gabapentin": "started when latent EDSS >= 3 + N(0, 0.5^2); 40 % adopt; 8 % background",
            "oxybutynin": "started when latent EDSS >= 4.5 + N(0, 0.5^2); 50 % adopt",
            "prednisone": "1250 mg at encounters <= 30 days after a relapse onset (80 %)",
            "lymphocytes_abs": f"x {_DMT_LYMPH} by therapy (informative of treatment only)",
        },
        "noise": ["wbc", "neutrophils_abs", "platelets", "hemoglobin", "crp", "alt",
                  "creatinine", *_VITALS, *_NOISE_MEDS],
        "messy_rate": messy_rate,
        "messy_kinds": {"pending": 0.45, "padded": 0.45, "empty": 0.10},
        "reporting_limits": {k: list(v) for k, v in _LIMITS.items()},
        "units": {**LAB_UNITS, **{k: v[0] for k, v in _VITALS.items()}},
    }
    if not with_events:
        return encounters, _empty_events(), truth

    P = ctx.pid.size
    dmt = np.asarray(DMT_NAMES)[ctx.dmt_idx]
    # events are kept numeric (value, decimals, codes) until sorted; strings are made last,
    # in pyarrow, because building tens of millions of Python/numpy strings is the slow part
    parts = []  # (enc_idx, table_code, var_code, unit_code, value, decimals)
    var_names: list[str] = []
    units: list[str] = []

    def add(table, name, unit, enc_idx, values, dec):
        var_names.append(name)
        if unit not in units:
            units.append(unit)
        parts.append((enc_idx, table, len(var_names) - 1, units.index(unit),
                      np.asarray(values, dtype=float), dec))

    # ---- labs ---------------------------------------------------------------------------
    panel_mask = {p: rng.random(E) < np.asarray(pr)[typ] for p, pr in _PANEL_P.items()}
    lymph_f = np.ones(P)
    for name, f in _DMT_LYMPH.items():
        lymph_f[dmt == name] = f
    female = ctx.male[pat] == 0
    season = np.sin(2 * np.pi * (start.astype("datetime64[D]").astype(np.int64) % 365) / 365.25)
    for name, (unit, dec, panel) in _LABS.items():
        idx = np.flatnonzero(panel_mask[panel] & (rng.random(E) >= 0.02))
        n = idx.size
        z = rng.standard_normal(n)
        if name == "lymphocytes_abs":
            v = 1.9 * lymph_f[pat[idx]] * np.exp(0.25 * z)
        elif name == "hemoglobin":
            v = np.where(female[idx], 13.2, 15.0) + 1.1 * z
        elif name == "vitamin_d_25oh":
            v = np.clip(32 - 2.0 * (lat[idx] - 2) + 5 * season[idx] + 8 * z, 1, 150)
        elif name == "creatinine":
            v = np.where(female[idx], 0.75, 0.95) * np.exp(0.15 * z)
        elif name == "wbc":
            v = 6.5 * np.exp(0.25 * z)
        elif name == "neutrophils_abs":
            v = 4.0 * np.exp(0.3 * z)
        elif name == "platelets":
            v = np.clip(250 + 55 * z, 20, None)
        elif name == "crp":
            v = 2.0 * np.exp(z)
        else:  # alt
            v = 22 * np.exp(0.35 * z)
        add(0, name, unit, idx, v, dec)

    # ---- vitals ---------------------------------------------------------------------------
    vit_mask = rng.random(E) < np.asarray(_VITAL_P)[typ]
    height = np.where(ctx.male == 1, 1.77, 1.64) + 0.07 * rng.standard_normal(P)
    w0 = np.where(ctx.male == 1, 83.0, 68.0) + 14 * rng.standard_normal(P)
    w_drift = 0.3 * rng.standard_normal(P)
    age_e = ctx.age0[pat] + tt
    weight_e = np.clip(w0[pat] + w_drift[pat] * tt + 1.5 * rng.standard_normal(E), 35, None)
    for name, (unit, dec, pmiss) in _VITALS.items():
        idx = np.flatnonzero(vit_mask & (rng.random(E) >= pmiss))
        n = idx.size
        z = rng.standard_normal(n)
        if name == "bp_systolic":
            v = 122 + 0.3 * (age_e[idx] - 40) + 14 * z
        elif name == "bp_diastolic":
            v = 78 + 9 * z
        elif name == "heart_rate":
            v = 74 + 11 * z
        elif name == "weight":
            v = weight_e[idx]
        elif name == "bmi":
            v = weight_e[idx] / height[pat[idx]] ** 2
        else:
            v = 36.8 + 0.4 * (typ[idx] == _ED) + 0.3 * z
        add(1, name, unit, idx, v, dec)

    # ---- medications ----------------------------------------------------------------------
    presc = (typ == _CLINIC) | (typ == _PC)
    vstart = np.cumsum(ctx.nv) - ctx.nv
    for name, (thr, adopt, doses) in _SYMPTOMATIC.items():
        thr_i = thr + 0.5 * rng.standard_normal(P)
        crossed = np.where(ctx.latent >= thr_i[ctx.vpat], ctx.t, np.inf)
        t_start = np.minimum.reduceat(crossed, vstart)
        t_start = np.where(rng.random(P) < adopt, t_start, np.inf)
        if name == "gabapentin":
            t_start = np.where(rng.random(P) < 0.08, 0.0, t_start)
        dose = np.asarray(doses, dtype=float)[rng.integers(0, len(doses), P)]
        idx = np.flatnonzero(presc & (tt >= t_start[pat]) & (rng.random(E) < 0.85))
        add(2, name, "mg", idx, dose[pat[idx]], 0)
    for name, (prev, doses) in _NOISE_MEDS.items():
        on = rng.random(P) < prev
        dose = np.asarray(doses, dtype=float)[rng.integers(0, len(doses), P)]
        idx = np.flatnonzero(presc & on[pat] & (rng.random(E) < 0.85))
        add(2, name, "mg", idx, dose[pat[idx]], 0)
    idx = np.flatnonzero((since_rel <= 30) & (typ != _LAB) & (rng.random(E) < 0.8))
    add(2, "prednisone", "mg", idx, np.full(idx.size, 1250.0), 0)
    for name, (dose, unit) in _DMT_DOSE.items():
        infused = name in ("natalizumab", "ocrelizumab")
        ok = (typ == _INF) if infused else ((typ == _CLINIC) & (rng.random(E) < 0.9))
        idx = np.flatnonzero(ok & (dmt[pat] == name))
        add(2, name, unit, idx, np.full(idx.size, float(dose)), 1 if "." in dose else 0)

    enc_idx = np.concatenate([p_[0] for p_ in parts])
    sizes = [p_[0].size for p_ in parts]
    table = np.repeat(np.array([p_[1] for p_ in parts], dtype=np.int8), sizes)
    var = np.repeat(np.array([p_[2] for p_ in parts], dtype=np.int16), sizes)
    unit = np.repeat(np.array([p_[3] for p_ in parts], dtype=np.int8), sizes)
    value = np.concatenate([p_[4] for p_ in parts])
    dec = np.repeat(np.array([p_[5] for p_ in parts], dtype=np.int8), sizes)
    n_ev = enc_idx.size
    # event time inside its encounter (whole seconds), then sort by patient, time, variable
    t0 = np.datetime64("2000-01-01T00:00:00", "s")
    st_s = (start.astype("datetime64[s]") - t0).astype(np.int64)
    span = (end - start).astype("timedelta64[s]").astype(np.int64)
    time_s = st_s[enc_idx] + np.floor(rng.random(n_ev) * span[enc_idx]).astype(np.int64)
    key = (pat[enc_idx].astype(np.int64) << 37) | (time_s << 6) | var.astype(np.int64)
    order = np.argsort(key)
    enc_idx, table, var, unit, value, dec, time_s = (
        a[order] for a in (enc_idx, table, var, unit, value, dec, time_s))
    # messy values on labs and vitals
    messy = (table < 2) & (rng.random(n_ev) < messy_rate)
    kind = rng.integers(0, 100, n_ev)
    pend = messy & (kind < 45)
    pad = messy & (kind >= 45) & (kind < 90)
    missing = messy & (kind >= 90)
    value_str = _value_strings(value, dec, var, var_names, pend, pad, missing)
    events = pd.DataFrame({
        "patient_id": take_str(ctx.pid, pat[enc_idx]),
        "encounter_id": enc_id[enc_idx],
        "time": (t0 + time_s.astype("timedelta64[s]")).astype("datetime64[ns]"),
        "table": take_str(("lab", "vital", "med"), table),
        "variable": take_str(var_names, var),
        "value": value_str,
        "unit": take_str(units, unit),
    })
    truth["n_messy"] = {"pending": int(pend.sum()), "padded": int(pad.sum()),
                        "empty": int(missing.sum())}
    return encounters, events, truth


def _value_strings(value, dec, var, var_names, pend, pad, missing):
    """Raw result strings: rounded numbers, censored '<5'/'>1000', then the messy ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # few distinct (rounded value, decimals) pairs: format those, then index into them
    scale = 10.0 ** dec
    key = np.rint(value * scale).astype(np.int64) * 4 + dec
    inv, uniq = pd.factorize(key)  # hash-based, no sort
    u_dec = uniq % 4
    u_val = (uniq // 4) / 10.0 ** u_dec
    s = pc.cast(pa.array(u_val), pa.string()).take(pa.array(inv))
    for name, (lod, uod) in _LIMITS.items():
        code = var_names.index(name)
        for lim, op, hit in ((lod, "<", None), (uod, ">", None)):
            if lim is None:
                continue
            hit = (var == code) & ((value < lim) if op == "<" else (value > lim))
            if hit.any():
                s = pc.replace_with_mask(s, pa.array(hit), pa.array([f"{op}{lim:g}"] * int(hit.sum())))
    if pend.any():
        s = pc.replace_with_mask(s, pa.array(pend), pa.array(["pending"] * int(pend.sum())))
    if pad.any():
        padded = pc.binary_join_element_wise("  ", s.filter(pa.array(pad)), " ", "")
        s = pc.replace_with_mask(s, pa.array(pad), padded)
    if missing.any():
        s = pc.replace_with_mask(s, pa.array(missing), pa.nulls(int(missing.sum()), pa.string()))
    return pd.arrays.ArrowStringArray(s)


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": str_array(np.array([], dtype=str)), "encounter_id": np.array([], np.int64),
        "time": np.array([], "datetime64[ns]"),
        **{c: str_array(np.array([], dtype=str)) for c in ("table", "variable", "value", "unit")},
    })
