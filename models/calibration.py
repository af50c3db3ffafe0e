"""Calibration (slope, calibration-in-the-large, binned curve) and decision curves (net benefit).

Re-exported by :mod:`models.evaluate`; see there for the conventions (1 = event, higher
score = higher risk).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import logit

from models import _kernels as K
from models._inputs import _binary, _both_classes, _probabilities, _scores, _zcrit
from normfuse.checks import get_logger
from normfuse.errors import ConvergenceWarning
from normfuse.results import ResultMixin

__all__ = ["calibration", "CalibrationResult", "decision_curve", "DecisionCurveResult"]

_log = get_logger("models.evaluate")


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True, eq=False)
class CalibrationResult(ResultMixin):
    """Logistic recalibration of predicted risks and a binned calibration curve.

    Attributes
    ----------
    slope, slope_se : coefficient of logit(p) in ``logit P(y=1) = a + b logit(p)``
        (ideal 1; < 1 means predictions too extreme, i.e. overfitting).
    intercept, intercept_se : calibration-in-the-large, the intercept of
        ``logit P(y=1) = a + offset(logit(p))`` (ideal 0; > 0 means risks too low).
    brier : Brier score; observed, expected : event rate and mean predicted risk;
    bins : DataFrame (bin, n, mean_predicted, observed) for the curve; converged : bool.
    """

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    brier: float
    observed: float
    expected: float
    n: int
    bins: pd.DataFrame = field(repr=False)
    converged: bool = True
    _title = "Calibration"

    def summary(self) -> pd.DataFrame:
        """slope and intercept with SEs and 95 % Wald CIs; Brier, O/E as extra rows."""
        z = _zcrit(0.95)
        est = [self.slope, self.intercept, self.brier, self.observed / self.expected]
        se = [self.slope_se, self.intercept_se, np.nan, np.nan]
        tab = pd.DataFrame({"estimate": est, "se": se},
                           index=pd.Index(["slope", "intercept", "brier", "o_e_ratio"], name="metric"))
        tab["ci_low"] = tab["estimate"] - z * tab["se"]
        tab["ci_high"] = tab["estimate"] + z * tab["se"]
        return tab

    def plot(self, ax=None, **kwargs):
        """Delegate to :func:`models.plotting.plot_calibration`."""
        from models.plotting import plot_calibration

        return plot_calibration(self, ax=ax, **kwargs)


def calibration(y_true, y_prob, *, n_bins: int = 10, eps: float = 1e-12) -> CalibrationResult:
    """Calibration slope and calibration-in-the-large by logistic recalibration.

    Parameters
    ----------
    y_true : 0/1 outcome; y_prob : predicted probabilities in [0, 1].
    n_bins : quantile bins of the predicted risk for the curve.
    eps : probabilities are clipped to [eps, 1 - eps] before the logit (0 and 1 would give
        infinite log-odds); the number clipped is logged.

    Returns
    -------
    CalibrationResult

    Notes
    -----
    Equals R ``glm(y ~ qlogis(p), binomial)`` for the slope and
    ``glm(y ~ 1 + offset(qlogis(p)), binomial)`` for the intercept (Van Calster 2019).
    A :class:`~normfuse.errors.ConvergenceWarning` is issued on separation.

    Examples
    --------
    >>> c = calibration([0, 1, 0, 1, 0, 1, 1, 0], [.2, .3, .7, .6, .4, .5, .8, .1], n_bins=2)
    >>> round(c.slope, 2), round(c.intercept, 2)
    (0.99, 0.26)
    """
    import warnings

    y = _binary(y_true, "calibration")
    p, names = _scores(y_prob, y.size, "calibration", "y_prob", like=y_true)
    if p.shape[1] != 1:
        raise ValueError(f"calibration: pass one predictor at a time (got {names}).")
    _both_classes(y, "calibration")
    p = p[:, 0]
    _probabilities(p, names[0], "calibration")
    pc = np.clip(p, eps, 1 - eps)
    n_clip = int(np.sum(pc != p))
    if n_clip:
        _log.info("calibration: clipped %d probabilities of exactly 0 or 1 to [%g, 1-%g]",
                  n_clip, eps, eps)
    lp = logit(pc)
    yf = y.astype(np.float64)
    beta, cov, ok1 = K.logistic_newton(yf, np.column_stack([np.ones_like(lp), lp]))
    b0, cov0, ok2 = K.logistic_newton(yf, np.ones((lp.size, 1)), offset=lp)
    converged = ok1 and ok2
    if not converged:
        warnings.warn(
            "calibration: the logistic recalibration did not converge (the outcome is "
            "perfectly separated by the predicted risk); slope/intercept are unreliable. "
            "Silence with warnings.filterwarnings('ignore', category=ConvergenceWarning).",
            ConvergenceWarning, stacklevel=2)
    k = max(1, min(int(n_bins), np.unique(p).size))
    edges = np.unique(np.quantile(p, np.linspace(0, 1, k + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(edges.size - 2, 0))
    cnt = np.bincount(which, minlength=max(edges.size - 1, 1))
    keep = cnt > 0
    bins = pd.DataFrame({
        "n": cnt[keep],
        "mean_predicted": (np.bincount(which, p, minlength=cnt.size) / np.maximum(cnt, 1))[keep],
        "observed": (np.bincount(which, yf, minlength=cnt.size) / np.maximum(cnt, 1))[keep],
    }).rename_axis("bin")
    return CalibrationResult(
        slope=float(beta[1]), slope_se=float(np.sqrt(cov[1, 1])),
        intercept=float(b0[0]), intercept_se=float(np.sqrt(cov0[0, 0])),
        brier=float(np.mean((p - yf) ** 2)), observed=float(yf.mean()),
        expected=float(p.mean()), n=int(y.size), bins=bins, converged=converged,
    )


# --------------------------------------------------------------------------- decision curves
@dataclass(frozen=True, eq=False)
class DecisionCurveResult(ResultMixin):
    """Net benefit of each predictor, treat-all and treat-none over risk thresholds.

    Attributes
    ----------
    table : long DataFrame with columns label, threshold, n, tp_rate, fp_rate,
        net_benefit (as dcurves' ``as_tibble()``); prevalence : event rate.
    """

    table: pd.DataFrame
    prevalence: float
    _title = "Decision curve"

    @property
    def net_benefit(self) -> pd.DataFrame:
        """Wide view: index threshold, one column per label ("all", "none", predictors)."""
        w = self.table.pivot(index="threshold", columns="label", values="net_benefit")
        order = list(dict.fromkeys(self.table["label"]))
        return w[order]

    def summary(self) -> pd.DataFrame:
        """The long table (label, threshold, n, tp_rate, fp_rate, net_benefit)."""
        return self.table.copy()

    def plot(self, ax=None, **kwargs):
        """Delegate to :func:`models.plotting.plot_decision_curve`."""
        from models.plotting import plot_decision_curve

        return plot_decision_curve(self, ax=ax, **kwargs)


def decision_curve(y_true, y_prob, *, thresholds=None) -> DecisionCurveResult:
    """Decision-curve analysis: net benefit ``TP/n - FP/n * pt / (1 - pt)``.

    Parameters
    ----------
    y_true : 0/1 outcome.
    y_prob : predicted risks in [0, 1]; one predictor, a DataFrame or a mapping of several.
    thresholds : risk thresholds in [0, 1); default ``0, 0.01, ..., 0.99`` (dcurves').

    Returns
    -------
    DecisionCurveResult

    Notes
    -----
    A patient is treated when risk >= pt. As in dcurves, risks of exactly 0 and 1 are
    first mapped to ``-eps`` and ``1 + eps``, so at pt = 0 a risk of 0 is *not* treated.
    Treat-all is ``prevalence - (1 - prevalence) * pt / (1 - pt)``, treat-none is 0.
    Counts at all thresholds come from one sort and ``searchsorted`` (O((n + T) log n)).

    Examples
    --------
    >>> d = decision_curve([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3], thresholds=[0.5])
    >>> d.net_benefit.round(3).to_dict("records")
    [{'all': 0.0, 'none': 0.0, 'score': 0.5}]
    """
    y = _binary(y_true, "decision_curve")
    p, names = _scores(y_prob, y.size, "decision_curve", "y_prob", like=y_true)
    for j, nm in enumerate(names):
        _probabilities(p[:, j], nm, "decision_curve")
    if thresholds is None:
        pt = np.arange(100) / 100.0
    else:
        pt = np.asarray(thresholds, dtype=np.float64).ravel()
        bad = ~((pt >= 0) & (pt < 1))
        if bad.any():
            raise ValueError(f"decision_curve: thresholds must lie in [0, 1); got {pt[bad][:5].tolist()}. "
                             "Net benefit is undefined at 1 (odds pt / (1 - pt) is infinite).")
    clash = [nm for nm in names if nm in ("all", "none")]
    if clash:
        raise ValueError(f"decision_curve: predictor names {clash} clash with the reference "
                         "strategies 'all' and 'none'; rename them (e.g. pass a dict).")
    n = y.size
    if n == 0:
        raise ValueError("decision_curve: no rows to evaluate.")
    prev = float(y.mean())
    odds = pt / (1 - pt)
    eps = np.finfo(np.float64).eps
    frames = [
        pd.DataFrame({"label": "all", "threshold": pt, "n": n, "tp_rate": prev,
                      "fp_rate": 1 - prev, "net_benefit": prev - (1 - prev) * odds}),
        pd.DataFrame({"label": "none", "threshold": pt, "n": n, "tp_rate": 0.0,
                      "fp_rate": 0.0, "net_benefit": 0.0}),
    ]
    for j, nm in enumerate(names):
        r = p[:, j].copy()
        r[r == 0] = -eps
        r[r == 1] = 1 + eps
        pos = np.sort(r[y == 1])
        neg = np.sort(r[y == 0])
        tp = (pos.size - np.searchsorted(pos, pt, side="left")) / n
        fp = (neg.size - np.searchsorted(neg, pt, side="left")) / n
        frames.append(pd.DataFrame({"label": nm, "threshold": pt, "n": n, "tp_rate": tp,
                                    "fp_rate": fp, "net_benefit": tp - fp * odds}))
    table = pd.concat(frames, ignore_index=True)
    table["label"] = table["label"].astype(str)
    return DecisionCurveResult(table, prev)


