"""Common checks over every analysis result: frozen, numeric summary, text/HTML, input untouched."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from analyses import (
    evaluate_rule,
    fit_counts,
    fit_cox,
    fit_mixed,
    fit_ols,
    fit_regional,
    kaplan_meier,
    logrank,
    match_controls,
    ph_test,
    simulate_cohort,
)
from analyses.simulate import DEEP_GREY
from analyses.stratify import DeviationRule

_COHORT = simulate_cohort(n_patients=80, n_controls=80, n_visits=3, seed=5)
_S = _COHORT.subjects
_P = _S.loc[_S["group"] == "patient"]
_C = _S.loc[_S["group"] == "control"]

CASES = {
    "counts": lambda: fit_counts("n_crit ~ group + age", _S, family="negbin"),
    "mixed": lambda: fit_mixed("edss ~ n_crit * years", _COHORT.visits, group="subject_id",
                               random_slope="years"),
    "ols": lambda: fit_ols("edss ~ n_crit", _COHORT.visits.loc[_COHORT.visits["years"] == 0]),
    "regional": lambda: fit_regional(_P.assign(edss=_P["n_crit"] * 0.2), DEEP_GREY, "edss ~ {region} + age"),
    "km": lambda: kaplan_meier(_P, "time_cdp", "event_cdp", group="high_risk"),
    "logrank": lambda: logrank(_P, "time_cdp", "event_cdp", "high_risk"),
    "cox": lambda: fit_cox(["high_risk", "age"], _P, "time_cdp", "event_cdp"),
    "ph": lambda: ph_test(fit_cox(["high_risk", "age"], _P, "time_cdp", "event_cdp")),
    "match": lambda: match_controls(_P, _C),
    "stratify": lambda: evaluate_rule(DeviationRule(DEEP_GREY), _P, visits=_COHORT.visits),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_result_contract(name):
    """Each result is a frozen dataclass with a numeric summary, text and HTML; inputs unchanged."""
    before = (_S.copy(), _COHORT.visits.copy())
    res = CASES[name]()
    assert dataclasses.is_dataclass(res)
    field = dataclasses.fields(res)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(res, field, None)
    tab = res.summary()
    assert isinstance(tab, pd.DataFrame) and len(tab) > 0
    num = tab.select_dtypes(include=[np.number])
    assert num.shape[1] >= 3 and num.shape[1] == tab.shape[1]
    assert res.to_text().splitlines()[0]
    assert "<table" in res._repr_html_()
    pd.testing.assert_frame_equal(_S, before[0])
    pd.testing.assert_frame_equal(_COHORT.visits, before[1])
