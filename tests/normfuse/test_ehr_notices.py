"""EHR data notices: drop reasons counted apart, examples only when there are any, DEBUG repeats."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from features.ehr import EHRFeaturizer, parse_values
from normfuse.errors import DataDroppedWarning


def _events(values) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({"patient_id": [1, 1] + [2] * (n - 2),
                         "encounter_id": ["a", "a"] + ["b"] * (n - 2),
                         "time": pd.date_range("2020-01-01", periods=n, freq="h"),
                         "table": "lab", "variable": "crp", "value": values})


def _ehr(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("features.ehr")]


def test_numeric_missing_values_have_no_examples_clause(caplog):
    """OMOP-shaped numeric values: 'value missing' with its count, no promise of examples."""
    ev = _events(np.array([2.0, np.nan, 3.0, np.nan, np.nan, 5.0]))
    with caplog.at_level(logging.DEBUG, logger="normfuse"), \
            pytest.warns(DataDroppedWarning, match="dropped 3 events: value missing$"):
        EHRFeaturizer(min_patient_frac=0.5).fit(ev)
    msgs = [m for _, m in _ehr(caplog)]
    assert (logging.WARNING, "dropped 3 events: value missing") in _ehr(caplog)
    assert not [m for m in msgs if "example" in m or "e.g." in m], msgs
    assert "EHRFeaturizer.fit: 3 of 6 events usable" in msgs


def test_text_values_split_into_missing_censored_and_not_numeric(caplog):
    """Blank, censored (censored='nan') and non-numeric values are counted apart; examples named."""
    ev = _events([2.0, None, "<6", "pending", " ", 7, "n/a", "8.5"])
    with caplog.at_level(logging.DEBUG, logger="normfuse"), \
            warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        EHRFeaturizer(min_patient_frac=0.5, censored="nan").fit(ev)
    got = _ehr(caplog)
    W = logging.WARNING
    # None and " " are missing; "<6" is censored and set to NaN; "pending", "n/a" are text
    assert (W, "dropped 2 events: value missing") in got
    assert (W, "dropped 1 events: censored value ('<x', '>x') with censored='nan'") in got
    assert (W, "dropped 2 events: value not numeric (examples logged above)") in got
    assert (W, "EHRFeaturizer.fit: 2 non-numeric values set to NaN (e.g. ['pending', 'n/a'])") \
        in got
    assert "EHRFeaturizer.fit: 3 of 8 events usable" in [m for _, m in got]
    assert sorted(str(x.message) for x in w if x.category is DataDroppedWarning) == [
        "dropped 1 events: censored value ('<x', '>x') with censored='nan'",
        "dropped 2 events: value missing",
        "dropped 2 events: value not numeric (examples logged above)"]


def test_debug_level_repeats_keep_counts_but_stay_quiet(caplog):
    """log_level='debug' (per-fold refits) logs the same counts at DEBUG and warns nothing."""
    ev = _events([2.0, None, "<6", "pending", 4.0, 7])
    idx = pd.DataFrame({"patient_id": [1, 2], "index_date": pd.to_datetime(["2021-01-01"] * 2)})
    with caplog.at_level(logging.DEBUG, logger="normfuse"), \
            warnings.catch_warnings(record=True) as w0:
        warnings.simplefilter("always")
        EHRFeaturizer(min_patient_frac=0.5).fit(ev)
    assert len([x for x in w0 if x.category is DataDroppedWarning]) == 2
    loud = _ehr(caplog)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="normfuse"), \
            warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fz = EHRFeaturizer(min_patient_frac=0.5, log_level="debug").fit(ev)
        fz.summaries(idx, events=ev)
    quiet = _ehr(caplog)
    assert not [m for lv, m in quiet if lv >= logging.WARNING]
    assert not [x for x in w if x.category is DataDroppedWarning]
    # every WARNING of the loud fit is there at DEBUG, same text and counts
    assert {m for lv, m in loud if lv == logging.WARNING} == \
        {m for lv, m in quiet if lv == logging.DEBUG and m.startswith(("dropped", "EHRFeaturizer.fit"))}
    assert (logging.DEBUG, "dropped 1 events: value missing") in quiet
    assert EHRFeaturizer(log_level="debug").get_params()["log_level"] == "debug"


def test_log_level_checked():
    """An unknown log_level is refused naming the value."""
    with pytest.raises(ValueError, match=r"log_level='info'; expected 'warning' or 'debug'"):
        EHRFeaturizer(log_level="info").fit(_events([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"parse_values: got log_level='loud'"):
        parse_values(pd.Series(["1"]), log_level="loud")
