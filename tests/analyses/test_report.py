"""The HTML report (analyses.report) and the normative plots it embeds (normative.plotting)."""
from __future__ import annotations

import base64
import re
import warnings
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from numpy.testing import assert_allclose  # noqa: E402

from analyses.report import STANDARD_SECTIONS, build_report, cohort_table  # noqa: E402
from normfuse.results import ResultMixin  # noqa: E402


@pytest.fixture(scope="module")
def small():
    """Small results computed from a synthetic cohort whose notes hold planted PHI."""
    from analyses import fit_counts, fit_cox, fit_mixed, kaplan_meier
    from analyses import simulate_cohort as sim_stats
    from models.evaluate import evaluate_predictions, roc_curve
    from normative.model import NormativeModel
    from normfuse.synthetic import SUBCORTICAL_REGIONS, simulate_cohort

    c = simulate_cohort(n_patients=30, n_controls_reference=300, seed=5)
    regs = list(SUBCORTICAL_REGIONS)[:12]
    ref = c.reference_controls
    nm = NormativeModel(responses=regs, likelihood="normal").fit(ref.iloc[:220])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dev = nm.deviations(c.patient_volumes)
    s = sim_stats(n_patients=60, n_controls=40, seed=3)
    subj = s.subjects.reset_index()
    pat = subj.loc[subj["group"] == "patient"]
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 120)
    p = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(size=120))))
    shap = pd.DataFrame(rng.normal(size=(40, 3)), columns=["dev__a", "ehr__b", "txt__0"],
                        index=c.patient_volumes["subject_id"].iloc[:40].to_numpy())
    shap.index.name = "patient_id"
    return {
        "cohort": c, "model": nm, "held_out": ref.iloc[220:], "regions": regs, "dev": dev,
        "counts": fit_counts("n_crit ~ C(group)", subj),
        "mixed": fit_mixed("edss ~ n_crit + years", s.visits, group="subject_id"),
        "km": kaplan_meier(pat, "time_cdp", "event_cdp", group="high_risk"),
        "cox": fit_cox("high_risk", pat, "time_cdp", "event_cdp"),
        "eval": evaluate_predictions(y, p, n_boot=100), "roc": roc_curve(y, p, n_boot=50),
        "shap": shap,
    }


def _full(small, **kw):
    c = small["cohort"]
    return build_report({
        "cohort": c.demographics,
        "normative": {"model": small["model"], "held_out": small["held_out"],
                      "patients": c.patient_volumes, "responses": small["regions"][:2]},
        "deviations": small["dev"], "counts": small["counts"], "mixed": [small["mixed"]],
        "km": small["km"], "cox": small["cox"],
        "comparison": {"deviation model": small["eval"], "deviations": small["roc"]},
        "shap": small["shap"], "modality_weights": {"dev": 0.5, "ehr": 0.3, "txt": 0.2},
    }, settings={"cv_folds": 5}, dpi=50, **kw)


@pytest.fixture(scope="module")
def full(small):
    """The full aggregate-only report, built once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _full(small)


def test_full_report_has_every_section_and_figures(full):
    """Every standard section renders, with the expected number of embedded figures."""
    tab = full.summary()
    assert list(tab.index) == list(STANDARD_SECTIONS)
    assert (tab["status"] == "ok").all(), tab
    assert full.not_run == ()
    # normative: QQ + centiles + expected/observed; deviations: profile + brain map; ROC + cal/DCA
    assert tab.loc["normative", "n_figures"] == 3
    assert tab.loc["deviations", "n_figures"] == 2
    assert tab.loc["comparison", "n_figures"] == 2
    html = full.to_html()
    assert html.count("<img ") == tab["n_figures"].sum() == 13
    # every image is a decodable PNG data URI, nothing refers outside the page
    for uri in re.findall(r'src="([^"]+)"', html):
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(?:href|src)=\"(?:https?:)?//", html)
    assert "<script" not in html and "default-src 'none'" in html


def test_methods_report_versions_and_settings(full):
    """Methods name package versions and the settings taken from the result objects."""
    import numpy
    import pandas

    html = full.to_html()
    methods = html.split('id="methods"')[1]
    assert f"numpy {numpy.__version__}" in methods and f"pandas {pandas.__version__}" in methods
    for pkg in ("statsmodels", "lifelines", "xgboost", "torch", "normfuse"):
        assert pkg in methods
    st = full.settings.set_index(["section", "setting"])["value"]
    assert st[("normative", "likelihood")] == "normal"
    assert st[("deviations", "threshold")] == 1.96 and st[("deviations", "tail")] == "both"
    assert st[("counts", "family")] == "poisson"
    assert st[("km", "conf_type")] == "log"
    assert st[("cox", "ties")] == full.settings.query("section == 'cox' and setting == 'ties'")["value"].iloc[0]
    assert st[("user", "cv_folds")] == 5
    assert st[("comparison: deviation model", "n_boot")] == 100


def test_no_phi_or_identifiers_by_default(full, small):
    """No planted PHI token and no subject/patient id appears in the default report."""
    c = small["cohort"]
    html = full.to_html()
    tokens = c.truth.phi["token"].astype(str).unique()
    assert len(tokens) > 50
    assert [t for t in tokens if t in html] == []
    ids = set(c.patient_volumes["subject_id"]) | set(c.demographics["patient_id"]) | set(
        c.reference_controls["subject_id"])
    assert [i for i in ids if i in html] == []
    assert "sub-MS0001" in set(c.demographics["patient_id"])       # the check could fail


def test_identifier_leak_is_refused():
    """A generic result whose table is indexed by patient ids is refused unless allowed."""
    @dataclass(frozen=True)
    class PerPatient(ResultMixin):
        table: pd.DataFrame

        def summary(self):
            return self.table

    t = pd.DataFrame({"patient_id": ["sub-X0001", "sub-X0002"], "risk": [0.2, 0.7]})
    res = PerPatient(t.set_index("patient_id"))
    with pytest.raises(ValueError, match=r"section 'risks' would show the identifier 'sub-X000\d'"):
        build_report({"risks": res, "inputs": t})
    rep = build_report({"risks": res, "inputs": t}, include_individual=True)
    assert "sub-X0001" in rep.to_html()


def test_notes_are_never_rendered(small):
    """Passing clinical notes is refused; note-text columns are dropped from any table."""
    c = small["cohort"]
    with pytest.raises(ValueError, match="never shows"):
        build_report({"notes": c.notes})
    agg = pd.DataFrame({"n": [3, 4], "text": ["Patient John Smith", "MRN 1234567"]}, index=["a", "b"])
    html = build_report({"extra": agg}).to_html()
    assert "John Smith" not in html and "1234567" not in html


def test_missing_sections_listed_not_faked(small):
    """Sections without input are listed as not run and produce no content."""
    rep = build_report({"counts": small["counts"]}, dpi=40)
    tab = rep.summary()
    assert tab.loc["counts", "status"] == "ok"
    assert set(tab.index[tab["status"] == "not run"]) == set(STANDARD_SECTIONS) - {"counts"}
    html = rep.to_html()
    assert 'id="not-run"' in html and 'id="km"' not in html and 'id="cox"' not in html
    assert html.count("<img ") == 1                                  # the IRR forest plot only


def test_brain_map_never_calls_a_fetcher(monkeypatch, small):
    """The deviation section draws its brain map with every nilearn fetcher disabled."""
    import nilearn.datasets as nd

    def boom(*a, **k):
        raise AssertionError("a nilearn fetcher was called (network access)")

    import nilearn.datasets._utils as nu

    for name in dir(nd):
        if name.startswith(("fetch_", "load_")):
            monkeypatch.setattr(nd, name, boom)
    for name in ("fetch_files", "fetch_single_file"):             # the download primitives
        monkeypatch.setattr(nu, name, boom)
    rep = build_report({"deviations": small["dev"]}, dpi=40)
    assert rep.summary().loc["deviations", "n_figures"] == 2
    assert "Brain map" in rep.to_html()


def test_save_is_atomic_and_equals_to_html(tmp_path, small):
    """save() writes exactly to_html() and replaces an existing file."""
    rep = build_report({"counts": small["counts"]}, title="IRR <only>", dpi=40)
    out = tmp_path / "r.html"
    out.write_text("old")
    rep.save(out)
    assert out.read_text(encoding="utf-8") == rep.to_html()
    assert "<title>IRR &lt;only&gt;</title>" in rep.to_html()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    assert rep._repr_html_().startswith("<iframe srcdoc=")


def test_cohort_table_against_hand_computation():
    """Table-1 numbers equal hand-computed means, SDs and percentages per group."""
    d = pd.DataFrame({"patient_id": ["p1", "p2", "p3", "p4", "p5"],
                      "group": ["ms", "ms", "ms", "hc", "hc"],
                      "age": [30.0, 40.0, 50.0, 20.0, np.nan], "sex": ["F", "F", "M", "M", "F"]})
    t = cohort_table(d, group="group")
    assert list(t.columns) == ["all", "hc", "ms"]
    assert t.loc[("n", "n"), "ms"] == 3
    assert t.loc[("age", "mean"), "ms"] == 40.0
    assert_allclose(t.loc[("age", "sd"), "ms"], 10.0)                      # sd(c(30, 40, 50))
    assert t.loc[("age", "missing"), "hc"] == 1
    assert_allclose(t.loc[("sex", "F: percent"), "ms"], 200 / 3)
    assert "patient_id" not in t.index.get_level_values(0)
    rep = build_report({"cohort": {"data": d, "group": "group"}})
    assert "p1" not in re.sub(r"<[^>]+>", " ", rep.to_html()).split()


def test_plot_centiles_match_model_centiles(small):
    """Drawn centile curves equal NormativeModel.centiles on the same grid."""
    from normative.plotting import plot_centiles

    nm, r = small["model"], small["regions"][0]
    ages = np.linspace(20, 70, 11)
    ax = plot_centiles(nm, r, ages=ages, sex="M", icv=1.5e6, centiles=(0.1, 0.5, 0.9))
    assert len(ax.lines) == 3
    grid = pd.DataFrame({"age": ages, "sex": "M", "icv": 1.5e6, "site": nm.sites_[0]})
    ref = nm.centiles(grid, q=(0.1, 0.5, 0.9))[r]
    for line, q in zip(ax.lines, (0.1, 0.5, 0.9), strict=True):
        assert_allclose(line.get_ydata(), ref[q].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="not a response"):
        plot_centiles(nm, "Left-Nowhere")


def test_plot_centiles_binned_overlay_shows_no_individual(small):
    """The binned overlay draws bin medians (checked by hand), never individual points."""
    from normative.plotting import plot_centiles

    nm, r = small["model"], small["regions"][0]
    rng = np.random.default_rng(2)
    pts = pd.DataFrame({"age": np.r_[rng.uniform(30, 35, 6), rng.uniform(40, 45, 3)],
                        r: rng.normal(7000, 300, 9)})
    ax = plot_centiles(nm, r, patients=pts, overlay="binned")
    assert len(ax.collections) == 0 or all(len(c.get_offsets()) != len(pts) for c in ax.collections)
    marker = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(marker) == 1                                        # the 40-45 bin has < 5 people
    assert_allclose(marker[0].get_xdata(), [32.5])
    assert_allclose(marker[0].get_ydata(), [np.median(pts[r].to_numpy()[:6])])
    ax2 = plot_centiles(nm, r, patients=pts, overlay="points")
    assert len(ax2.collections[0].get_offsets()) == 9


def test_plot_z_calibration_and_profile_planted():
    """QQ points are the sorted Z; profile bars equal planted per-region frequencies."""
    from normative.deviations import critical_deviations
    from normative.plotting import plot_deviation_profile, plot_z_calibration

    rng = np.random.default_rng(4)
    z = rng.standard_normal(400)
    ax = plot_z_calibration(z)
    assert_allclose(ax.lines[0].get_ydata(), np.sort(z))
    zz = pd.DataFrame({"Left-Thalamus": np.r_[-3.0 * np.ones(30), np.zeros(70)],
                       "Right-Thalamus": np.r_[2.5 * np.ones(10), np.zeros(90)],
                       "Brain-Stem": np.zeros(100)})
    ax = plot_deviation_profile(critical_deviations(zz))
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert widths == {"Left-Thalamus": 30.0, "Right-Thalamus": 10.0, "Brain-Stem": 0.0}
    ax = plot_deviation_profile(zz, tail="lower")
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert widths["Right-Thalamus"] == 0.0 and widths["Left-Thalamus"] == 30.0


def test_brain_map_places_known_regions():
    """Markers go to the tabulated centroids; unknown names are listed, not guessed."""
    from normative.plotting import REGION_MNI, plot_brain_map, region_coordinates

    coords, known, unknown = region_coordinates(["Left-Thalamus", "Right-Thalamus", "rh_insula_volume", "x"])
    assert known == ["Left-Thalamus", "Right-Thalamus", "rh_insula_volume"] and unknown == ["x"]
    assert_allclose(coords[1], [11, -18, 7])                       # mirrored left centroid
    assert REGION_MNI["lh_insula_volume"][0] == -REGION_MNI["rh_insula_volume"][0]
    disp = plot_brain_map({"Left-Thalamus": 0.3, "Brain-Stem": 0.1, "x": 1.0})
    assert disp.unplaced == ["x"]
    with pytest.raises(ValueError, match="no known centroid|none of the regions"):
        plot_brain_map({"foo": 1.0})


def test_include_individual_shows_points(small):
    """With include_individual=True the centile figure is drawn with patient points."""
    c = small["cohort"]
    rep = build_report({"normative": {"model": small["model"], "patients": c.patient_volumes,
                                      "responses": small["regions"][:1]}},
                       include_individual=True, dpi=40)
    html = rep.to_html()
    assert "patients as points" in html and "may show individual-level" in html
