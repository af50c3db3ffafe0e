"""The statistics: matching, count models, mixed-effects models, survival, stratification.

Every function returns a frozen result with ``summary()`` (a numeric DataFrame),
``to_text()``, ``_repr_html_()`` and, where it makes sense, ``plot(ax=None)``. Numbers
agree with the R packages statisticians trust (MASS, lme4, survival); see the tests in
``tests/analyses``. Submodules are imported on first use so ``import analyses`` stays light.

R call -> normfuse call
-----------------------
==========================================================  =====================================================
``glm(y ~ x, family = poisson, d)``                          ``fit_counts("y ~ x", d)``
``MASS::glm.nb(y ~ x, d)``                                   ``fit_counts("y ~ x", d, family="negbin")``
``glm(y ~ x, family = negative.binomial(1), d)``             ``fit_counts(..., family="negbin", theta=1)``
``lmer(y ~ x + (1 | id), d)`` (+ lmerTest df)                ``fit_mixed("y ~ x", d, group="id")``
``lmer(y ~ x + (t | id), d, REML = FALSE)``                  ``fit_mixed(..., random_slope="t", reml=False)``
``lmer(y ~ x + (t || id), d)``                               ``fit_mixed(..., random_slope="t", correlated=False)``
``lm(y ~ x, d)``                                             ``fit_ols("y ~ x", d)``
``survfit(Surv(t, e) ~ g, d)`` (``conf.type = "log"``)       ``kaplan_meier(d, "t", "e", group="g")``
``survdiff(Surv(t, e) ~ g, d, rho = r)``                     ``logrank(d, "t", "e", "g", rho=r)``
``coxph(Surv(t, e) ~ x + strata(s), d, ties = "breslow")``   ``fit_cox("x", d, "t", "e", strata="s", ties="breslow")``
``coxph(Surv(t0, t1, e) ~ x, d)``                            ``fit_cox("x", d, "t1", "e", start="t0")``
``cox.zph(fit)`` (survival >= 3.0)                           ``ph_test(fit)``
``MatchIt::matchit(g ~ age + sex + icv, d)``                 ``match_controls(patients, controls)``
``p.adjust(p, "BH")`` across regions                         ``fit_regional(d, regions, "y ~ {region}")``
==========================================================  =====================================================
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
    "build_report": "report", "Report": "report", "cohort_table": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"analyses.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'analyses' has no attribute {name!r}")


def __dir__():
    return __all__
