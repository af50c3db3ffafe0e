"""Plots of evaluation results (ROC with a CI band, calibration, decision curve) and SHAP bars.

Each function takes a result object and an optional ``ax``, draws, and returns the
``Axes``; none recomputes a statistic or saves a file. matplotlib is imported inside
each function (this is the only module of :mod:`models` that uses it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from models.calibration import CalibrationResult, DecisionCurveResult
    from models.evaluate import RocCurveResult

__all__ = ["plot_roc", "plot_calibration", "plot_decision_curve", "plot_shap_importance",
           "plot_feature_importance", "plot_modality_weights"]


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    return ax


def plot_roc(result: RocCurveResult, ax=None, *, color: str = "C0", band: bool = True):
    """ROC curve (step), chance diagonal and the bootstrap sensitivity band.

    The legend gives the AUC, its CI and how the CI was computed (``auc_ci_method``).

    Parameters
    ----------
    result : :class:`models.evaluate.RocCurveResult` from :func:`models.evaluate.roc_curve`.
    ax : matplotlib Axes to draw on (a new figure when None).
    color : line colour; band : draw the pointwise CI band of sensitivity.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    lo, hi = result.auc_ci
    how = "cluster bootstrap" if result.auc_ci_method == "cluster_bootstrap" else "DeLong"
    label = f"{result.name}: AUC {result.auc:.3f} ({lo:.3f}-{hi:.3f}, {how})"
    ax.plot(result.fpr, result.tpr, color=color, drawstyle="steps-post", label=label)
    if band:
        ax.fill_between(result.band_fpr, result.band_low, result.band_high, color=color,
                        alpha=0.2, step="post", label=f"{result.conf_level:.0%} CI of sensitivity")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("Sensitivity (true-positive rate)")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_calibration(result: CalibrationResult, ax=None, *, color: str = "C0"):
    """Observed event rate against mean predicted risk per bin, with the ideal diagonal.

    The legend states the calibration slope and intercept (calibration-in-the-large).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    b = result.bins
    top = max(1.0, float(b["mean_predicted"].max()), float(b["observed"].max()))
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=0.8, label="ideal")
    ax.plot(b["mean_predicted"], b["observed"], marker="o", color=color,
            label=f"slope {result.slope:.2f}, intercept {result.intercept:.2f}")
    ax.set_xlabel("Mean predicted risk")
    ax.set_ylabel("Observed event rate")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_decision_curve(result: DecisionCurveResult, ax=None, *, ymin: float | None = None):
    """Net benefit against threshold probability for every label (predictors, all, none).

    ``ymin`` defaults to a little below zero so that the steep treat-all line does not
    dominate the axis (as dcurves' plot does).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    nb = result.net_benefit
    styles = {"all": dict(color="grey", lw=1.0), "none": dict(color="black", lw=1.0, ls=":")}
    for j, label in enumerate(nb.columns):
        kw = styles.get(label, dict(color=f"C{j}", lw=1.5))
        name = {"all": "Treat all", "none": "Treat none"}.get(label, label)
        ax.plot(nb.index.to_numpy(), nb[label].to_numpy(), label=name, **kw)
    top = float(nb.to_numpy().max())
    ax.set_ylim(-0.05 * max(top, 0.01) if ymin is None else ymin, max(top, 0.01) * 1.05)
    ax.set_xlabel("Threshold probability")
    ax.set_ylabel("Net benefit")
    ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_shap_importance(shap, ax=None, *, top: int = 15, color: str = "C0"):
    """Horizontal bars of mean |SHAP| per feature (largest on top).

    Parameters
    ----------
    shap : DataFrame from :meth:`models.xgb.XGBClassifierModel.shap_values` (the ``bias``
        column is ignored).
    top : number of features shown.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    imp = shap.drop(columns=["bias"], errors="ignore").abs().mean().sort_values(ascending=False)
    imp = imp.iloc[:top][::-1]
    ax.barh([str(i) for i in imp.index], imp.to_numpy(), color=color)
    ax.set_xlabel("Mean |SHAP value| (log-odds)")
    return ax


def plot_feature_importance(importance, ax=None, *, top: int = 15, value: str = "mean_abs_shap",
                            color: str = "C0"):
    """Horizontal bars of an already aggregated importance table (largest on top).

    Parameters
    ----------
    importance : DataFrame with columns ``feature`` and ``value`` (e.g.
        :meth:`models.compare.ComparisonResult.shap_summary`); an ``sd_folds`` column, when
        present, is drawn as error bars.
    top : number of features shown.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    imp = importance.sort_values(value, ascending=False).iloc[:top][::-1]
    err = imp["sd_folds"].fillna(0.0).to_numpy() if "sd_folds" in imp.columns else None
    ax.barh(imp["feature"].astype(str).tolist(), imp[value].to_numpy(dtype=float), xerr=err,
            color=color)
    ax.set_xlabel("Mean |SHAP value| (log-odds)" if value == "mean_abs_shap" else value)
    return ax


def plot_modality_weights(weights, ax=None):
    """Grouped bars: mean fusion weight of each modality (columns) per model (rows).

    Parameters
    ----------
    weights : DataFrame indexed by model with one column per modality (e.g.
        :meth:`models.compare.ComparisonResult.modality_weights`).

    Returns
    -------
    matplotlib.axes.Axes
    """
    import numpy as np

    ax = _axes(ax)
    if weights.empty:
        ax.text(0.5, 0.5, "no modality weights (no bigru_attention/late model ran)",
                ha="center", va="center", transform=ax.transAxes)
        return ax
    mods = [str(c) for c in weights.columns]
    x = np.arange(len(mods))
    width = 0.8 / len(weights.index)
    for j, (model, row) in enumerate(weights.iterrows()):
        ax.bar(x + (j - (len(weights.index) - 1) / 2) * width, row.to_numpy(dtype=float), width,
               label=str(model), color=f"C{j}")
    ax.set_xticks(x)
    ax.set_xticklabels(mods)
    ax.set_ylabel("Mean weight over test patients and folds")
    ax.legend(loc="upper right", fontsize="small")
    return ax
