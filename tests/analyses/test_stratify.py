"""Stratification rules, truth recovery on the simulated cohort, and result plots."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.counts import fit_counts  # noqa: E402
from analyses.cox import fit_cox  # noqa: E402
from analyses.matching import match_controls  # noqa: E402
from analyses.mixed import fit_mixed  # noqa: E402
from analyses.simulate import DEEP_GREY, simulate_cohort  # noqa: E402
from analyses.stratify import DeviationRule, evaluate_rule, learn_rule  # noqa: E402
from analyses.survival import kaplan_meier  # noqa: E402
from normfuse.errors import ColumnContractError  # noqa: E402


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(seed=11)


def test_rule_counts_hand_case():
    """The rule counts lower critical deviations in the named regions only."""
    d = pd.DataFrame({"A": [-2.5, 0.0, -3.0], "B": [-2.0, 2.5, 0.0], "C": [-9.0, -9.0, -9.0]},
                     index=["x", "y", "z"])
    r = DeviationRule(("A", "B"), k=2)
    assert r.count(d).tolist() == [2, 0, 1]
    assert r.apply(d).tolist() == [True, False, False]
    assert DeviationRule(("A", "B"), k=1, tail="both").count(d).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="k=0"):
        DeviationRule(("A",), k=0)


def test_truth_recovery_one_replicate(cohort):
    """Planted IRR 2.7, EDSS beta 0.24 and HR 2.0 fall inside the estimated 95 % CIs."""
    s = cohort.subjects
    nb = fit_counts('n_crit ~ C(group, Treatment("control")) + age', s, family="negbin")
    lo, hi = nb.params.iloc[1][["irr_ci_low", "irr_ci_high"]]
    assert lo < cohort.truth["irr"] < hi
    lmm = fit_mixed("edss ~ n_crit + years", cohort.visits, group="subject_id")
    lo, hi = lmm.params.loc["n_crit", ["ci_low", "ci_high"]]
    assert lo < cohort.truth["edss_beta"] < hi
    pat = s.loc[s["group"] == "patient"]
    cox = fit_cox(["high_risk"], pat, "time_cdp", "event_cdp")
    lo, hi = cox.params.loc["high_risk", ["hr_ci_low", "hr_ci_high"]]
    assert lo < cohort.truth["hr"] < hi


def test_learned_rule_never_evaluated_on_training(cohort):
    """A learned rule refuses its training ids and evaluates on the held-out split."""
    pat = cohort.subjects.loc[cohort.subjects["group"] == "patient"]
    train, test = pat.iloc[::2], pat.iloc[1::2]
    rule = learn_rule(train, "cdp", regions=DEEP_GREY, k_grid=(1, 2, 3))
    assert rule.k in (1, 2, 3) and len(rule.trained_on) == len(train)
    with pytest.raises(ColumnContractError, match="used to learn the rule"):
        evaluate_rule(rule, pat)
    res = evaluate_rule(rule, test, visits=cohort.visits)
    t = res.summary()
    assert list(t.index) == ["cdp: HR high vs low", "relapse: HR high vs low",
                             "edss: extra change per years (high vs low)"]
    assert t.loc["cdp: HR high vs low", "n_high"] + t.loc["cdp: HR high vs low", "n_low"] == len(test)
    # the a-priori rule is the one planted: its CDP hazard ratio CI covers 2.0
    prior = evaluate_rule(DeviationRule(DEEP_GREY, k=1), pat)
    lo, hi = prior.table.iloc[0][["ci_low", "ci_high"]]
    assert lo < 2.0 < hi
    assert "fixed a priori" in prior.to_text()


def test_plots_draw_expected_artists(cohort, rng):
    """Forest, KM (with numbers at risk) and balance plots draw the expected artists headless."""
    import matplotlib.pyplot as plt

    s = cohort.subjects
    pat = s.loc[s["group"] == "patient"]
    cox = fit_cox(["high_risk", "age"], pat, "time_cdp", "event_cdp")
    ax = cox.plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["high_risk", "age"]
    assert ax.get_xscale() == "log"
    km = kaplan_meier(pat, "time_cdp", "event_cdp", group="high_risk")
    ax = km.plot()
    assert len(ax.get_lines()) == 2
    at_risk = [t for t in ax.texts if t.get_gid() == "at_risk"]
    assert len(at_risk) == 2 * 5 and at_risk[0].get_text() == str((pat["high_risk"] == 0).sum())
    ctrl = s.loc[s["group"] == "control"]
    m = match_controls(pat, ctrl)
    ax = m.plot()
    assert len(ax.get_lines()) == 3 and len(ax.get_yticklabels()) == 4
    html = m._repr_html_()
    assert "<table" in html and "smd_after" in html
    from analyses.cox import ph_test
    from analyses.survival import logrank

    ax = logrank(pat, "time_cdp", "event_cdp", "high_risk").plot()
    assert len(ax.patches) == 4 and "log-rank" in ax.get_title()
    ax = ph_test(cox).plot()
    assert len(ax.patches) == 3 and len(ax.get_lines()) == 3
    plt.close("all")


def test_training_guard_keys_on_subject_ids_not_row_labels(cohort):
    """Held-out rows under a reset index pass; training rows, renamed or not, are refused."""
    pat = cohort.subjects.loc[cohort.subjects["group"] == "patient"]
    train, test = pat.iloc[::2].reset_index(), pat.iloc[1::2].reset_index()
    # both splits now have the labels 0..n-1: only the subject_id column tells them apart
    rule = learn_rule(train, "cdp", regions=DEEP_GREY)
    assert rule.trained_id_col == "subject_id" and rule.trained_on == tuple(pat.index[::2])
    assert "ids from column 'subject_id'" in rule.describe()
    res = evaluate_rule(rule, test, endpoints=("cdp",))
    assert res.table.iloc[0][["n_high", "n_low"]].sum() == len(test)
    with pytest.raises(ColumnContractError, match=r"\d+ subjects were used to learn.*'P0000'"):
        evaluate_rule(rule, train)
    # the training rows under new ids are caught by their Z values
    renamed = train.assign(subject_id="X" + train["subject_id"])
    with pytest.raises(ColumnContractError, match=rf"{len(train)} rows of data have exactly.*'XP0000'"):
        evaluate_rule(rule, renamed)
    # a mix of held-out subjects and one renamed training row names only that row
    mixed = pd.concat([test, renamed.iloc[[3]]], ignore_index=True)
    with pytest.raises(ColumnContractError, match=r"1 rows of data.*\['XP0006'\]"):
        evaluate_rule(rule, mixed)
    assert evaluate_rule(rule, mixed, endpoints=("cdp",), check_copies=False).table.iloc[0][
        ["n_high", "n_low"]].sum() == len(test) + 1


def test_training_guard_refuses_default_integer_index(cohort):
    """Without a subject_id column, a default integer index is refused, naming the column to add."""
    pat = cohort.subjects.loc[cohort.subjects["group"] == "patient"]
    anon = pat.iloc[::2].reset_index(drop=True)
    with pytest.raises(ColumnContractError, match=r"no 'subject_id' column.*id_col="):
        learn_rule(anon, "cdp", regions=DEEP_GREY)
    rule = learn_rule(pat.iloc[::2], "cdp", regions=DEEP_GREY)   # ids from the named index
    assert rule.trained_id_col is None and rule.trained_on[0] == "P0000"
    with pytest.raises(ColumnContractError, match=r"unnamed integer index"):
        evaluate_rule(rule, pat.iloc[1::2].reset_index(drop=True))
    # an explicit id column works with any index, and the a-priori rule needs no ids
    held = pat.iloc[1::2].reset_index().rename(columns={"subject_id": "pid"})
    assert len(evaluate_rule(rule, held, endpoints=("cdp",), id_col="pid").table) == 1
    assert len(evaluate_rule(DeviationRule(DEEP_GREY), pat.reset_index(drop=True),
                             endpoints=("cdp",)).table) == 1
