"""Plots of analysis results: forest plots, Kaplan-Meier curves with numbers at risk, balance.

The only module of ``analyses`` that imports matplotlib, inside each function. Every
function takes a result and an optional ``ax``, draws, and returns the ``Axes``; none
recomputes statistics or saves files.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["forest_plot", "km_plot", "balance_plot", "observed_expected_plot", "chisq_plot"]


def _axes(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def forest_plot(result, ax=None, terms: Sequence[str] | None = None, include_intercept: bool = False):
    """Point estimates and 95 % CIs, one row per term (ratios on a log axis).

    Uses ``irr``/``hr`` columns when the result has them (reference line at 1, log
    x-axis), otherwise ``coef`` with a reference line at 0.
    """
    tab = result.summary() if not hasattr(result, "params") else result.params
    if terms is not None:
        tab = tab.loc[list(terms)]
    elif not include_intercept:
        tab = tab.loc[[t for t in tab.index if t not in ("Intercept", "(Intercept)")]]
    ax = _axes(ax, (6, 0.45 * len(tab) + 1.2))
    ratio = next((c for c in ("irr", "hr") if c in tab.columns), None)
    if ratio:
        est, lo, hi, ref = tab[ratio], tab[f"{ratio}_ci_low"], tab[f"{ratio}_ci_high"], 1.0
    else:
        est, lo, hi, ref = tab["coef"], tab["ci_low"], tab["ci_high"], 0.0
    y = np.arange(len(tab))[::-1]
    ax.hlines(y, lo.to_numpy(float), hi.to_numpy(float), color="0.2", lw=1.5)
    ax.plot(est.to_numpy(float), y, "s", color="C0", ms=6, label="estimate")
    ax.axvline(ref, color="0.5", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([str(t) for t in tab.index])
    if ratio:
        ax.set_xscale("log")
        ax.set_xlabel({"irr": "Incidence rate ratio (95 % CI)", "hr": "Hazard ratio (95 % CI)"}[ratio])
    else:
        ax.set_xlabel("Estimate (95 % CI)")
    return ax


def km_plot(result, ax=None, at_risk: bool = True, ci: bool = True, n_ticks: int = 5):
    """Kaplan-Meier step curves per group with pointwise CIs and a numbers-at-risk table.

    The numbers at risk are drawn as text below the axis at the x tick positions, one
    row per group.
    """
    ax = _axes(ax, (6.5, 4.5))
    tab = result.table
    groups = list(dict.fromkeys(tab["group"]))
    for k, g in enumerate(groups):
        t = tab.loc[tab["group"] == g]
        x = np.r_[0.0, t["time"].to_numpy(float)]
        s = np.r_[1.0, t["surv"].to_numpy(float)]
        label = str(g) if result.group else "all"
        ax.step(x, s, where="post", color=f"C{k}", label=label)
        if ci:
            lo = np.r_[1.0, t["ci_low"].to_numpy(float)]
            hi = np.r_[1.0, t["ci_high"].to_numpy(float)]
            ax.fill_between(x, lo, hi, step="post", color=f"C{k}", alpha=0.15, lw=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(result.duration)
    ax.set_ylabel("Survival probability")
    ax.set_title(f"Kaplan-Meier ({result.conf_type} CI)")
    if result.group:
        ax.legend(title=result.group, frameon=False)
    if at_risk:
        tmax = float(tab["time"].max())
        ticks = np.linspace(0, tmax, n_ticks)
        ax.set_xticks(ticks)
        risk = result.survival_at(ticks)
        trans = ax.get_xaxis_transform()
        ax.text(-0.02, -0.22, "At risk", transform=ax.transAxes, ha="right", fontsize=8, weight="bold")
        for k, g in enumerate(groups):
            r = risk.loc[risk["group"] == g]
            yoff = -0.3 - 0.08 * k
            ax.text(-0.02, yoff, str(g) if result.group else "all", transform=ax.transAxes,
                    ha="right", fontsize=8, color=f"C{k}")
            for tt, n in zip(r["time"], r["n_risk"], strict=True):
                ax.text(tt, yoff, str(int(n)), transform=trans, ha="center", fontsize=8,
                        color=f"C{k}", gid="at_risk")
    return ax


def balance_plot(result, ax=None, threshold: float = 0.1):
    """Love plot: |SMD| per covariate before and after matching, line at ``threshold``."""
    ax = _axes(ax, (5.5, 0.5 * len(result.balance) + 1.5))
    b = result.balance
    y = np.arange(len(b))[::-1]
    ax.plot(b["smd_before"].abs().to_numpy(float), y, "o", mfc="none", color="C3", label="before")
    ax.plot(b["smd_after"].abs().to_numpy(float), y, "o", color="C0", label="after")
    ax.axvline(threshold, color="0.5", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([str(i) for i in b.index])
    ax.set_xlabel("|standardised mean difference|")
    ax.legend(frameon=False)
    return ax


def observed_expected_plot(result, ax=None):
    """Grouped bars of observed and expected events per group of a log-rank test."""
    ax = _axes(ax)
    tab = result.table
    x = np.arange(len(tab))
    ax.bar(x - 0.2, tab["observed"].to_numpy(float), width=0.4, color="C0", label="observed")
    ax.bar(x + 0.2, tab["expected"].to_numpy(float), width=0.4, color="C1", label="expected")
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in tab.index])
    ax.set_ylabel("events" + (" (weighted)" if result.rho else ""))
    ax.set_title(f"{result.test}: chisq {result.chisq:.3g} on {result.df} df, p = {result.p:.3g}")
    ax.legend(frameon=False)
    return ax


def chisq_plot(result, ax=None, level: float = 0.05):
    """Horizontal bars of each term's chi-square with its critical value marked."""
    from scipy import stats

    ax = _axes(ax)
    tab = result.table
    y = np.arange(len(tab))[::-1]
    ax.barh(y, tab["chisq"].to_numpy(float), color="C0")
    for yy, df in zip(y, tab["df"], strict=True):
        crit = stats.chi2.ppf(1 - level, df)
        ax.plot([crit, crit], [yy - 0.4, yy + 0.4], color="C3", lw=2)
    ax.set_yticks(y)
    ax.set_yticklabels([str(i) for i in tab.index])
    ax.set_xlabel(f"chi-square (red: {1 - level:.0%} critical value)")
    return ax
