"""The statistics: matching, count models, mixed-effects models, survival, stratification.

Every function returns a frozen result with ``summary()`` (a numeric DataFrame),
``to_text()``, ``_repr_html_()`` and, where it makes sense, ``plot(ax=None)``. Numbers
agree with the R packages statisticians trust (MASS, lme4, survival); see the tests in
``tests/analyses``. Submodules are imported on first use so ``import analyses`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "fit_counts": "counts", "CountModelResult": "counts",
    "fit_mixed": "mixed", "fit_ols": "mixed", "fit_regional": "mixed",
    "MixedModelResult": "mixed", "OLSResult": "mixed", "RegionalResult": "mixed",
    "kaplan_meier": "survival", "logrank": "survival", "endpoint": "survival",
    "KaplanMeierResult": "survival", "LogRankResult": "survival",
    "fit_cox": "cox", "ph_test": "cox", "CoxResult": "cox", "PHTestResult": "cox",
    "match_controls": "matching", "MatchResult": "matching",
    "DeviationRule": "stratify", "learn_rule": "stratify", "evaluate_rule": "stratify",
    "StratificationResult": "stratify",
    "simulate_cohort": "simulate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"analyses.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'analyses' has no attribute {name!r}")


def __dir__():
    return __all__
