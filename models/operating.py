"""Operating points: thresholds learned on validation data, metrics at them, subgroups.

Re-exported by :mod:`models.evaluate`. The cut is a *parameter*: :func:`choose_threshold`
sees validation data only and returns a frozen :class:`Threshold`; :func:`metrics_at`
applies it unchanged to test data.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import pandas as pd

from models import _kernels as K
from models._inputs import _binary, _both_classes, _probabilities, _scores, _zcrit
from normfuse.checks import get_logger
from normfuse.errors import ColumnContractError
from normfuse.results import ResultMixin

__all__ = ["choose_threshold", "Threshold", "metrics_at", "OperatingPoint",
           "subgroup_metrics", "SubgroupResult", "age_bands"]

_log = get_logger("models.evaluate")


# --------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Threshold(ResultMixin):
    """A decision threshold learned on validation data; call a case when score >= value.

    It is a fitted parameter: it records only the validation data's statistics and is
    applied unchanged to test data by :func:`metrics_at`.

    Attributes
    ----------
    value : the cut; method : "youden" or "closest.topleft"; sensitivity, specificity,
    youden : on the validation data; n_pos, n_neg : validation counts.
    """

    value: float
    method: str
    sensitivity: float
    specificity: float
    youden: float
    n_pos: int
    n_neg: int
    _title = "Threshold (chosen on validation data)"

    def summary(self) -> pd.DataFrame:
        """One row with the cut and its validation sensitivity/specificity."""
        return pd.DataFrame({"value": [self.value], "sensitivity": [self.sensitivity],
                             "specificity": [self.specificity], "youden": [self.youden],
                             "n_pos": [self.n_pos], "n_neg": [self.n_neg]},
                            index=pd.Index([self.method], name="method"))


def choose_threshold(
    y_val, p_val, *, method: Literal["youden", "closest.topleft"] = "youden",
) -> Threshold:
    """Choose the operating point on validation data only (pROC ``coords(..., "best")``).

    Candidate cuts are pROC's: midpoints between consecutive distinct scores, plus
    -inf and +inf. ``"youden"`` maximises sensitivity + specificity - 1,
    ``"closest.topleft"`` minimises (1 - sens)^2 + (1 - spec)^2. Ties are broken towards
    the highest cut (fewest positive calls); pROC would report all tied cuts.

    Parameters
    ----------
    y_val, p_val : validation outcomes and scores. Never pass test data here.

    Returns
    -------
    Threshold

    Examples
    --------
    >>> t = choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> round(t.value, 4), t.sensitivity, t.specificity
    (0.6, 0.5, 1.0)
    """
    if method not in ("youden", "closest.topleft"):
        raise ValueError(f"choose_threshold: method={method!r}; expected 'youden' or 'closest.topleft'.")
    y = _binary(y_val, "choose_threshold", "y_val")
    s, names = _scores(p_val, y.size, "choose_threshold", "p_val", like=y_val)
    if s.shape[1] != 1:
        raise ValueError(f"choose_threshold: pass one predictor (got {names}).")
    m, n = _both_classes(y, "choose_threshold")
    u = np.unique(s[:, 0])
    cand = np.concatenate([[-np.inf], (u[:-1] + u[1:]) / 2, [np.inf]])
    pos = np.sort(s[y == 1, 0])
    neg = np.sort(s[y == 0, 0])
    sens = (m - np.searchsorted(pos, cand, side="left")) / m
    spec = np.searchsorted(neg, cand, side="left") / n
    if method == "youden":
        crit = sens + spec - 1
        best = np.flatnonzero(crit == crit.max())[-1]
    else:
        crit = (1 - sens) ** 2 + (1 - spec) ** 2
        best = np.flatnonzero(crit == crit.min())[-1]
    return Threshold(float(cand[best]), method, float(sens[best]), float(spec[best]),
                     float(sens[best] + spec[best] - 1), m, n)


@dataclass(frozen=True)
class OperatingPoint(ResultMixin):
    """Confusion-matrix metrics at a fixed cut, with exact (Clopper-Pearson) CIs.

    Attributes
    ----------
    threshold : the cut applied (score >= threshold is a positive call);
    tp, fp, tn, fn : counts; conf_level : CI level.
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    conf_level: float = 0.95
    _title = "Operating point"

    def _rates(self) -> dict[str, tuple[int, int]]:
        return {"sensitivity": (self.tp, self.tp + self.fn),
                "specificity": (self.tn, self.tn + self.fp),
                "ppv": (self.tp, self.tp + self.fp),
                "npv": (self.tn, self.tn + self.fn)}

    @property
    def sensitivity(self) -> float:
        """TP / (TP + FN)."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        """TN / (TN + FP)."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        """TP / (TP + FP); NaN when nothing is called positive."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        """TN / (TN + FN); NaN when nothing is called negative."""
        return _ratio(self.tn, self.tn + self.fn)

    def summary(self) -> pd.DataFrame:
        """One row per metric: estimate, ci_low, ci_high (Clopper-Pearson), numerator, denominator."""
        from scipy.stats import beta

        a = 1 - self.conf_level
        rows = {}
        for name, (k, nn) in self._rates().items():
            lo = beta.ppf(a / 2, k, nn - k + 1) if k > 0 else 0.0
            hi = beta.ppf(1 - a / 2, k + 1, nn - k) if k < nn else 1.0
            if nn == 0:
                lo = hi = np.nan
            rows[name] = {"estimate": _ratio(k, nn), "ci_low": float(lo), "ci_high": float(hi),
                          "numerator": k, "denominator": nn}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")

    def _header_lines(self) -> list[str]:
        return [f"cut {self.threshold:.4g}: TP {self.tp}, FP {self.fp}, TN {self.tn}, FN {self.fn}"]


def _ratio(k: int, n: int) -> float:
    return float(k / n) if n else float("nan")


def metrics_at(threshold: Threshold | float, y_true, y_score, *, conf_level: float = 0.95) -> OperatingPoint:
    """Sensitivity, specificity, PPV and NPV of ``y_score >= threshold`` on (test) data.

    The cut is never re-estimated here: pass a :class:`Threshold` from
    :func:`choose_threshold` on validation data (or a pre-registered number).

    Examples
    --------
    >>> op = metrics_at(0.5, [0, 0, 1, 1], [0.1, 0.6, 0.7, 0.2])
    >>> op.sensitivity, op.specificity, op.ppv
    (0.5, 0.5, 0.5)
    """
    value = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    if np.isnan(value):
        raise ValueError("metrics_at: threshold is NaN; choose it with choose_threshold(y_val, p_val).")
    _zcrit(conf_level)
    y = _binary(y_true, "metrics_at")
    s, _ = _scores(y_score, y.size, "metrics_at", like=y_true)
    call = s[:, 0] >= value
    tp = int(np.sum(call & (y == 1)))
    fp = int(np.sum(call & (y == 0)))
    fn = int(np.sum(~call & (y == 1)))
    tn = int(np.sum(~call & (y == 0)))
    return OperatingPoint(value, tp, fp, tn, fn, conf_level)


# --------------------------------------------------------------------------- subgroups
def age_bands(age, edges: Sequence[float] = (40, 50, 60)) -> pd.Series:
    """Cut ages into bands ``<40``, ``40-<50``, ``50-<60``, ``>=60`` (ordered categorical).

    Missing ages stay missing. The input's index is kept when ``age`` is a Series.

    Examples
    --------
    >>> age_bands([35, 40, 59.5, 71]).astype(str).tolist()
    ['<40', '40-<50', '50-<60', '>=60']
    """
    e = [float(v) for v in edges]
    if not e or any(b <= a for a, b in pairwise(e)):
        raise ValueError(f"age_bands: edges must be strictly increasing, got {list(edges)!r}.")
    idx = age.index if isinstance(age, pd.Series) else None
    a = pd.to_numeric(pd.Series(np.asarray(age), index=idx), errors="coerce")
    fmt = [f"{v:g}" for v in e]
    labels = [f"<{fmt[0]}"] + [f"{x}-<{y}" for x, y in pairwise(fmt)] + [f">={fmt[-1]}"]
    cut = pd.cut(a, bins=[-np.inf, *e, np.inf], right=False, labels=labels)
    return cut.rename("age_band")


@dataclass(frozen=True, eq=False)
class SubgroupResult(ResultMixin):
    """Metrics per subgroup (e.g. sex, age band).

    Attributes
    ----------
    table : one row per (grouping, level) with n, n_pos, prevalence, auroc, auroc_ci_low,
        auroc_ci_high, auprc, brier and, when a threshold was given, sensitivity,
        specificity, ppv, npv. AUROC/AUPRC are NaN (and ``estimable`` False) where a
        level holds one class only; ``n_not_estimable`` counts those levels.
    """

    table: pd.DataFrame
    n_not_estimable: int
    _title = "Subgroup metrics"

    def summary(self) -> pd.DataFrame:
        """The per-subgroup table."""
        return self.table.copy()


def subgroup_metrics(
    y_true, y_prob, groups, *, threshold: Threshold | float | None = None,
    conf_level: float = 0.95,
) -> SubgroupResult:
    """AUROC (DeLong CI), AUPRC, Brier and operating-point metrics within each subgroup.

    Parameters
    ----------
    y_true, y_prob : outcome and predicted risk (same length and order).
    groups : DataFrame or mapping name -> array of group labels, e.g.
        ``{"sex": df["demo__sex"], "age_band": age_bands(df["demo__age"])}``.
    threshold : optional cut (from :func:`choose_threshold` on validation data).

    Returns
    -------
    SubgroupResult

    Notes
    -----
    Rows whose group label is missing are left out of that grouping (counted in the
    ``n_missing_group`` column and logged). A level with a single outcome class is
    reported with NaN discrimination metrics instead of raising.
    """
    y = _binary(y_true, "subgroup_metrics")
    p, names = _scores(y_prob, y.size, "subgroup_metrics", "y_prob", like=y_true)
    p = p[:, 0]
    _probabilities(p, names[0], "subgroup_metrics")
    zc = _zcrit(conf_level)
    if isinstance(groups, pd.DataFrame):
        gmap = {str(c): groups[c].to_numpy() for c in groups.columns}
    elif isinstance(groups, Mapping):
        gmap = {str(k): np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v) for k, v in groups.items()}
    else:
        raise TypeError("subgroup_metrics: groups must be a DataFrame or a mapping name -> labels.")
    rows = []
    not_est = 0
    for gname, lab in gmap.items():
        if len(lab) != y.size:
            raise ColumnContractError(f"subgroup_metrics: grouping {gname!r} has {len(lab)} labels "
                                      f"but there are {y.size} outcomes.")
        codes, levels = pd.factorize(pd.Series(lab), sort=True)
        n_missing = int(np.sum(codes < 0))
        if n_missing:
            _log.warning("subgroup_metrics: %d rows without a %r label left out of that grouping",
                         n_missing, gname)
        for c, level in enumerate(levels):
            sel = codes == c
            ys, ps = y[sel], p[sel]
            npos = int(ys.sum())
            row = {"grouping": gname, "level": str(level), "n": int(sel.sum()), "n_pos": npos,
                   "prevalence": npos / sel.sum(), "n_missing_group": n_missing,
                   "brier": float(np.mean((ps - ys) ** 2))}
            ok = 2 <= npos <= ys.size - 2
            row["estimable"] = ok
            if ok:
                auc, cov = K.delong_placements(ps[ys == 1][None, :], ps[ys == 0][None, :])
                se = float(np.sqrt(cov[0, 0]))
                row.update(auroc=float(auc[0]), auroc_ci_low=max(0.0, auc[0] - zc * se),
                           auroc_ci_high=min(1.0, auc[0] + zc * se),
                           auprc=float(K.average_precision_rows(ps[None, :], ys)[0]))
            else:
                not_est += 1
                row.update(auroc=np.nan, auroc_ci_low=np.nan, auroc_ci_high=np.nan, auprc=np.nan)
            if threshold is not None:
                op = metrics_at(threshold, ys, ps)
                row.update(sensitivity=op.sensitivity, specificity=op.specificity,
                           ppv=op.ppv, npv=op.npv)
            rows.append(row)
    if not_est:
        _log.warning("subgroup_metrics: %d subgroup(s) hold fewer than 2 events or non-events; "
                     "their AUROC/AUPRC are NaN", not_est)
    table = pd.DataFrame(rows).set_index(["grouping", "level"])
    return SubgroupResult(table, not_est)

