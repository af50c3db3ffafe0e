"""Deviation-based risk stratification: a rule fixed a priori or learned on a training split.

A :class:`DeviationRule` flags a subject as high risk when at least ``k`` of the named
regions have a critical deviation (Z below ``-threshold`` for ``tail="lower"``, the
published MS convention; above ``threshold`` in absolute value for ``"both"``). A rule
learned with :func:`learn_rule` remembers the subject ids it was trained on (from the
``subject_id`` column, an ``id_col`` the caller names, or a named index: never from a
default integer index, whose labels say nothing about who a row is) and a hash of each
training row's Z values; :func:`evaluate_rule` refuses to evaluate it on any of those
subjects, or on rows that are renamed copies of training rows. Evaluation: Kaplan-Meier,
log-rank and Cox (high vs low) per endpoint, and an LMM with a group x time
interaction on EDSS.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from analyses.cox import fit_cox
from analyses.mixed import MixedModelResult, fit_mixed
from analyses.survival import endpoint, kaplan_meier, logrank
from normfuse.checks import check_numeric, get_logger, require_columns, require_dataframe
from normfuse.contracts import VOLUME_KEYS
from normfuse.errors import ColumnContractError
from normfuse.results import ResultMixin

__all__ = ["DeviationRule", "StratificationResult", "learn_rule", "evaluate_rule"]

_log = get_logger("analyses.stratify")

#: the contracts' subject id column
SUBJECT_ID = VOLUME_KEYS[0]

#: the published rule's regions (FreeSurfer 7 names)
DEFAULT_REGIONS = ("Left-Thalamus", "Right-Thalamus", "Left-Hippocampus", "Right-Hippocampus",
                   "Left-Putamen", "Right-Putamen")


@dataclass(frozen=True)
class DeviationRule:
    """High risk when >= ``k`` of ``regions`` deviate critically.

    ``trained_on`` holds the subject ids the rule was learned on (empty for an a-priori
    rule), ``trained_id_col`` the column they came from (None: the index), and
    ``trained_rows`` a hash of each training row's Z values in ``regions`` (to catch
    training rows under new ids).
    """

    regions: tuple[str, ...] = DEFAULT_REGIONS
    k: int = 1
    threshold: float = 1.96
    tail: Literal["lower", "both", "upper"] = "lower"
    trained_on: tuple = field(default=(), repr=False)
    trained_id_col: str | None = field(default=None, repr=False)
    trained_rows: tuple = field(default=(), repr=False)

    def __post_init__(self):
        if self.k < 1 or int(self.k) != self.k:
            raise ValueError(f"DeviationRule: k={self.k!r}; expected a positive integer.")
        if self.tail not in ("lower", "both", "upper"):
            raise ValueError(f"DeviationRule: tail={self.tail!r}; expected 'lower', 'both' or 'upper'.")
        if not self.regions:
            raise ValueError("DeviationRule: regions is empty; name the Z columns to count.")

    def count(self, deviations: pd.DataFrame) -> pd.Series:
        """Number of critical deviations among ``regions`` per row (input index kept)."""
        require_columns(deviations, list(self.regions), "DeviationRule.count")
        z = check_numeric(deviations, list(self.regions), "DeviationRule.count")
        crit = {"lower": z < -self.threshold, "upper": z > self.threshold,
                "both": np.abs(z) > self.threshold}[self.tail]
        return pd.Series(crit.sum(1), index=deviations.index, name="n_crit_rule")

    def apply(self, deviations: pd.DataFrame) -> pd.Series:
        """Boolean high-risk flag per row (input index kept)."""
        return (self.count(deviations) >= self.k).rename("high_risk")

    def describe(self) -> str:
        """The rule in words."""
        side = {"lower": f"Z < -{self.threshold:g}", "upper": f"Z > {self.threshold:g}",
                "both": f"|Z| > {self.threshold:g}"}[self.tail]
        src = f"column {self.trained_id_col!r}" if self.trained_id_col else "the index"
        how = (f"learned on {len(self.trained_on)} subjects, ids from {src}" if self.trained_on
               else "fixed a priori")
        return f">= {self.k} of {len(self.regions)} regions with {side} ({how})"


def _subject_ids(df: pd.DataFrame, id_col: str | None, who: str,
                 what: str = "data") -> tuple[pd.Index, str | None]:
    """Subject ids of ``df`` and the column they came from (None: the index).

    Order: ``id_col`` when given, else the ``subject_id`` column, else the index when it
    is named or holds non-integer labels. A default integer index (0, 1, ... after
    ``reset_index(drop=True)``) is refused: its labels number rows, not subjects.
    """
    if id_col is not None:
        require_columns(df, [id_col], f"{who} ({what})")
        return pd.Index(df[id_col]), id_col
    if SUBJECT_ID in df.columns:
        return pd.Index(df[SUBJECT_ID]), SUBJECT_ID
    idx = df.index
    if idx.name is None and (isinstance(idx, pd.RangeIndex)
                             or pd.api.types.is_integer_dtype(idx.dtype)):
        raise ColumnContractError(
            f"{who}: {what} has no {SUBJECT_ID!r} column and an unnamed integer index "
            f"({idx[:3].tolist()}...), which numbers rows rather than naming subjects; the "
            "training guard cannot tell who a row is. Add a "
            f"{SUBJECT_ID!r} column, pass id_col='<your subject id column>', or set the ids "
            f"as the index ({what}.set_index('{SUBJECT_ID}')).")
    return idx, None


def _row_hashes(df: pd.DataFrame, regions: Sequence[str], who: str) -> np.ndarray:
    """One uint64 hash per row of its Z values in ``regions`` (-0.0 counted as 0.0)."""
    z = check_numeric(df, list(regions), who) + 0.0
    return pd.util.hash_pandas_object(pd.DataFrame(z), index=False).to_numpy(np.uint64)


def learn_rule(train: pd.DataFrame, endpoint_name: str = "cdp",
               regions: Sequence[str] = DEFAULT_REGIONS, k_grid: Sequence[int] = (1, 2, 3),
               thresholds: Sequence[float] = (1.96,), tail: Literal["lower", "both", "upper"] = "lower",
               min_group: int = 10, id_col: str | None = None) -> DeviationRule:
    """Choose ``k`` (and threshold) maximising the log-rank statistic on a training split.

    Candidates leaving fewer than ``min_group`` subjects in either group are skipped.
    The returned rule records the training subject ids (``id_col``, else the
    ``subject_id`` column, else a named or non-integer index; a default integer index is
    refused), the column they came from, and a hash of each training row's Z values, so
    that :func:`evaluate_rule` can refuse training subjects, also under new ids.

    Raises
    ------
    ColumnContractError
        ``train`` has no usable subject ids, or no candidate rule leaves ``min_group``
        subjects in both groups.
    """
    who = "learn_rule"
    require_dataframe(train, who, "train")
    ids, id_src = _subject_ids(train, id_col, who, "train")
    ep = endpoint(train, endpoint_name)
    best, best_stat = None, -np.inf
    for thr in thresholds:
        for k in k_grid:
            rule = DeviationRule(tuple(regions), int(k), float(thr), tail)
            flag = rule.apply(ep)
            if min(flag.sum(), (~flag).sum()) < min_group:
                continue
            lr = logrank(ep.assign(__hr__=flag.astype(int)), "duration", "event", "__hr__")
            if lr.chisq > best_stat:
                best, best_stat = rule, lr.chisq
    if best is None:
        raise ColumnContractError(
            f"{who}: no candidate rule leaves >= {min_group} training subjects in both groups; "
            "lower min_group, widen k_grid/thresholds, or use a larger training split.")
    return DeviationRule(best.regions, best.k, best.threshold, tail,
                         trained_on=tuple(ids.tolist()), trained_id_col=id_src,
                         trained_rows=tuple(_row_hashes(train, best.regions, who).tolist()))


@dataclass(frozen=True)
class StratificationResult(ResultMixin):
    """Evaluation of a stratification rule on held-out data.

    ``table`` has one row per analysis (each endpoint's Cox HR high vs low with the
    log-rank test, and the EDSS group x time interaction): estimate, ci_low, ci_high,
    p, statistic, n_high, n_low, events_high, events_low.
    """

    rule: DeviationRule
    table: pd.DataFrame
    km: dict = field(repr=False)
    logrank: dict = field(repr=False)
    cox: dict = field(repr=False)
    lmm: MixedModelResult | None = field(repr=False, default=None)
    _title = "Deviation-based risk stratification"

    def summary(self) -> pd.DataFrame:
        """One row per analysis (numbers only)."""
        return self.table.copy()

    def _header_lines(self) -> list[str]:
        return [f"rule: {self.rule.describe()}"]

    def plot(self, ax=None, endpoint: str | None = None, **kwargs):
        """KM curves (high vs low) for ``endpoint`` (default the first evaluated)."""
        from analyses.plotting import km_plot

        key = endpoint or next(iter(self.km))
        return km_plot(self.km[key], ax=ax, **kwargs)


def evaluate_rule(rule: DeviationRule, data: pd.DataFrame, endpoints: Sequence[str] = ("cdp", "relapse"),
                  visits: pd.DataFrame | None = None, id_col: str | None = None,
                  visit_id: str = "subject_id", time: str = "years", outcome: str = "edss",
                  random_slope: bool = False, check_copies: bool = True) -> StratificationResult:
    """Evaluate ``rule`` by KM/log-rank/Cox per endpoint and an EDSS LMM (group x time).

    Parameters
    ----------
    rule : DeviationRule
    data : DataFrame
        Held-out subjects: the rule's Z columns and, per endpoint, ``time_<name>`` and
        ``event_<name>`` (see :func:`analyses.survival.endpoint`). Subject ids come from
        ``id_col``, else the column the rule's ids came from (``rule.trained_id_col``),
        else ``subject_id``, else a named or non-integer index; none may be in
        ``rule.trained_on``. Needed only for a learned rule or with ``visits``.
    visits : DataFrame, optional
        Long EDSS table (``visit_id``, ``time``, ``outcome``) for the LMM
        ``outcome ~ high_risk * time + (1 | id)`` (plus a random slope on time if
        ``random_slope``).
    check_copies : bool, default True
        Refuse rows whose Z values in the rule's regions equal a training row's (a
        training subject under a new id). Turn off only for distinct subjects whose
        values coincide, e.g. coarsely rounded Z.

    Raises
    ------
    ColumnContractError
        Training subjects (by id, or renamed copies) in ``data``; ids needed but not
        available (see ``data``).
    """
    who = "evaluate_rule"
    require_dataframe(data, who)
    ids = None
    if rule.trained_on or visits is not None:
        col = id_col if id_col is not None else (
            rule.trained_id_col if rule.trained_id_col in data.columns else None)
        ids, _ = _subject_ids(data, col, who)
    if rule.trained_on:
        leak = ids.intersection(pd.Index(rule.trained_on))
        if len(leak):
            src = f"column {rule.trained_id_col!r}" if rule.trained_id_col else "the index"
            raise ColumnContractError(
                f"{who}: {len(leak)} subjects were used to learn the rule (ids from {src}): "
                f"{leak[:10].tolist()}. A rule is never evaluated on the data it was learned "
                "on: evaluate on a held-out split, or use a rule fixed a priori.")
    if rule.trained_rows and check_copies:
        copy = np.isin(_row_hashes(data, rule.regions, who),
                       np.fromiter(rule.trained_rows, np.uint64, len(rule.trained_rows)))
        if copy.any():
            raise ColumnContractError(
                f"{who}: {int(copy.sum())} rows of data have exactly the Z values of training "
                f"rows in the rule's regions, under ids not used in training: "
                f"{ids[copy][:10].tolist()}. They look like training subjects with new ids; "
                "evaluate on a held-out split. If they are distinct subjects whose values "
                "coincide (e.g. coarsely rounded Z), pass check_copies=False.")
    flag = rule.apply(data)
    rows, kms, lrs, coxes = [], {}, {}, {}
    for name in endpoints:
        ep = endpoint(data, name)
        ep = ep.assign(risk_group=np.where(flag.loc[ep.index], "high", "low"),
                       high_risk=flag.loc[ep.index].astype(float))
        if ep["risk_group"].nunique() < 2:
            raise ColumnContractError(
                f"{who}: the rule puts every subject in one group for endpoint {name!r}; "
                "there is nothing to compare. Lower k or the threshold.")
        kms[name] = kaplan_meier(ep, "duration", "event", group="risk_group")
        lrs[name] = logrank(ep, "duration", "event", "risk_group")
        coxes[name] = fit_cox(["high_risk"], ep, "duration", "event")
        h = coxes[name].params.loc["high_risk"]
        hi = ep["risk_group"] == "high"
        rows.append({"analysis": f"{name}: HR high vs low", "estimate": h["hr"],
                     "ci_low": h["hr_ci_low"], "ci_high": h["hr_ci_high"], "p": h["p"],
                     "statistic": lrs[name].chisq, "p_logrank": lrs[name].p,
                     "n_high": int(hi.sum()), "n_low": int((~hi).sum()),
                     "events_high": int(ep.loc[hi, "event"].sum()),
                     "events_low": int(ep.loc[~hi, "event"].sum())})
    lmm = None
    if visits is not None:
        require_columns(visits, [visit_id, time, outcome], who + " (visits)")
        fmap = pd.Series(flag.to_numpy(float), index=ids)
        v = visits.assign(high_risk=visits[visit_id].map(fmap))
        n_unknown = int(v["high_risk"].isna().sum())
        if n_unknown == len(v):
            raise ColumnContractError(f"{who}: no visit's {visit_id!r} matches the ids of data.")
        if n_unknown:
            # visits of subjects outside ``data`` (e.g. the training split) are not evaluated
            _log.info("%s: %d visits of subjects not in data left out of the EDSS model", who, n_unknown)
            v = v.loc[v["high_risk"].notna()]
        lmm = fit_mixed(f"{outcome} ~ high_risk * {time}", v, group=visit_id,
                        random_slope=time if random_slope else None)
        term = f"high_risk:{time}"
        t = lmm.params.loc[term]
        rows.append({"analysis": f"{outcome}: extra change per {time} (high vs low)",
                     "estimate": t["coef"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                     "p": t["p"], "statistic": t["t"] if "t" in t.index else t["z"], "p_logrank": np.nan,
                     "n_high": int(v.loc[v["high_risk"] == 1, visit_id].nunique()),
                     "n_low": int(v.loc[v["high_risk"] == 0, visit_id].nunique()),
                     "events_high": np.nan, "events_low": np.nan})
    table = pd.DataFrame(rows).set_index("analysis")
    return StratificationResult(rule=rule, table=table, km=kms, logrank=lrs, cox=coxes, lmm=lmm)
