"""The cohort table: index visits, leakage-safe as-of joins, labels and event times.

Rules stated once (each is a parameter; ``normfuse run`` sets the label and progression
ones from the study's ``[labels]`` section and ``[models] label_threshold``/``horizon_years``):

* **Index visits** (:func:`build_index_visits`): ``rule="first"`` takes each patient's
  first visit with an EDSS; ``"all"`` takes every such visit; ``min_followup_years``
  optionally requires that much follow-up after the index date.
* **What an index visit at time ``t`` may use** (:func:`asof_join`,
  :func:`build_cohort_table`). Dates without a time of day are midnight, so for an
  index visit on day ``D`` (``t`` = ``D`` 00:00):

  - *scans*: the most recent scan dated ``d <= t`` with ``scan_at_index=True`` (a scan
    dated ``D`` or earlier: an MRI acquired at the index visit counts as available),
    or ``d < t`` with the default ``scan_at_index=False`` (``D - 1`` or earlier), and
    in both cases ``t - d <= scan_window_days``; ``dev__scan_lag_days`` is ``t - d``.
    ``normfuse run`` uses ``scan_at_index=True``.
  - *EHR events* (``features.ehr``): only 4-hour windows whose *last* event is strictly
    before ``t`` (to the second), so an event dated ``D`` at any time of day is not
    used, nor is an earlier event sharing a window with it.
  - *notes* (``features.notes``): notes timed strictly before ``t`` (``D - 1`` or
    earlier for date-only notes).
  - *other dated tables* (:func:`asof_join`, ``extra``): rows dated ``d < t``
    (``allow_exact=True``: ``d <= t``), within ``window_days`` when given.
* **Milestone labels** (:func:`make_labels`): ``y_edss{thr}_{h}y = 1`` if a visit in
  ``(index_date, index_date + horizon]`` has EDSS ``>= thr`` (``inclusive=True``) or
  ``> thr``. Otherwise 0 if follow-up (the last visit with an EDSS) reaches the
  horizon; if it does not, ``short_followup="exclude"`` gives NaN and ``"negative"``
  gives 0. Patients already at the milestone at the index visit get NaN
  (``already_reached="exclude"``) or are labelled as above (``"keep"``).
* **Confirmed disability progression** (:func:`confirmed_progression`): baseline is
  the EDSS at the index visit (the last EDSS on or before the index date); the
  required increase is +1.5 from 0, +1.0 from 1.0-5.5 and +0.5 from >= 6.0
  (``deltas``); a visit reaching ``baseline + delta`` is the onset if the first visit
  at least ``confirm_days`` (default 182 days ~ 6 months) later also reaches it and
  (``sustained=True``) no visit in between falls below it. Time is onset minus index
  date in years (365.25 days); without an event, censoring at the last visit.
* **Event times** (:func:`time_to_event_table`): ``time_cdp/event_cdp``,
  ``time_relapse/event_relapse`` (first visit after the index date with
  ``relapse=True``) and ``time_edss{thr}/event_edss{thr}`` (first visit after the
  index date at the milestone), all in years from the index date; censored at the
  last visit after the index date. Rows without any follow-up visit get NaN times
  (counted and logged) so that survival fitters drop them visibly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from features._util import dropped, to_naive_datetime
from normfuse.checks import check_numeric, get_logger, require_columns, require_dataframe
from normfuse.contracts import DEVIATION_COUNTS, milestone_label
from normfuse.errors import ColumnContractError, InputFormatError

__all__ = [
    "EDSS_STEPS",
    "validate_visits",
    "build_index_visits",
    "make_labels",
    "confirmed_progression",
    "time_to_event_table",
    "asof_join",
    "build_cohort_table",
]

log = get_logger("features.cohort")

EDSS_STEPS = np.array([0.0, *np.arange(1.0, 10.01, 0.5)])
DEFAULT_DELTAS = ((0.0, 1.5), (1.0, 1.0), (6.0, 0.5))
_DAY = np.int64(86_400_000_000_000)
_YEAR_NS = 365.25 * 86400e9


# ------------------------------------------------------------------------------ visits
def validate_visits(visits: pd.DataFrame, who: str = "validate_visits") -> pd.DataFrame:
    """Check and normalise a visits table; return a sorted copy with a ``_row`` column.

    EDSS must lie on the scale 0, 1.0, 1.5, ..., 9.5, 10 (0.5 does not exist); a value
    off the scale raises naming its row. Missing EDSS is allowed (relapse-only visits).
    Exact duplicate rows are dropped and counted; two different EDSS values for the
    same patient and date raise. ``relapse`` is optional; when present it must be
    boolean-like (True/False/1/0).
    """
    require_dataframe(visits, who, "visits")
    require_columns(visits, ["patient_id", "visit_date", "edss"], who)
    v = pd.DataFrame({"patient_id": visits["patient_id"].to_numpy(),
                      "visit_date": to_naive_datetime(visits["visit_date"], who, "visit_date").to_numpy()},
                     index=visits.index)
    # non-numeric cells and +-inf raise naming the row; NaN (no EDSS at this visit) passes
    e = check_numeric(visits, ["edss"], who, allow_nan=True)[:, 0]
    on_scale = np.isnan(e) | np.isin(np.round(e * 2) / 2, EDSS_STEPS) & (np.abs(e * 2 - np.round(e * 2)) < 1e-9)
    if not on_scale.all():
        i = int(np.flatnonzero(~on_scale)[0])
        raise ColumnContractError(
            f"{who}: EDSS {float(e[i])!r} at row {visits.index[i]!r} is not on the EDSS scale "
            "(0, 1.0, 1.5, ..., 9.5, 10; 0.5 does not exist). Correct it or set it to NaN."
        )
    v["edss"] = e
    if "relapse" in visits.columns:
        r = visits["relapse"]
        if pd.api.types.is_bool_dtype(r.dtype):
            rb = r.to_numpy(dtype=bool)
        else:
            rs = r.astype("string").str.strip().str.lower()
            ok = rs.isin(["true", "false", "1", "0", "1.0", "0.0"]) | rs.isna()
            if not ok.all():
                i = int(np.flatnonzero(~ok.to_numpy())[0])
                raise ColumnContractError(
                    f"{who}: column 'relapse' must be boolean; row {visits.index[i]!r} holds "
                    f"{r.iloc[i]!r}. Use True/False."
                )
            rb = rs.isin(["true", "1", "1.0"]).to_numpy(dtype=bool)
        v["relapse"] = rb
    nat = v["visit_date"].isna() | v["patient_id"].isna()
    dropped(int(nat.sum()), "visits", "missing patient_id or visit_date", logger=log)
    v = v.loc[~nat.to_numpy()]
    dup = v.duplicated(keep="first")
    dropped(int(dup.sum()), "visits", "exact duplicates of another visit", logger=log)
    v = v.loc[~dup.to_numpy()]
    sub = v.dropna(subset=["edss"])
    conflict = sub.duplicated(["patient_id", "visit_date"], keep=False)
    if conflict.any():
        r0 = sub.loc[conflict.to_numpy()].iloc[0]
        vals = sub.loc[conflict.to_numpy() & (sub["patient_id"] == r0["patient_id"]).to_numpy()
                       & (sub["visit_date"] == r0["visit_date"]).to_numpy(), "edss"].tolist()
        raise ColumnContractError(
            f"{who}: patient {r0['patient_id']!r} has different EDSS values {vals} on "
            f"{r0['visit_date'].date()} ({int(conflict.sum())} conflicting rows in all). Keep "
            "one assessment per day, e.g. visits.sort_values(...).drop_duplicates(['patient_id', "
            "'visit_date'], keep='last')."
        )
    v = v.assign(_row=np.arange(len(v)))
    return v.sort_values(["patient_id", "visit_date"], kind="stable")


def _index_frame(index: pd.DataFrame, who: str) -> pd.DataFrame:
    require_dataframe(index, who, "index")
    require_columns(index, ["patient_id", "index_date"], who,
                    hint="Build it with build_index_visits(visits).")
    d = to_naive_datetime(index["index_date"], who, "index_date")
    if d.isna().any():
        i = int(np.flatnonzero(d.isna().to_numpy())[0])
        raise InputFormatError(f"{who}: index_date missing at row {index.index[i]!r}.")
    return pd.DataFrame({"patient_id": index["patient_id"].to_numpy(), "index_date": d.to_numpy(),
                         "_q": np.arange(len(index))})


def build_index_visits(
    visits: pd.DataFrame,
    rule: Literal["first", "all"] = "first",
    *,
    min_followup_years: float | None = None,
) -> pd.DataFrame:
    """Index visits: one row per (patient, index date) with the EDSS at that visit.

    Parameters
    ----------
    visits : visits table (``patient_id``, ``visit_date``, ``edss``, ...).
    rule : ``"first"`` (first visit with an EDSS per patient) or ``"all"``.
    min_followup_years : keep an index visit only if a later EDSS visit is at least
        this many years after it (dropped ones are counted and logged).

    Returns
    -------
    DataFrame with ``patient_id``, ``index_date``, ``edss_index``, keeping the index
    labels of the chosen visit rows, sorted by patient and date.

    Examples
    --------
    >>> v = pd.DataFrame({"patient_id": [1, 1, 2], "edss": [2.0, 3.0, 1.0],
    ...     "visit_date": pd.to_datetime(["2020-01-01", "2021-01-01", "2020-06-01"])})
    >>> build_index_visits(v)["index_date"].dt.year.tolist()
    [2020, 2020]
    """
    who = "build_index_visits"
    if rule not in ("first", "all"):
        raise ValueError(f"{who}: got rule={rule!r}; expected 'first' or 'all'.")
    v = validate_visits(visits, who)
    n_na = int(v["edss"].isna().sum())
    if n_na:
        log.info("%s: %d visits without EDSS cannot be index visits", who, n_na)
    v = v.dropna(subset=["edss"])
    full = v.groupby("patient_id", sort=False)["visit_date"].max()
    if rule == "first":
        v = v.loc[~v["patient_id"].duplicated(keep="first").to_numpy()]
    out = pd.DataFrame({"patient_id": v["patient_id"].to_numpy(),
                        "index_date": v["visit_date"].to_numpy(), "edss_index": v["edss"].to_numpy()},
                       index=v.index)
    if min_followup_years is not None:
        last = full.reindex(out["patient_id"]).to_numpy()
        fu = (last - out["index_date"].to_numpy()) / np.timedelta64(1, "D") / 365.25
        keep = fu >= float(min_followup_years)
        dropped(int((~keep).sum()), "index visits",
                f"less than {min_followup_years} years of follow-up", warn=False, logger=log)
        out = out.loc[keep]
    return out


def _pairs(index: pd.DataFrame, v: pd.DataFrame) -> pd.DataFrame:
    """All (index row, visit) pairs of the same patient, sorted by index row then date."""
    q = index[["patient_id", "index_date", "_q"]]
    m = q.merge(v[["patient_id", "visit_date", "edss", *(["relapse"] if "relapse" in v else [])]],
                on="patient_id", how="inner", sort=False)
    return m.sort_values(["_q", "visit_date"], kind="stable").reset_index(drop=True)


def _baseline(index, v):
    """EDSS at the index visit: last EDSS on or before the index date."""
    q = index.sort_values("index_date", kind="stable")
    ve = v.dropna(subset=["edss"]).sort_values("visit_date", kind="stable")
    m = pd.merge_asof(q, ve[["patient_id", "visit_date", "edss"]], left_on="index_date",
                      right_on="visit_date", by="patient_id", direction="backward",
                      allow_exact_matches=True)
    out = np.full(len(index), np.nan)
    out[m["_q"].to_numpy()] = m["edss"].to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _reached(edss, thr, inclusive):
    return edss >= thr if inclusive else edss > thr


def make_labels(
    visits: pd.DataFrame,
    index: pd.DataFrame,
    thresholds: Sequence[float] = (4, 6, 7),
    horizon_years: float = 3,
    *,
    inclusive: bool = True,
    short_followup: Literal["exclude", "negative"] = "exclude",
    already_reached: Literal["exclude", "keep"] = "exclude",
) -> pd.DataFrame:
    """EDSS milestone labels ``y_edss{thr}_{h}y`` per index row (1, 0 or NaN).

    See the module docstring for the rule. Returns a float DataFrame indexed like
    ``index`` with one column per threshold (``contracts.milestone_label``).

    Examples
    --------
    >>> v = pd.DataFrame({"patient_id": 1, "edss": [2.0, 4.0, 3.0],
    ...     "visit_date": pd.to_datetime(["2020-01-01", "2021-01-01", "2024-01-01"])})
    >>> make_labels(v, build_index_visits(v), thresholds=(4,))["y_edss4_3y"].tolist()
    [1.0]
    """
    who = "make_labels"
    if short_followup not in ("exclude", "negative"):
        raise ValueError(f"{who}: short_followup={short_followup!r}; expected 'exclude' or 'negative'.")
    if already_reached not in ("exclude", "keep"):
        raise ValueError(f"{who}: already_reached={already_reached!r}; expected 'exclude' or 'keep'.")
    if not horizon_years > 0:
        raise ValueError(f"{who}: horizon_years={horizon_years!r} must be positive.")
    v = validate_visits(visits, who)
    q = _index_frame(index, who)
    base = _baseline(q, v)
    p = _pairs(q, v.dropna(subset=["edss"]))
    after = p["visit_date"].to_numpy() > p["index_date"].to_numpy()
    horizon = pd.Timedelta(days=365.25 * float(horizon_years)).value
    dt = _ns_diff(p["visit_date"], p["index_date"])
    within = after & (dt <= horizon)
    qi = p["_q"].to_numpy()
    n = len(q)
    last_fu = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_fu, qi[after], dt[after])
    full_fu = last_fu >= horizon
    out = {}
    for thr in thresholds:
        hit = np.zeros(n, dtype=bool)
        np.logical_or.at(hit, qi[within], _reached(p["edss"].to_numpy()[within], thr, inclusive))
        y = np.where(hit, 1.0, np.where(full_fu | (short_followup == "negative"), 0.0, np.nan))
        if already_reached == "exclude":
            y = np.where(_reached(base, thr, inclusive), np.nan, y)
        out[milestone_label(thr, horizon_years)] = y
    res = pd.DataFrame(out, index=index.index)
    n_short = int((~full_fu).sum())
    if n_short:
        log.info("%s: %d of %d index rows have < %g years of follow-up (rule: %s)",
                 who, n_short, n, horizon_years, short_followup)
    return res


def _ns_diff(a: pd.Series, b: pd.Series) -> np.ndarray:
    """``a - b`` in int64 nanoseconds."""
    return a.to_numpy(dtype="datetime64[ns]").view(np.int64) - b.to_numpy(dtype="datetime64[ns]").view(np.int64)


# ------------------------------------------------------------------------ progression
def _delta(base, deltas):
    lows = np.array([d[0] for d in deltas], dtype=float)
    incs = np.array([d[1] for d in deltas], dtype=float)
    o = np.argsort(lows)
    lows, incs = lows[o], incs[o]
    k = np.searchsorted(lows, base, side="right") - 1
    return np.where(k >= 0, incs[np.clip(k, 0, None)], np.nan)


def confirmed_progression(
    visits: pd.DataFrame,
    index: pd.DataFrame,
    *,
    confirm_days: float = 182,
    deltas: Sequence[tuple[float, float]] = DEFAULT_DELTAS,
    sustained: bool = True,
) -> pd.DataFrame:
    """Confirmed disability progression (CDP) per index row.

    Parameters
    ----------
    visits : visits table.
    index : index table (``patient_id``, ``index_date``).
    confirm_days : minimum days between onset and confirming visit (182 ~ 6 months).
    deltas : ``(lowest baseline, required increase)`` pairs; default
        +1.5 from 0, +1.0 from 1.0, +0.5 from 6.0.
    sustained : also require every visit between onset and confirmation to stay at
        or above the target.

    Returns
    -------
    DataFrame indexed like ``index``: ``baseline_edss``, ``event_cdp`` (0/1),
    ``time_cdp`` (years from index to onset, or to the last visit when censored;
    NaN without follow-up or baseline), ``cdp_onset`` (date or NaT).

    Examples
    --------
    >>> v = pd.DataFrame({"patient_id": 1, "edss": [2.0, 3.0, 3.5, 2.0],
    ...     "visit_date": pd.to_datetime(["2020-01-01", "2021-01-01", "2021-09-01", "2023-01-01"])})
    >>> r = confirmed_progression(v, build_index_visits(v))
    >>> int(r["event_cdp"].iloc[0]), round(float(r["time_cdp"].iloc[0]), 3)
    (1, 1.002)
    """
    who = "confirmed_progression"
    v = validate_visits(visits, who).dropna(subset=["edss"])
    q = _index_frame(index, who)
    base = _baseline(q, v)
    target = base + _delta(base, deltas)
    p = _pairs(q, v)
    p = p.loc[(p["visit_date"] > p["index_date"]).to_numpy()].reset_index(drop=True)
    qi = p["_q"].to_numpy()
    t = p["visit_date"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ok = p["edss"].to_numpy() >= target[qi] - 1e-9
    m = len(p)
    # first visit of the same index row at least confirm_days later
    t_rel = t - t.min() if m else t
    key = qi.astype(np.int64) * (np.int64(1) << 40) + t_rel // 1_000_000_000
    want = qi.astype(np.int64) * (np.int64(1) << 40) + (t_rel + int(confirm_days * _DAY)) // 1_000_000_000
    j = np.searchsorted(key, want, side="left")
    has_j = j < m
    jj = np.where(has_j, j, 0)
    has_j &= (qi[jj] == qi) if m else has_j
    bad_cum = np.concatenate([[0], np.cumsum(~ok)])
    if sustained:
        # no visit in (i, j] below target: count of not-ok in positions i+1..j is 0
        stays = bad_cum[jj + 1] - bad_cum[np.arange(m) + 1] == 0
    else:
        stays = ok[jj]
    conf = ok & has_j & stays
    n = len(q)
    onset = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(onset, qi[conf], t[conf])
    event = onset < np.iinfo(np.int64).max
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, qi, t)
    idx_t = q["index_date"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    end = np.where(event, onset, last)
    time = (end - idx_t) / _YEAR_NS
    no_fu = last == np.iinfo(np.int64).min
    no_base = np.isnan(base)
    time = np.where(no_fu | no_base, np.nan, time)
    event = event & ~no_base
    dropped(int((no_fu | no_base).sum()), "index rows from CDP (time NaN)",
            "no EDSS visit after the index date, or no EDSS on/before it", warn=False, logger=log)
    onset_dt = np.where(event, onset, np.iinfo(np.int64).min).view("datetime64[ns]")
    return pd.DataFrame({"baseline_edss": base, "event_cdp": event.astype(np.int64),
                         "time_cdp": time, "cdp_onset": onset_dt}, index=index.index)


def _first_after(p, n, cond):
    """Per index row: first date (ns) after the index date where ``cond`` holds, and last date."""
    qi = p["_q"].to_numpy()
    t = p["visit_date"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, qi[cond], t[cond])
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, qi, t)
    return first, last


def time_to_event_table(
    visits: pd.DataFrame,
    index: pd.DataFrame,
    *,
    milestones: Sequence[float] = (4, 6, 7),
    inclusive: bool = True,
    confirm_days: float = 182,
    deltas: Sequence[tuple[float, float]] = DEFAULT_DELTAS,
    already_reached: Literal["exclude", "keep"] = "exclude",
    sustained: bool = True,
) -> pd.DataFrame:
    """Event times in years from the index date for CDP, first relapse and milestones.

    ``confirm_days``, ``deltas`` and ``sustained`` go to :func:`confirmed_progression`;
    ``inclusive`` (EDSS ``>= thr`` or ``> thr``) and ``already_reached`` define the
    milestones as in :func:`make_labels`.

    Returns a DataFrame indexed like ``index`` with ``time_cdp``, ``event_cdp``,
    ``time_relapse``, ``event_relapse`` (when visits have ``relapse``) and
    ``time_edss{thr}``, ``event_edss{thr}`` per milestone. Rows already at a milestone
    at the index visit get NaN time for it with ``already_reached="exclude"``.
    """
    who = "time_to_event_table"
    if already_reached not in ("exclude", "keep"):
        raise ValueError(f"{who}: already_reached={already_reached!r}; expected 'exclude' or 'keep'.")
    cdp = confirmed_progression(visits, index, confirm_days=confirm_days, deltas=deltas,
                                sustained=sustained)
    v = validate_visits(visits, who)
    q = _index_frame(index, who)
    n = len(q)
    idx_t = q["index_date"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    out = {"time_cdp": cdp["time_cdp"].to_numpy(), "event_cdp": cdp["event_cdp"].to_numpy()}
    p = _pairs(q, v)
    p = p.loc[(p["visit_date"] > p["index_date"]).to_numpy()].reset_index(drop=True)
    if "relapse" in v.columns:
        first, last = _first_after(p, n, p["relapse"].to_numpy(dtype=bool))
        ev = first < np.iinfo(np.int64).max
        tt = (np.where(ev, first, last) - idx_t) / _YEAR_NS
        out["time_relapse"] = np.where(last == np.iinfo(np.int64).min, np.nan, tt)
        out["event_relapse"] = ev.astype(np.int64)
    else:
        log.info("%s: visits have no 'relapse' column; no relapse times", who)
    pe = p.dropna(subset=["edss"]).reset_index(drop=True)
    base = _baseline(q, v.dropna(subset=["edss"]))
    for thr in milestones:
        first, last = _first_after(pe, n, _reached(pe["edss"].to_numpy(), thr, inclusive))
        ev = first < np.iinfo(np.int64).max
        tt = (np.where(ev, first, last) - idx_t) / _YEAR_NS
        tt = np.where(last == np.iinfo(np.int64).min, np.nan, tt)
        if already_reached == "exclude":
            pre = _reached(base, thr, inclusive)
            tt = np.where(pre, np.nan, tt)
            ev = ev & ~pre
        name = f"{thr:g}".replace(".", "p")
        out[f"time_edss{name}"] = tt
        out[f"event_edss{name}"] = ev.astype(np.int64)
    return pd.DataFrame(out, index=index.index)


# ------------------------------------------------------------------------ as-of joins
def asof_join(
    index: pd.DataFrame,
    table: pd.DataFrame,
    *,
    time_col: str,
    by: str = "patient_id",
    columns: Sequence[str] | None = None,
    prefix: str = "",
    window_days: float | None = None,
    lag_col: str | None = None,
    allow_exact: bool = False,
) -> pd.DataFrame:
    """For each index row, the latest ``table`` row of the same ``by`` dated strictly before ``index_date``.

    Parameters
    ----------
    index : DataFrame with ``by`` and ``index_date``.
    table : feature rows with ``by`` and ``time_col``.
    time_col : date column of ``table``.
    columns : columns to bring (default: all numeric columns but keys).
    prefix : added to column names that do not already start with it.
    window_days : only rows with ``index_date - time <= window_days`` qualify.
    lag_col : if given, also return the lag in days under this name.
    allow_exact : also use a row dated exactly at ``index_date`` (``time <= index_date``;
        for date-only dates: the same day). Default: strictly before.

    Returns
    -------
    DataFrame indexed like ``index`` (same order), NaN where nothing qualifies.
    """
    who = "asof_join"
    require_dataframe(table, who, "table")
    require_columns(table, [by, time_col], who)
    q = _index_frame(index.rename(columns={by: "patient_id"}) if by != "patient_id" else index, who)
    if columns is None:
        columns = [c for c in table.columns if c not in (by, time_col)
                   and pd.api.types.is_numeric_dtype(table[c].dtype)
                   and not pd.api.types.is_bool_dtype(table[c].dtype)]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ColumnContractError(f"{who}: columns {missing} not in the table.")
    tt = to_naive_datetime(table[time_col], who, time_col)
    right = pd.DataFrame({"patient_id": table[by].to_numpy(), "_t": tt.to_numpy()})
    for c in columns:
        right[c] = table[c].to_numpy()
    n_nat = int(right["_t"].isna().sum())
    dropped(n_nat, f"rows of the {time_col!r} table", f"missing {time_col}", warn=False, logger=log)
    right = right.dropna(subset=["_t"]).sort_values("_t", kind="stable")
    left = q.sort_values("index_date", kind="stable")
    try:
        m = pd.merge_asof(left, right, left_on="index_date", right_on="_t", by="patient_id",
                          direction="backward", allow_exact_matches=bool(allow_exact),
                          tolerance=None if window_days is None else pd.Timedelta(days=float(window_days)))
    except pd.errors.MergeError as exc:
        raise ColumnContractError(
            f"{who}: cannot join on {by!r}: {exc}. Make the id column the same type in both "
            "tables, e.g. .astype(str)."
        ) from exc
    m = m.sort_values("_q")
    names = {c: (c if (not prefix or str(c).startswith(prefix)) else f"{prefix}{c}") for c in columns}
    out = pd.DataFrame({names[c]: m[c].to_numpy() for c in columns}, index=index.index)
    if lag_col:
        out[lag_col] = (m["index_date"] - m["_t"]).dt.total_seconds().to_numpy() / 86400.0
    return out


def build_cohort_table(
    index: pd.DataFrame,
    *,
    deviations: pd.DataFrame | None = None,
    scan_date_col: str = "scan_date",
    scan_window_days: float = 365,
    scan_at_index: bool = False,
    ehr_summaries: pd.DataFrame | None = None,
    note_embeddings: pd.DataFrame | None = None,
    demographics: pd.DataFrame | None = None,
    labels: Sequence[pd.DataFrame] | pd.DataFrame | None = None,
    extra: Mapping[str, tuple[pd.DataFrame, str]] | None = None,
) -> pd.DataFrame:
    """Assemble the analysis table: keys, prefixed features, labels and event times.

    Parameters
    ----------
    index : ``patient_id``, ``index_date`` (e.g. from :func:`build_index_visits`).
    deviations : normative deviations (``subject_id`` = patient id, a scan date column
        ``scan_date_col``, Z columns, ``n_crit*``): the most recent scan dated before
        the index date (``scan_at_index=True``: at or before it) and at most
        ``scan_window_days`` days before it; columns get ``dev__`` and a
        ``dev__scan_lag_days`` column (index date minus scan date, days) is added.
        Index rows without such a scan get NaN (counted and logged).
    scan_at_index : also use a scan dated exactly at the index date (date-only dates:
        a scan on the index visit's day), as ``normfuse run`` does. Default: strictly
        before, like every other dated input.
    ehr_summaries, note_embeddings : outputs of ``EHRFeaturizer.summaries`` and
        ``NoteEmbedder.transform`` on the same ``index`` (joined on index labels;
        columns already prefixed ``ehr__``/``txt__``).
    demographics : one row per ``patient_id`` with static columns (``demo__`` prefix;
        numeric, or categorical which is one-hot encoded).
    labels : DataFrames indexed like ``index`` (``make_labels``, ``time_to_event_table``).
    extra : ``{prefix: (table, time_col)}`` further dated tables joined as of the index
        date (strictly before).

    Returns
    -------
    DataFrame indexed like ``index``: ``patient_id``, ``index_date``, features, labels.
    """
    who = "build_cohort_table"
    q = _index_frame(index, who)
    dup = q.duplicated(["patient_id", "index_date"])
    if dup.any():
        r = q.loc[dup.to_numpy()].iloc[0]
        raise ColumnContractError(
            f"{who}: index lists patient {r['patient_id']!r} at {r['index_date']} more than "
            "once. Drop duplicate index rows first (index.drop_duplicates())."
        )
    parts = [pd.DataFrame({"patient_id": q["patient_id"].to_numpy(),
                           "index_date": q["index_date"].to_numpy()}, index=index.index)]
    if deviations is not None:
        require_columns(deviations, ["subject_id", scan_date_col], who,
                        hint=f"Deviations need the scan date in {scan_date_col!r} "
                             "(pass scan_date_col=...).")
        skip = {"subject_id", "session_id", scan_date_col, "age", "site", "sex"}
        cols = [c for c in deviations.columns if c not in skip
                and pd.api.types.is_numeric_dtype(deviations[c].dtype)]
        d = asof_join(index.assign(patient_id=q["patient_id"].to_numpy()),
                      deviations.rename(columns={"subject_id": "patient_id"}),
                      time_col=scan_date_col, columns=cols, prefix="dev__",
                      window_days=scan_window_days, lag_col="dev__scan_lag_days",
                      allow_exact=scan_at_index)
        nomri = int(d["dev__scan_lag_days"].isna().sum())
        if nomri:
            log.warning("%s: %d of %d index rows have no scan in the %g days %s the index "
                        "date; their dev__ features are NaN", who, nomri, len(q), scan_window_days,
                        "up to and including" if scan_at_index else "before")
        missing_counts = [c for c in DEVIATION_COUNTS if c not in deviations.columns]
        if missing_counts:
            log.info("%s: deviations lack %s", who, missing_counts)
        parts.append(d)
    for name, tab, prefix in (("ehr_summaries", ehr_summaries, "ehr__"),
                              ("note_embeddings", note_embeddings, "txt__")):
        if tab is None:
            continue
        require_dataframe(tab, who, name)
        if not tab.index.equals(index.index):
            raise ColumnContractError(
                f"{who}: {name} must be indexed like index (compute it with the same index "
                f"table); {int((~tab.index.isin(index.index)).sum())} labels differ, lengths "
                f"{len(tab)} vs {len(index)}."
            )
        feats = tab.drop(columns=[c for c in ("patient_id", "index_date") if c in tab.columns])
        feats = feats.rename(columns={c: c if str(c).startswith(prefix) else f"{prefix}{c}"
                                      for c in feats.columns})
        parts.append(feats)
        nofeat = int(feats.isna().all(axis=1).sum())
        if nofeat:
            log.warning("%s: %d index rows have no %s features", who, nofeat, name)
    if demographics is not None:
        require_columns(demographics, ["patient_id"], who)
        dd = demographics["patient_id"].duplicated()
        if dd.any():
            raise ColumnContractError(
                f"{who}: demographics list patient {demographics['patient_id'][dd].iloc[0]!r} "
                "more than once; keep one row per patient."
            )
        demo = demographics.set_index("patient_id")
        demo = pd.get_dummies(demo, dtype=float, prefix_sep="=")
        demo.columns = [c if str(c).startswith("demo__") else f"demo__{c}" for c in demo.columns]
        got = demo.reindex(q["patient_id"].to_numpy())
        got.index = index.index
        n_no = int(got.isna().all(axis=1).sum())
        if n_no:
            log.warning("%s: %d index rows have no demographics", who, n_no)
        parts.append(got)
    for prefix, (tab, tcol) in (extra or {}).items():
        parts.append(asof_join(index.assign(patient_id=q["patient_id"].to_numpy()), tab,
                               time_col=tcol, prefix=prefix))
    if labels is not None:
        for lab in ([labels] if isinstance(labels, pd.DataFrame) else list(labels)):
            if not lab.index.equals(index.index):
                raise ColumnContractError(f"{who}: labels must be indexed like index.")
            parts.append(lab)
    out = pd.concat(parts, axis=1)
    dupcols = out.columns[out.columns.duplicated()].tolist()
    if dupcols:
        raise ColumnContractError(f"{who}: column names collide across inputs: {dupcols[:10]}.")
    return out
