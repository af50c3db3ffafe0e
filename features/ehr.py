"""EHR event tables -> 4-hour windows within encounters -> sequences and summaries.

Input contract (``normfuse.contracts.EVENT_COLUMNS``): one row per event with
``patient_id``, ``encounter_id``, ``time``, ``table`` (``lab``/``vital``/``med``),
``variable`` and ``value``; ``unit`` is optional and passed over.

Encounters
    Optionally a separate table with ``encounter_id``, ``patient_id``, ``start``,
    ``end`` (one row per encounter). When given, windows start at the encounter's
    ``start``; events whose encounter is unknown, whose patient differs from the
    encounter's, or whose time lies outside ``[start, end]`` are dropped, counted and
    logged. Without it an encounter spans its own first to last event.

Values (:func:`parse_values`)
    Numbers, also as strings with spaces (``" 7.2 "``), are used as they are.
    Censored results ``"<5"``, ``"<=5"``, ``">1000"`` become their bound with
    ``censored="bound"`` (default) or NaN with ``censored="nan"``; either way they are
    counted and logged. Anything else (``"pending"``, ``"see note"``) becomes NaN and
    is counted and logged. Events whose value is NaN are dropped (counted).

Windows (:func:`make_windows`)
    ``window = floor((time - encounter_start) / width)`` keyed by encounter, so a
    window never spans two encounters; each cell is the mean of the variable's events
    in that window; windows with no value at all are dropped. A window's ``time`` is
    the time of its *last* event, so "window time < index date" guarantees every event
    in it precedes the index date (no leakage through a window that straddles it).

:class:`EHRFeaturizer` learns, on training patients only, which variables to keep
(seen in at least ``min_patient_frac`` of training patients) and their min-max ranges;
it turns any patients' events into scaled windows, padded per-patient sequences for
the fusion network (:meth:`EHRFeaturizer.sequences`) and per-index-date summaries
(last, mean, min, max, slope per year, count over look-back windows) for XGBoost
(:meth:`EHRFeaturizer.summaries`). Everything is vectorised with numpy (no loop per
patient, encounter or window).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from features._util import dropped, ns, parse_offset, to_naive_datetime
from normfuse import persist
from normfuse.checks import check_is_fitted, get_logger, require_columns, require_dataframe
from normfuse.contracts import EVENT_COLUMNS, EVENT_TABLES
from normfuse.errors import ColumnContractError, InputFormatError

__all__ = ["parse_values", "make_windows", "EHRFeaturizer", "EHRSequences", "SUMMARY_STATS"]

log = get_logger("features.ehr")

SUMMARY_STATS = ("last", "mean", "min", "max", "slope", "count")
_CENSORED_RE = r"^(<=|>=|<|>|≤|≥)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$"
_NS_PER_YEAR = 365.25 * 86400e9
_SHIFT = np.int64(34)  # seconds fit in 34 bits for ~540 years
#: Levels of the data notices (censored values, dropped events/variables).
_LEVELS = {"warning": logging.WARNING, "debug": logging.DEBUG}


def _check_level(log_level, who: str) -> int:
    if log_level not in _LEVELS:
        raise ValueError(f"{who}: got log_level={log_level!r}; expected 'warning' or 'debug'.")
    return _LEVELS[log_level]


def _dropped(n: int, what: str, reason: str, level: str) -> None:
    """Count and log dropped rows: at WARNING (plus a DataDroppedWarning), or DEBUG for a
    refit that repeats a notice already given (e.g. per cross-validation fold)."""
    if level == "warning":
        dropped(n, what, reason, logger=log)
    elif n:
        log.debug("dropped %d %s: %s", n, what, reason)


# ----------------------------------------------------------------------------- values
def parse_values(
    values: pd.Series, *, censored: Literal["bound", "nan"] = "bound", who: str = "parse_values",
    log_level: Literal["warning", "debug"] = "warning",
) -> tuple[np.ndarray, np.ndarray]:
    """Parse raw event values into floats and a censoring flag.

    Parameters
    ----------
    values : Series
        Raw values: numbers or strings such as ``" 7.2 "``, ``"<5"``, ``">1000"``,
        ``"pending"``.
    censored : {"bound", "nan"}
        ``"bound"``: ``"<5"`` -> 5.0 (flag -1), ``">1000"`` -> 1000.0 (flag +1);
        ``"nan"``: censored values become NaN (flag kept).
    who : str
        Caller name used in log messages.
    log_level : {"warning", "debug"}
        Level of the notices on non-numeric and censored values (counts and examples).

    Returns
    -------
    value : ndarray of float64
    flag : ndarray of int8
        -1 left-censored (``<``), +1 right-censored (``>``), 0 otherwise.

    Examples
    --------
    >>> v, f = parse_values(pd.Series([" 7.2 ", "<5", ">1000", "pending", 3]))
    >>> v.tolist(), f.tolist()
    ([7.2, 5.0, 1000.0, nan, 3.0], [0, -1, 1, 0, 0])
    """
    if censored not in ("bound", "nan"):
        raise ValueError(f"{who}: got censored={censored!r}; expected 'bound' or 'nan'.")
    level = _check_level(log_level, who)
    n = len(values)
    flag = np.zeros(n, dtype=np.int8)
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return np.array(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64, copy=True), flag
    num = pd.to_numeric(values, errors="coerce")
    out = np.array(num.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64, copy=True)
    rest = np.flatnonzero(np.isnan(out) & values.notna().to_numpy())
    if rest.size:
        s = values.iloc[rest].astype("string").str.strip()
        num2 = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = ~np.isnan(num2)
        out[rest[ok]] = num2[ok]
        rest = rest[~ok]
        s = s[~ok]
    n_lo = n_hi = n_bad = 0
    if rest.size:
        ext = s.str.extract(_CENSORED_RE)
        op = ext[0].to_numpy(dtype=object, na_value=None)
        bound = pd.to_numeric(ext[1], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        is_c = ~np.isnan(bound)
        lo = is_c & np.isin(op, ["<", "<=", "≤"])
        hi = is_c & ~lo
        flag[rest[lo]] = -1
        flag[rest[hi]] = 1
        if censored == "bound":
            out[rest[is_c]] = bound[is_c]
        n_lo, n_hi = int(lo.sum()), int(hi.sum())
        n_bad = int((~is_c & s.notna().to_numpy() & (s != "").fillna(False).to_numpy()).sum())
        if n_bad:
            shown = s[~is_c].dropna()
            examples = pd.unique(shown[shown != ""])[:5].tolist()
            log.log(level, "%s: %d non-numeric values set to NaN (e.g. %s)", who, n_bad,
                    examples)
    if n_lo or n_hi:
        log.log(level,
            "%s: %d left-censored ('<x') and %d right-censored ('>x') values %s",
            who, n_lo, n_hi, "set to their bound" if censored == "bound" else "set to NaN",
        )
    return out, flag


# ----------------------------------------------------------------------------- windows
class _Win:
    """Internal windows: rows sorted by (patient code, time); values as sparse cells.

    A cell is one (window row, variable) pair with at least one event; its value is
    the mean of those events. Cells are sorted by (row, variable).
    """

    def __init__(self, patients, pat, encounter, window, start, time, crow, cvar, cval, variables):
        self.patients = patients  # patient labels, code -> label
        self.pat = pat  # int64 patient code per row
        self.encounter = encounter  # encounter label per row
        self.window = window  # int64 window number inside the encounter
        self.start = start  # int64 ns window start
        self.time = time  # int64 ns time of the last event in the window
        self.crow, self.cvar, self.cval = crow, cvar, cval
        self.variables = list(variables)

    @property
    def n_rows(self) -> int:
        return len(self.pat)

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(rows, variables) float64 matrix, NaN where unobserved."""
        V = len(self.variables)
        if rows is None:
            W = np.full((self.n_rows, V), np.nan)
            W[self.crow, self.cvar] = self.cval
            return W
        look = np.full(self.n_rows, -1, dtype=np.int64)
        look[rows] = np.arange(len(rows))
        W = np.full((len(rows), V), np.nan)
        sel = look[self.crow] >= 0
        W[look[self.crow[sel]], self.cvar[sel]] = self.cval[sel]
        return W

    def select_variables(self, variables: Sequence[str]) -> _Win:
        """Keep/reorder variables (unknown ones become empty); drop no rows."""
        pos = {v: j for j, v in enumerate(self.variables)}
        remap = np.full(max(len(self.variables), 1), -1, dtype=np.int64)
        for j, v in enumerate(variables):
            if v in pos:
                remap[pos[v]] = j
        nv = remap[self.cvar] if len(self.cvar) else self.cvar
        keep = nv >= 0
        order = np.lexsort((nv[keep], self.crow[keep]))
        return _Win(self.patients, self.pat, self.encounter, self.window, self.start, self.time,
                    self.crow[keep][order], nv[keep][order], self.cval[keep][order], variables)


def _codes(col: pd.Series, who: str, name: str, *, lower: bool = False):
    """Factorize a label column once, cleaning only the distinct values (fast on 10 M rows)."""
    codes, uniq = pd.factorize(col, sort=False, use_na_sentinel=True)
    labels = pd.Series(uniq, dtype=object)
    if len(labels) and not pd.api.types.is_numeric_dtype(pd.Series(uniq).dtype):
        s = labels.astype("string").str.strip()
        if lower:
            s = s.str.lower()
        s = s.mask(s == "")
        clean, inv = pd.factorize(s, sort=True)
        new = np.append(clean, -1)[np.where(codes >= 0, codes, len(clean))] if len(codes) else codes
        return new.astype(np.int64), np.asarray(inv, dtype=object)
    order = np.argsort(np.asarray(uniq)) if len(uniq) else np.zeros(0, dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    new = np.where(codes >= 0, rank[np.where(codes >= 0, codes, 0)] if len(rank) else codes, -1)
    return new.astype(np.int64), np.asarray(uniq, dtype=object)[order]


def _prepare_events(events, encounters, who, censored, level="warning"):
    """Validate events; return integer-coded arrays of the usable events."""
    require_dataframe(events, who, "events")
    require_columns(
        events, list(EVENT_COLUMNS), who,
        hint="Events need one row per measurement: rename your columns to these names.",
    )
    n0 = len(events)
    tcode, tabs = _codes(events["table"], who, "table", lower=True)
    unknown = [t for t in tabs if t not in EVENT_TABLES]
    if unknown:
        bad = np.isin(tcode, [i for i, t in enumerate(tabs) if t not in EVENT_TABLES])
        counts = events.loc[bad, "table"].value_counts().head(10).to_dict()
        raise ColumnContractError(
            f"{who}: column 'table' holds unknown event tables {counts} (value: rows); "
            f"expected one of {list(EVENT_TABLES)}. Map them, e.g. "
            "events.assign(table=events['table'].replace({'labs': 'lab'})), or drop them."
        )
    t = ns(to_naive_datetime(events["time"], who, "time").to_numpy())
    nat = t == np.iinfo(np.int64).min
    value, flag = parse_values(events["value"], censored=censored, who=who, log_level=level)
    pcode, patients = _codes(events["patient_id"], who, "patient_id")
    ecode, encs = pd.factorize(events["encounter_id"], sort=False)
    vcode, variables = _codes(events["variable"], who, "variable")
    nokey = (pcode < 0) | (ecode < 0) | (vcode < 0)
    keep = ~nokey & ~nat & ~np.isnan(value)
    _dropped(int(nokey.sum()), "events", "missing patient_id, encounter_id or variable", level)
    _dropped(int((~nokey & nat).sum()), "events", "missing time", level)
    # a NaN value was missing (NaN, None, blank), censored with censored='nan', or text that
    # is not a number; only the last has examples (parse_values logs them)
    nan_rows = np.flatnonzero(~nokey & ~nat & np.isnan(value))
    raw = events["value"].iloc[nan_rows]
    blank = raw.isna().to_numpy(dtype=bool, copy=True)     # writable on pandas 3 too
    if not blank.all() and not pd.api.types.is_numeric_dtype(raw.dtype):
        blank |= (raw.astype("string").str.strip() == "").fillna(True).to_numpy(dtype=bool)
    cens = ~blank & (flag[nan_rows] != 0)
    _dropped(int(blank.sum()), "events", "value missing", level)
    _dropped(int(cens.sum()), "events", "censored value ('<x', '>x') with censored='nan'", level)
    _dropped(int((~blank & ~cens).sum()), "events", "value not numeric (examples logged above)",
             level)
    p, e, tt, vc, v = pcode[keep], ecode[keep].astype(np.int64), t[keep], vcode[keep], value[keep]
    dup = _exact_duplicates(p, e, tt, vc, v)
    if dup.any():
        _dropped(int(dup.sum()), "events", "exact duplicates of another event", level)
        p, e, tt, vc, v = p[~dup], e[~dup], tt[~dup], vc[~dup], v[~dup]
    encs = np.asarray(encs, dtype=object)
    if encounters is None and len(e):  # with a table, mismatching events are dropped below
        pmin = np.full(len(encs), np.iinfo(np.int64).max, dtype=np.int64)
        pmax = np.full(len(encs), -1, dtype=np.int64)
        np.minimum.at(pmin, e, p)
        np.maximum.at(pmax, e, p)
        shared = np.flatnonzero((pmax >= 0) & (pmin != pmax))
        if shared.size:
            k = int(shared[0])
            raise ColumnContractError(
                f"{who}: encounter_id {encs[k]!r} holds events of several patients "
                f"({patients[pmin[k]]!r} and {patients[pmax[k]]!r}; {shared.size} such encounters). "
                "Encounter ids must be unique across patients; prefix them with the patient id, "
                "e.g. events.assign(encounter_id=events['patient_id'].astype(str) + ':' + "
                "events['encounter_id'].astype(str))."
            )
    if encounters is not None:
        enc = _prepare_encounters(encounters, who, level)
        pos = pd.Index(enc["encounter_id"]).get_indexer(encs)
        known = pos[e] >= 0
        ep = pd.Index(patients).get_indexer(enc["patient_id"].to_numpy(dtype=object))
        same = known & (ep[np.where(pos >= 0, pos, 0)][e] == p)
        st = ns(enc["start"].to_numpy())[np.where(pos >= 0, pos, 0)][e]
        en = ns(enc["end"].to_numpy())[np.where(pos >= 0, pos, 0)][e]
        inside = same & (tt >= st) & (tt <= en)
        _dropped(int((~known).sum()), "events", "encounter_id not in the encounters table", level)
        _dropped(int((known & ~same).sum()), "events",
                 "patient_id differs from the encounter's patient_id", level)
        _dropped(int((same & ~inside).sum()), "events",
                 "time outside its encounter's [start, end]", level)
        p, e, tt, vc, v, st = p[inside], e[inside], tt[inside], vc[inside], v[inside], st[inside]
    else:
        emin = np.full(len(encs), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(emin, e, tt)
        st = emin[e]
    log.info("%s: %d of %d events usable", who, len(p), n0)
    return p, e, tt, vc, v, st, patients, encs, variables


def _exact_duplicates(*cols: np.ndarray) -> np.ndarray:
    """Mask of rows equal to an earlier row in all ``cols`` (hash first, then exact check)."""
    n = len(cols[0])
    if n == 0:
        return np.zeros(0, dtype=bool)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k, c in enumerate(cols):
            c = np.ascontiguousarray(c)
            bits = c.view(np.uint64) if c.dtype.itemsize == 8 else c.astype(np.uint64)
            h = (h ^ (bits + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2)))) \
                * np.uint64(0xBF58476D1CE4E5B9 + 2 * k)
    cand = np.flatnonzero(pd.Series(h).duplicated(keep=False).to_numpy())
    out = np.zeros(n, dtype=bool)
    if cand.size:
        sub = pd.DataFrame({f"c{k}": c[cand] for k, c in enumerate(cols)})
        out[cand] = sub.duplicated(keep="first").to_numpy()
    return out


def _prepare_encounters(encounters, who, level="warning"):
    require_dataframe(encounters, who, "encounters")
    require_columns(encounters, ["encounter_id", "patient_id", "start", "end"], who)
    enc = pd.DataFrame({
        "encounter_id": encounters["encounter_id"].to_numpy(),
        "patient_id": encounters["patient_id"].to_numpy(),
        "start": to_naive_datetime(encounters["start"], who, "start").to_numpy(),
        "end": to_naive_datetime(encounters["end"], who, "end").to_numpy()})
    d = enc["encounter_id"].duplicated(keep=False)
    if d.any():
        first = enc.loc[d.to_numpy(), "encounter_id"].iloc[0]
        raise ColumnContractError(
            f"{who}: encounters table lists encounter_id {first!r} more than once "
            f"({int(d.sum())} duplicated rows). Keep one row per encounter."
        )
    bad = (enc["end"] < enc["start"]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputFormatError(
            f"{who}: encounter {enc['encounter_id'].iloc[i]!r} ends before it starts "
            f"({enc['start'].iloc[i]} > {enc['end'].iloc[i]}). Fix or drop it."
        )
    n_nat = int((enc["start"].isna() | enc["end"].isna()).sum())
    _dropped(n_nat, "encounters", "missing start or end", level)
    return enc.dropna(subset=["start", "end"])


def _windows(events, encounters, width, censored, who, level="warning") -> _Win:
    w_ns = np.int64(parse_offset(width, who, "width").value)
    p, e, t, vc, v, st0, patients, encs, variables = _prepare_events(events, encounters, who,
                                                                     censored, level)
    win = (t - st0) // w_ns
    nwin = int(win.max()) + 1 if len(win) else 1
    rcode, ukeys = pd.factorize(e * nwin + win, sort=False)
    n_rows, V = len(ukeys), max(len(variables), 1)
    ccode, ucells = pd.factorize(rcode.astype(np.int64) * V + vc, sort=False)
    sums = np.bincount(ccode, weights=v, minlength=len(ucells))
    cnts = np.bincount(ccode, minlength=len(ucells))
    cval = sums / cnts
    tmax = np.full(n_rows, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(tmax, rcode, t)
    first = np.empty(n_rows, dtype=np.int64)
    first[rcode[::-1]] = np.arange(len(rcode) - 1, -1, -1)  # an event of the row
    r_pat = p[first]
    r_win = win[first]
    r_start = st0[first] + r_win * w_ns
    order = np.lexsort((r_win, r_start, tmax, r_pat))
    inv = np.empty(n_rows, dtype=np.int64)
    inv[order] = np.arange(n_rows)
    crow = inv[ucells // V]
    cvar = ucells % V
    co = np.argsort(crow * V + cvar, kind="stable")
    return _Win(np.asarray(patients, dtype=object), r_pat[order], encs[e[first]][order],
                r_win[order], r_start[order], tmax[order], crow[co], cvar[co], cval[co],
                list(variables))


def _frame(w: _Win, W: np.ndarray, rows: np.ndarray | None = None) -> pd.DataFrame:
    r = slice(None) if rows is None else rows
    cols = {"patient_id": w.patients[w.pat[r]], "encounter_id": w.encounter[r], "window": w.window[r],
            "window_start": w.start[r].view("datetime64[ns]"), "time": w.time[r].view("datetime64[ns]")}
    cols.update({v: W[:, j] for j, v in enumerate(w.variables)})
    return pd.DataFrame(cols, copy=False)


def make_windows(
    events: pd.DataFrame,
    encounters: pd.DataFrame | None = None,
    *,
    width: str = "4h",
    censored: Literal["bound", "nan"] = "bound",
) -> pd.DataFrame:
    """Mean of each variable per ``width`` window inside each encounter (raw units).

    Parameters
    ----------
    events : DataFrame with the event contract columns.
    encounters : optional DataFrame ``encounter_id, patient_id, start, end``.
    width : window width, default ``"4h"``.
    censored : rule for ``"<5"``-style values, see :func:`parse_values`.

    Returns
    -------
    DataFrame
        One row per non-empty window, sorted by patient and time, with
        ``patient_id, encounter_id, window, window_start, time`` (time of the last
        event in the window) and one float column per variable (sorted by name).
        A new ``RangeIndex``: rows are aggregates, not input rows.

    Examples
    --------
    >>> ev = pd.DataFrame({"patient_id": [1, 1, 1], "encounter_id": ["e", "e", "e"],
    ...     "time": pd.to_datetime(["2020-01-01 00:30", "2020-01-01 02:00",
    ...                             "2020-01-01 05:00"]),
    ...     "table": "lab", "variable": "crp", "value": [1.0, 3.0, 10.0]})
    >>> make_windows(ev)["crp"].tolist()
    [2.0, 10.0]
    """
    w = _windows(events, encounters, width, censored, "make_windows")
    return _frame(w, w.dense())


def _from_window_frame(windows: pd.DataFrame, variables: Sequence[str], who: str) -> _Win:
    require_dataframe(windows, who, "windows")
    require_columns(windows, ["patient_id", "encounter_id", "window", "window_start", "time"], who,
                    hint="Pass the output of make_windows(...) as windows=.")
    pcode, patients = pd.factorize(windows["patient_id"], sort=True)
    W = np.full((len(windows), len(variables)), np.nan)
    for j, v in enumerate(variables):
        if v in windows.columns:
            W[:, j] = pd.to_numeric(windows[v], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    t = ns(to_naive_datetime(windows["time"], who, "time").to_numpy())
    st = ns(to_naive_datetime(windows["window_start"], who, "window_start").to_numpy())
    order = np.lexsort((st, t, pcode))
    W = W[order]
    crow, cvar = np.nonzero(~np.isnan(W))
    return _Win(np.asarray(patients, dtype=object), pcode.astype(np.int64)[order],
                windows["encounter_id"].to_numpy(dtype=object)[order],
                windows["window"].to_numpy(dtype=np.int64)[order], st[order], t[order],
                crow.astype(np.int64), cvar.astype(np.int64), W[crow, cvar], list(variables))


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class EHRSequences:
    """Padded per-index-row window sequences for the fusion network.

    Attributes
    ----------
    X : float32 array (n, T, V)
        Min-max scaled window means, 0 where unobserved or padded.
    observed : bool array (n, T, V)
        True where ``X`` holds a value.
    mask : bool array (n, T)
        True for real windows; padding is at the end (windows are chronological).
    hours_before : float32 array (n, T)
        Hours from the window's last event to the index date (0 on padding).
    patient_id, index_date : arrays of length n, in the order of the index table.
    variables : list of the V variable names.
    """

    X: np.ndarray
    observed: np.ndarray
    mask: np.ndarray
    hours_before: np.ndarray
    patient_id: np.ndarray
    index_date: np.ndarray
    variables: list

    def summary(self) -> pd.DataFrame:
        """Windows per row (length of each sequence)."""
        return pd.DataFrame({"patient_id": self.patient_id, "index_date": self.index_date,
                             "n_windows": self.mask.sum(axis=1)})


# ----------------------------------------------------------------------------- estimator
@persist.register("EHRFeaturizer", schema=1)
class EHRFeaturizer(TransformerMixin, BaseEstimator):
    """Windows, rare-variable filter, min-max scaling, sequences and summaries.

    Parameters
    ----------
    width : str
        Window width inside encounters (default ``"4h"``).
    min_patient_frac : float
        Keep a variable only if at least this fraction of *training* patients has a
        value of it (default 0.10).
    lookbacks : sequence of str
        Look-back windows before the index date for :meth:`summaries`
        (``"90D"``, ``"365D"``, ``"all"``).
    stats : sequence of str
        Subset of ``("last", "mean", "min", "max", "slope", "count")``.
    max_len : int
        Cap on the sequence length T: the most recent windows before the index date.
    censored : {"bound", "nan"}
        Rule for censored values, see :func:`parse_values`.
    log_level : {"warning", "debug"}
        Level of its data notices (censored and non-numeric values, dropped events and
        rare variables; always counted). ``"debug"`` suits refits that repeat notices
        already given, e.g. the per-fold refits of cross-validation (the pipeline's
        whole-cohort featurizer reports at ``"warning"``).

    Attributes
    ----------
    variables_ : list of kept variables (sorted).
    dropped_variables_ : dict of variable -> training patient fraction, for dropped ones.
    min_, max_ : float arrays, training range per kept variable (raw units).
    n_train_patients_ : int

    Examples
    --------
    >>> ev = pd.DataFrame({"patient_id": [1, 1, 2], "encounter_id": ["a", "a", "b"],
    ...     "time": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-01"]),
    ...     "table": "lab", "variable": "crp", "value": [2.0, 4.0, 6.0]})
    >>> f = EHRFeaturizer(min_patient_frac=0.5).fit(ev)
    >>> f.transform(ev)["crp"].tolist()
    [0.0, 0.5, 1.0]
    """

    def __init__(self, *, width: str = "4h", min_patient_frac: float = 0.10,
                 lookbacks: Sequence[str] = ("90D", "365D", "all"),
                 stats: Sequence[str] = SUMMARY_STATS, max_len: int = 256,
                 censored: Literal["bound", "nan"] = "bound",
                 log_level: Literal["warning", "debug"] = "warning"):
        self.width = width
        self.min_patient_frac = min_patient_frac
        self.lookbacks = lookbacks
        self.stats = stats
        self.max_len = max_len
        self.censored = censored
        self.log_level = log_level

    # -- fit
    def _validate(self):
        who = "EHRFeaturizer"
        if not 0.0 <= float(self.min_patient_frac) <= 1.0:
            raise ValueError(f"{who}: min_patient_frac={self.min_patient_frac!r} must lie in [0, 1].")
        bad = [s for s in self.stats if s not in SUMMARY_STATS]
        if bad:
            raise ValueError(f"{who}: unknown stats {bad}; choose from {list(SUMMARY_STATS)}.")
        if int(self.max_len) < 1:
            raise ValueError(f"{who}: max_len={self.max_len!r} must be a positive integer.")
        parse_offset(self.width, who, "width")
        _check_level(self.log_level, who)
        for lb in self.lookbacks:
            parse_offset(lb, who, "lookbacks")

    def fit(self, events: pd.DataFrame, y=None, *, encounters: pd.DataFrame | None = None):
        """Learn kept variables and min-max ranges from training patients' events."""
        self._validate()
        w = _windows(events, encounters, self.width, self.censored, "EHRFeaturizer.fit",
                     self.log_level)
        n_pat = len(w.patients)
        if n_pat == 0:
            raise ValueError("EHRFeaturizer.fit: no usable events (all rows were dropped; see log).")
        V = len(w.variables)
        seen = np.zeros((n_pat, V), dtype=bool)
        seen[w.pat[w.crow], w.cvar] = True
        frac = seen.mean(axis=0)
        keep = frac >= self.min_patient_frac
        self.variables_ = [v for v, k in zip(w.variables, keep, strict=False) if k]
        self.dropped_variables_ = {v: float(f) for v, f, k in zip(w.variables, frac, keep, strict=False) if not k}
        if self.dropped_variables_:
            log.log(_LEVELS[self.log_level], "EHRFeaturizer.fit: dropped %d rare variables (seen "
                    "in < %.0f%% of %d training patients): %s", len(self.dropped_variables_),
                    100 * self.min_patient_frac, n_pat, sorted(self.dropped_variables_)[:20])
        mn = np.full(V, np.inf)
        mx = np.full(V, -np.inf)
        np.minimum.at(mn, w.cvar, w.cval)
        np.maximum.at(mx, w.cvar, w.cval)
        self.min_, self.max_ = mn[keep], mx[keep]
        self.n_train_patients_ = n_pat
        return self

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the summary columns: ``ehr__{variable}__{stat}_{lookback}``."""
        check_is_fitted(self)
        return np.array([f"ehr__{v}__{s}_{lb.lower()}" for v in self.variables_
                         for lb in self.lookbacks for s in self.stats], dtype=object)

    # -- helpers
    def _get(self, events, encounters, windows, who) -> _Win:
        check_is_fitted(self)
        if (events is None) == (windows is None):
            raise ValueError(f"{who}: pass exactly one of events= or windows= (from make_windows).")
        if windows is not None:
            return _from_window_frame(windows, self.variables_, who)
        _check_level(self.log_level, who)
        w = _windows(events, encounters, self.width, self.censored, who, self.log_level)
        kept = set(self.variables_)
        unseen = [v for v in w.variables if v not in kept]
        if unseen:
            log.info("%s: ignoring %d variables not kept in fit: %s", who, len(unseen), unseen[:20])
        return w.select_variables(self.variables_)

    def _scale(self, W):
        rng = self.max_ - self.min_
        rng = np.where(rng > 0, rng, 1.0)
        return (W - self.min_) / rng

    # -- transform
    def transform(self, events: pd.DataFrame, *, encounters: pd.DataFrame | None = None) -> pd.DataFrame:
        """Scaled windows of any patients (kept variables only; empty windows dropped).

        Values are ``(x - min_) / (max_ - min_)`` with the training range, so unseen
        patients may fall outside [0, 1]; a constant variable maps to 0.
        """
        w = self._get(events, encounters, None, "EHRFeaturizer.transform")
        nonempty = np.zeros(w.n_rows, dtype=bool)
        nonempty[w.crow] = True
        dropped(int((~nonempty).sum()), "windows",
                "no value of any kept variable", warn=False, logger=log)
        rows = np.flatnonzero(nonempty)
        return _frame(w, self._scale(w.dense(rows)), rows)

    def _locate(self, w: _Win, index: pd.DataFrame, who: str):
        require_dataframe(index, who, "index")
        require_columns(index, ["patient_id", "index_date"], who)
        idate = to_naive_datetime(index["index_date"], who, "index_date")
        if idate.isna().any():
            i = int(np.flatnonzero(idate.isna().to_numpy())[0])
            raise InputFormatError(f"{who}: index_date is missing at row {index.index[i]!r}; "
                                   "every index row needs a date.")
        q_pat = pd.Index(w.patients).get_indexer(index["patient_id"].to_numpy(dtype=object))
        missing = int((q_pat < 0).sum())
        if missing:
            log.warning("%s: %d of %d index rows have no EHR windows; their features are "
                        "empty (NaN / count 0)", who, missing, len(index))
        return q_pat.astype(np.int64), ns(idate.to_numpy())

    def sequences(self, index: pd.DataFrame, *, events: pd.DataFrame | None = None,
                  encounters: pd.DataFrame | None = None,
                  windows: pd.DataFrame | None = None) -> EHRSequences:
        """Padded sequences of the ``max_len`` most recent windows strictly before each index date.

        Parameters
        ----------
        index : DataFrame with ``patient_id`` and ``index_date`` (one row per sample).
        events, encounters : raw events (and encounters), or
        windows : the output of :func:`make_windows` (raw units).

        Returns
        -------
        EHRSequences, rows in the order of ``index``.
        """
        who = "EHRFeaturizer.sequences"
        w = self._get(events, encounters, windows, who)
        q_pat, q_t = self._locate(w, index, who)
        t0 = w.time.min() if len(w.time) else 0
        rel = (-((t0 - w.time) // 1_000_000_000)).astype(np.int64)  # ceil: conservative
        key = (w.pat << _SHIFT) | rel
        qp = np.where(q_pat >= 0, q_pat, 0)
        # strictly before: key < (patient, ceil(q)); ceil on both sides never lets a later window in
        q_rel = -((t0 - q_t) // 1_000_000_000)  # ceil division
        q_rel = np.clip(q_rel, 0, (1 << 34) - 1)
        hi = np.searchsorted(key, (qp << _SHIFT) | q_rel, side="left")
        lo_p = np.searchsorted(key, qp << _SHIFT, side="left")
        hi = np.where(q_pat >= 0, hi, lo_p)
        lo = np.maximum(lo_p, hi - int(self.max_len))
        lens = hi - lo
        T = max(int(lens.max()) if len(lens) else 0, 1)
        pos = lo[:, None] + np.arange(T)[None, :]
        mask = np.arange(T)[None, :] < lens[:, None]
        pos = np.where(mask, pos, 0)
        V = len(self.variables_)
        if len(w.time):
            need = np.unique(pos[mask])
            look = np.zeros(w.n_rows, dtype=np.int64)
            look[need] = np.arange(len(need))
            sub = self._scale(w.dense(need)) if len(need) else np.full((1, V), np.nan)
            Ws = sub[look[pos]]
            Ws[~mask] = np.nan
            hours = (q_t[:, None] - w.time[pos]) / 3.6e12
        else:
            Ws = np.full(mask.shape + (V,), np.nan)
            hours = np.zeros(mask.shape)
        observed = ~np.isnan(Ws)
        X = np.where(observed, Ws, 0.0).astype(np.float32)
        hours = np.where(mask, hours, 0.0).astype(np.float32)
        return EHRSequences(X=X, observed=observed, mask=mask, hours_before=hours,
                            patient_id=index["patient_id"].to_numpy(),
                            index_date=q_t.view("datetime64[ns]"), variables=list(self.variables_))

    def summaries(self, index: pd.DataFrame, *, events: pd.DataFrame | None = None,
                  encounters: pd.DataFrame | None = None,
                  windows: pd.DataFrame | None = None) -> pd.DataFrame:
        """Per-index-row summaries of window means strictly before the index date.

        For each kept variable and look-back ``L``, over windows with
        ``index_date - L <= time < index_date``: ``last`` (most recent value),
        ``mean``, ``min``, ``max``, ``slope`` (least-squares slope of value on time,
        raw units per year; NaN with fewer than 2 windows or one time) and ``count``
        (number of windows with a value; 0 when none). Raw (unscaled) units.

        Returns
        -------
        DataFrame indexed like ``index`` with columns :meth:`get_feature_names_out`.
        """
        who = "EHRFeaturizer.summaries"
        w = self._get(events, encounters, windows, who)
        q_pat, q_t = self._locate(w, index, who)
        V = len(self.variables_)
        n_q = len(index)
        # cells sorted by (patient, variable, time); rows are already time-sorted
        pv = w.pat[w.crow] * max(V, 1) + w.cvar
        o = np.argsort(pv * np.int64(max(w.n_rows, 1)) + w.crow)
        pv = pv[o]
        vals = w.cval[o]
        tt = w.time[w.crow[o]]
        t0 = tt.min() if len(tt) else 0
        rel = (-((t0 - tt) // 1_000_000_000)).astype(np.int64)  # ceil: conservative
        key = (pv.astype(np.int64) << _SHIFT) | rel
        # per-(patient, variable) centred time in years, for a stable slope
        seg_start = np.searchsorted(pv, pv, side="left")
        ty = (tt - tt[seg_start]) / _NS_PER_YEAR
        cs = {name: np.concatenate([[0.0], np.cumsum(a)]) for name, a in
              (("n", np.ones_like(vals)), ("v", vals), ("t", ty), ("tt", ty * ty), ("tv", ty * vals))}
        qpv = (np.where(q_pat >= 0, q_pat, 0)[:, None] * max(V, 1) + np.arange(V)[None, :]).astype(np.int64)
        seg_lo = np.searchsorted(key, qpv << _SHIFT, side="left")
        q_rel = np.clip(-((t0 - q_t) // 1_000_000_000), 0, (1 << 34) - 1)
        hi = np.searchsorted(key, (qpv << _SHIFT) | q_rel[:, None], side="left")
        hi = np.where((q_pat >= 0)[:, None], hi, seg_lo)
        blocks = {}
        for lb in self.lookbacks:
            td = parse_offset(lb, who, "lookbacks")
            if td is None:
                lo = seg_lo
            else:
                lo_rel = np.clip(-((t0 - (q_t - td.value)) // 1_000_000_000), 0, (1 << 34) - 1)
                lo = np.searchsorted(key, (qpv << _SHIFT) | lo_rel[:, None], side="left")
                lo = np.maximum(lo, seg_lo)
            lo = np.minimum(lo, hi)
            stats = _range_stats(lo.ravel(), hi.ravel(), vals, cs, self.stats)
            for s in self.stats:
                blocks[(lb, s)] = stats[s].reshape(n_q, V)
        cols, arrs = [], []
        for j, v in enumerate(self.variables_):
            for lb in self.lookbacks:
                for s in self.stats:
                    cols.append(f"ehr__{v}__{s}_{lb.lower()}")
                    arrs.append(blocks[(lb, s)][:, j])
        data = np.column_stack(arrs) if arrs else np.zeros((n_q, 0))
        return pd.DataFrame(data, index=index.index, columns=cols)

    # -- persistence
    def save(self, path) -> None:
        """Save the fitted state (JSON + npz, no pickle)."""
        check_is_fitted(self)
        persist.save_state(path, kind="EHRFeaturizer",
                           meta={"params": self.get_params(), "variables": self.variables_,
                                 "dropped_variables": self.dropped_variables_,
                                 "n_train_patients": self.n_train_patients_},
                           arrays={"min": self.min_, "max": self.max_})

    @classmethod
    def _from_state(cls, meta, arrays, files):
        p = dict(meta["params"])
        p["lookbacks"] = tuple(p["lookbacks"])
        p["stats"] = tuple(p["stats"])
        obj = cls(**p)
        obj.variables_ = list(meta["variables"])
        obj.dropped_variables_ = dict(meta["dropped_variables"])
        obj.n_train_patients_ = int(meta["n_train_patients"])
        obj.min_, obj.max_ = arrays["min"], arrays["max"]
        return obj


def _range_stats(lo, hi, vals, cs, stats):
    """Stats of ``vals[lo:hi]`` for many ranges at once (prefix sums + reduceat)."""
    n = cs["n"][hi] - cs["n"][lo]
    out = {}
    has = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if "count" in stats:
            out["count"] = n
        if "mean" in stats:
            out["mean"] = np.where(has, (cs["v"][hi] - cs["v"][lo]) / n, np.nan)
        if "slope" in stats:
            st = cs["t"][hi] - cs["t"][lo]
            stt = cs["tt"][hi] - cs["tt"][lo]
            stv = cs["tv"][hi] - cs["tv"][lo]
            sv = cs["v"][hi] - cs["v"][lo]
            den = n * stt - st * st
            ok = (n >= 2) & (den > 1e-12 * np.maximum(n * stt, 1e-300))
            out["slope"] = np.where(ok, (n * stv - st * sv) / np.where(ok, den, 1.0), np.nan)
        if "last" in stats:
            out["last"] = np.where(has, vals[np.clip(hi - 1, 0, max(len(vals) - 1, 0))] if len(vals) else np.nan, np.nan)
        for name, uf in (("min", np.minimum), ("max", np.maximum)):
            if name in stats:
                if len(vals) == 0:
                    out[name] = np.full(len(lo), np.nan)
                    continue
                ext = np.append(vals, np.nan)
                idx = np.empty(2 * len(lo), dtype=np.int64)
                idx[0::2] = lo
                idx[1::2] = hi
                red = uf.reduceat(ext, idx)[0::2] if len(lo) else np.zeros(0)
                out[name] = np.where(has, red, np.nan)
    return out
