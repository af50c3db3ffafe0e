"""One self-contained HTML report assembled from existing result objects.

:func:`build_report` takes a mapping of named inputs (results of the normative,
models and analyses stages, and DataFrames) and returns a :class:`Report`; it never
refits a model. Figures are drawn with matplotlib (Agg) and embedded as base64 PNG
data URIs, styles are inline, and a Content-Security-Policy forbids the page any
outside request, so the file opens offline and can be e-mailed as is.

Privacy: by default (``include_individual=False``) the report shows aggregates only.
Per-subject tables are summarised, patients on centile curves appear as binned
medians, note text is never rendered, and the finished page is scanned for every
subject, patient, session and encounter identifier found in the inputs: if one
appears, :func:`build_report` raises instead of returning the page.
"""
from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normfuse.checks import get_logger
from normfuse.persist import atomic_write_text

__all__ = ["build_report", "Report", "ReportSection", "cohort_table", "STANDARD_SECTIONS"]

log = get_logger("analyses.report")

#: Sections of a full analysis, in report order: key -> title. Missing ones are listed
#: as "not run".
STANDARD_SECTIONS: dict[str, str] = {
    "cohort": "Cohort",
    "normative": "Normative model diagnostics",
    "deviations": "Deviation profile",
    "counts": "Critical-deviation counts (incidence rate ratios)",
    "mixed": "Mixed-effects models",
    "km": "Kaplan-Meier curves",
    "cox": "Cox models",
    "comparison": "Model comparison",
    "shap": "Feature importance (SHAP)",
    "modality_weights": "Modality weights",
}
_EXTRA_TITLES = {
    "matching": "Control matching", "logrank": "Log-rank tests", "ph": "Proportional-hazards checks",
    "stratify": "Risk stratification", "evaluation": "Prediction evaluation", "roc": "ROC curves",
}
_ID_COLUMNS = ("subject_id", "patient_id", "session_id", "encounter_id", "person_id", "mrn",
               "visit_occurrence_id", "note_id")
_TEXT_COLUMNS = ("text", "note_text", "note")
_VERSION_PACKAGES = ("normfuse", "numpy", "scipy", "pandas", "scikit-learn", "statsmodels",
                     "lifelines", "xgboost", "torch", "nilearn", "matplotlib")
_MAX_ROWS = 40

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #345;padding-bottom:.3em}h2{margin-top:2em;color:#234;border-bottom:1px solid #ccd}
h3{color:#345}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccd;padding:.25em .5em;text-align:right}th{background:#eef1f5}
.fig{margin:.8em 0}.fig img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#555;font-size:.9em}.notrun{color:#a33}nav ul{columns:2;font-size:.9em}
.warn{background:#fff4e5;border-left:4px solid #e90;padding:.4em .8em}
"""


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ReportSection:
    """One rendered section: key, title, HTML body, figure count and status."""

    key: str
    title: str
    html: str
    n_figures: int
    status: str = "ok"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """A built report: rendered sections, methods text and the settings it reports.

    Attributes
    ----------
    title : str
    sections : tuple of ReportSection, in report order (only sections that ran).
    not_run : tuple of str, standard sections that had no input.
    versions : dict, package -> version.
    settings : DataFrame, one row per (section, setting) taken from the result objects.
    include_individual : bool, whether individual-level data were allowed.
    """

    title: str
    sections: tuple[ReportSection, ...]
    not_run: tuple[str, ...]
    versions: dict
    settings: pd.DataFrame = field(repr=False)
    include_individual: bool = False
    _methods_html: str = field(default="", repr=False)

    def summary(self) -> pd.DataFrame:
        """One row per section: title, status ('ok', 'partial', 'not run') and figures."""
        rows = [(s.key, s.title, s.status, s.n_figures) for s in self.sections]
        rows += [(k, STANDARD_SECTIONS.get(k, k), "not run", 0) for k in self.not_run]
        return pd.DataFrame(rows, columns=["section", "title", "status", "n_figures"]).set_index("section")

    def to_html(self) -> str:
        """The complete, self-contained HTML document."""
        nav = "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in self.sections)
        body = "".join(
            f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>{s.html}</section>' for s in self.sections)
        notrun = ""
        if self.not_run:
            items = "".join(f"<li>{html.escape(STANDARD_SECTIONS.get(k, k))} (<code>{k}</code>)</li>"
                            for k in self.not_run)
            notrun = (f'<section id="not-run"><h2>Not run</h2><p class="notrun">No input was given for '
                      f"these sections, so they are absent (nothing is estimated in their place):</p>"
                      f"<ul>{items}</ul></section>")
        privacy = ("Aggregate results only: no identifiers, per-patient rows or note text."
                   if not self.include_individual else
                   "This report was built with include_individual=True and may show individual-level "
                   "data (never note text). Do not share it outside the study team.")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p class=\"note\">{privacy}</p>"
            f"<nav><ul>{nav}<li><a href=\"#methods\">Methods</a></li></ul></nav>"
            f"{body}{notrun}<section id=\"methods\"><h2>Methods</h2>{self._methods_html}</section>"
            "</body></html>\n")

    def save(self, path: str | Path) -> Path:
        """Write the HTML to ``path`` atomically (no partial file is ever visible)."""
        return atomic_write_text(path, self.to_html())

    def _repr_html_(self) -> str:
        doc = html.escape(self.to_html(), quote=True)
        return f'<iframe srcdoc="{doc}" style="width:100%;height:600px;border:1px solid #ccc"></iframe>'


# --------------------------------------------------------------------------- helpers
def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in _VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class _Figures:
    """Renders matplotlib figures to embedded PNG data URIs and counts them."""

    def __init__(self, dpi: int):
        self.dpi = dpi
        self.n = 0

    @staticmethod
    def new(nrows=1, ncols=1, figsize=(6, 4)):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        return fig, axes

    def img(self, fig, alt: str) -> str:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        self.n += 1
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return (f'<div class="fig"><img alt="{html.escape(alt)}" '
                f'src="data:image/png;base64,{data}"></div>')

    def plot(self, draw, alt: str, figsize=(6, 4)) -> str:
        fig, axes = self.new(figsize=figsize)
        draw(axes[0, 0])
        return self.img(fig, alt)


def _table(df: pd.DataFrame, max_rows: int = _MAX_ROWS) -> str:
    df = df.drop(columns=[c for c in df.columns if str(c).lower() in _TEXT_COLUMNS], errors="ignore")
    more = ""
    if len(df) > max_rows:
        more = f'<p class="note">{len(df) - max_rows} more rows not shown.</p>'
        df = df.iloc[:max_rows]
    return df.to_html(float_format=lambda v: f"{v:.4g}", na_rep="", border=0) + more


def _result_html(obj) -> str:
    if hasattr(obj, "_repr_html_"):
        return obj._repr_html_()
    if hasattr(obj, "summary"):
        s = obj.summary()
        return _table(s) if isinstance(s, pd.DataFrame) else f"<pre>{html.escape(str(s))}</pre>"
    return f"<pre>{html.escape(str(obj))}</pre>"


def _as_list(obj) -> list[tuple[str | None, Any]]:
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(None, v) for v in obj]
    return [(None, obj)]


def _scalar_fields(obj) -> dict:
    """Scalar settings of a result dataclass (str, int, float, bool; tuples of str)."""
    out = {}
    if is_dataclass(obj):
        for f in fields(obj):
            if f.name.startswith("_"):
                continue
            v = getattr(obj, f.name)
            if isinstance(v, (bool, int, float, str, np.integer, np.floating, np.bool_)):
                out[f.name] = v.item() if isinstance(v, np.generic) else v
    elif hasattr(obj, "get_params"):
        for k, v in obj.get_params().items():
            if isinstance(v, (bool, int, float, str)) or v is None:
                out[k] = v
            elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) and len(v) <= 10:
                out[k] = ", ".join(v)
    return out


def _is_individual(df: pd.DataFrame) -> bool:
    return any(c in df.columns for c in _ID_COLUMNS) or df.index.name in _ID_COLUMNS or any(
        n in _ID_COLUMNS for n in (df.index.names or []))


def _collect_ids(obj, out: set, depth: int = 0) -> None:
    """String identifiers (subject/patient/session/encounter ids) found in the inputs."""
    if depth > 3:
        return
    if isinstance(obj, pd.DataFrame):
        for c in _ID_COLUMNS:
            if c in obj.columns:
                out.update(str(v) for v in pd.unique(obj[c].dropna()))
        for lvl, name in enumerate(obj.index.names or []):
            if name in _ID_COLUMNS:
                out.update(str(v) for v in pd.unique(obj.index.get_level_values(lvl).dropna()))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _collect_ids(v, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_ids(v, out, depth + 1)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            _collect_ids(getattr(obj, f.name), out, depth + 1)


def cohort_table(data: pd.DataFrame, group: str | None = None,
                 columns: Sequence[str] | None = None, max_levels: int = 8) -> pd.DataFrame:
    """Aggregate description of a cohort ("Table 1"), numbers only.

    Parameters
    ----------
    data : one row per person (or scan).
    group : optional column splitting the table (e.g. ``"group"``: patient/control).
    columns : columns described (default: every column except identifiers, dates and
        free text).
    max_levels : categorical columns with more levels are left out (they would list
        individuals).

    Returns
    -------
    DataFrame indexed by (variable, statistic) with one column per group and ``all``:
    ``n``; for numeric columns ``mean``, ``sd``, ``median``, ``q1``, ``q3``, ``missing``;
    for categorical columns ``n`` and ``percent`` per level.

    Examples
    --------
    >>> d = pd.DataFrame({"age": [30.0, 40.0, 50.0], "sex": ["F", "F", "M"]})
    >>> float(cohort_table(d).loc[("sex", "F: percent"), "all"].round(1))
    66.7
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"cohort_table: data must be a DataFrame, got {type(data).__name__}.")
    if group is not None and group not in data.columns:
        raise ValueError(f"cohort_table: group column {group!r} is missing; present: {list(data.columns)[:20]}.")
    if columns is None:
        columns = [c for c in data.columns
                   if c not in _ID_COLUMNS and c != group and str(c).lower() not in _TEXT_COLUMNS
                   and not pd.api.types.is_datetime64_any_dtype(data[c])]
    parts = {"all": data}
    if group is not None:
        for g, sub in data.groupby(group, sort=True, observed=True):
            parts[str(g)] = sub
    out: dict[str, dict] = {}
    for name, sub in parts.items():
        col: dict = {("n", "n"): float(len(sub))}
        for c in columns:
            s = sub[c]
            if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
                levels = data[c].dropna().astype(str)
                uniq = sorted(pd.unique(levels))
                if len(uniq) > max_levels:
                    continue
                vals = s.dropna().astype(str)
                for lv in uniq:
                    k = float((vals == lv).sum())
                    col[(str(c), f"{lv}: n")] = k
                    col[(str(c), f"{lv}: percent")] = 100 * k / max(len(vals), 1)
            else:
                v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
                f = v[np.isfinite(v)]
                stats = ({"mean": f.mean(), "sd": f.std(ddof=1) if f.size > 1 else np.nan,
                          "median": np.median(f), "q1": np.percentile(f, 25), "q3": np.percentile(f, 75)}
                         if f.size else dict.fromkeys(("mean", "sd", "median", "q1", "q3"), np.nan))
                for k, val in stats.items():
                    col[(str(c), k)] = float(val)
                col[(str(c), "missing")] = float(v.size - f.size)
        out[name] = col
    tab = pd.DataFrame(out)
    tab.index = pd.MultiIndex.from_tuples(tab.index, names=["variable", "statistic"])
    return tab


# --------------------------------------------------------------------------- sections
class _Builder:
    def __init__(self, inputs: Mapping[str, Any], include_individual: bool, dpi: int,
                 threshold: float | None, tail: str | None, centile_regions: int):
        self.inputs = inputs
        self.individual = include_individual
        self.figs = _Figures(dpi)
        self.settings: list[tuple[str, str, Any]] = []
        self.centile_regions = centile_regions
        from normative.deviations import CriticalDeviations

        dev = inputs.get("deviations")
        dev = dev if isinstance(dev, CriticalDeviations) else None
        self.threshold = threshold if threshold is not None else (dev.threshold if dev else 1.96)
        self.tail = tail if tail is not None else (dev.tail if dev else "both")
        self._held_out_z = None

    def setting(self, section: str, name: str, value) -> None:
        self.settings.append((section, name, value))

    def record(self, section: str, obj) -> None:
        for k, v in _scalar_fields(obj).items():
            self.setting(section, k, v)

    # -- generic results (counts, mixed, cox, km, matching, comparison, ...) --
    def generic(self, key: str, obj) -> tuple[str, list[str]]:
        parts, notes = [], []
        for name, res in _as_list(obj):
            title = f"<h3>{html.escape(name)}</h3>" if name else ""
            if isinstance(res, pd.DataFrame):
                if _is_individual(res) and not self.individual:
                    notes.append(f"{name or key}: an individual-level table was not shown "
                                 "(aggregate-only report).")
                    continue
                parts.append(title + _table(res))
                continue
            self.record(key if not name else f"{key}: {name}", res)
            parts.append(title + _result_html(res))
            for meth in self._plot_methods(res):
                try:
                    parts.append(self.figs.plot(lambda ax, m=meth, r=res: getattr(r, m)(ax=ax),
                                                alt=f"{key} {name or ''} {meth}".strip(),
                                                figsize=(6.5, 4.5)))
                except (TypeError, ValueError, KeyError, AttributeError) as exc:
                    notes.append(f"{name or key}: figure {meth}() could not be drawn ({exc}).")
        return "".join(parts), notes

    @staticmethod
    def _plot_methods(res) -> list[str]:
        names = [m for m in dir(type(res)) if m == "plot" or m.startswith("plot_")]
        return [m for m in names if callable(getattr(res, m, None))]

    # -- cohort --
    def cohort(self, obj) -> tuple[str, list[str]]:
        notes = []
        if isinstance(obj, Mapping) and "data" in obj:
            data, group = obj["data"], obj.get("group")
        else:
            data, group = obj, None
        if not isinstance(data, pd.DataFrame):
            return self.generic("cohort", obj)
        if group is None and "group" in data.columns:
            group = "group"
        if _is_individual(data) or not self.individual:
            n_id = next((data[c].nunique() for c in ("patient_id", "subject_id") if c in data.columns), None)
            tab = cohort_table(data, group=group)
            head = (f'<p class="note">{n_id} distinct people in {len(data)} rows.</p>'
                    if n_id is not None else "")
            return head + _table(tab, max_rows=200), notes
        return _table(data), notes

    # -- normative --
    def normative(self, obj) -> tuple[str, list[str]]:
        from normative.deviations import critical_deviations

        spec = dict(obj) if isinstance(obj, Mapping) else {"model": obj}
        model = spec.get("model")
        held, patients, controls = spec.get("held_out"), spec.get("patients"), spec.get("controls")
        parts, notes = [], []
        if model is not None and type(model).__name__ == "BrainchartsModel":
            parts.append("<h3>Model</h3>" + self._braincharts_info(model))
        elif model is not None:
            self.record("normative", model)
            d = model.design_
            info = pd.DataFrame({"value": [
                model.likelihood, model.backend, model.predictive, ", ".join(d.covariates),
                len(model.responses_), len(d.sites), len(getattr(d, "extra_sites", [])),
                f"{d.age_range[0]:.1f}-{d.age_range[1]:.1f}"]},
                index=["likelihood", "backend", "predictive", "covariates", "responses",
                       "reference sites", "adapted sites", "reference age range (years)"])
            parts.append("<h3>Model</h3>" + _table(info))
        score = spec.get("score")
        zh = spec.get("z_held_out")
        if model is not None and held is not None:
            if score is None:
                score = model.score(held)
            if zh is None:
                zh = model.transform(held)
        if score is not None:
            agg = score.describe().T[["mean", "min", "50%", "max"]].rename(columns={"50%": "median"})
            who = spec.get("held_out_label")
            who = f"Controls: {html.escape(str(who))}. " if who else ""
            parts.append(f"<h3>Held-out control calibration</h3><p class=\"note\">{who}Across "
                         f"{len(score)} regions (EXPV, SMSE, MSLL, Rho; Z moments should be 0, 1, 0, 0 "
                         "and |Z| &gt; 1.96 should occur in 5 % of controls).</p>" + _table(agg))
            parts.append(f"<details><summary>Per region</summary>{_table(score, max_rows=500)}</details>")
        if zh is not None:
            zarr = zh.to_numpy(dtype=float) if isinstance(zh, pd.DataFrame) else np.asarray(zh, float)
            self._held_out_z = zh
            from normative.plotting import plot_z_calibration

            parts.append(self.figs.plot(lambda ax: plot_z_calibration(zarr, ax=ax),
                                        alt="Q-Q plot of held-out control Z-scores", figsize=(4.5, 4.5)))
        if model is not None and (controls is not None or patients is not None):
            parts.append(self._centile_figures(model, spec, controls, patients))
        # expected vs observed critical deviations
        zp = spec.get("z_patients")
        if zp is None and model is not None and patients is not None:
            zp = model.transform(patients)
        if zp is not None and zh is not None:
            cp = critical_deviations(zp, self.threshold, self.tail, reference_z=zh)
            ch = critical_deviations(zh, self.threshold, self.tail)
            parts.append("<h3>Expected vs observed critical deviations</h3>"
                         + self.figs.plot(lambda ax: _plot_expected_observed(ch, cp, ax),
                                          alt="Critical-deviation counts, held-out controls vs patients",
                                          figsize=(7, 4)))
            self.setting("normative", "threshold", self.threshold)
            self.setting("normative", "tail", self.tail)
        elif zp is not None:
            notes.append("expected vs observed counts need held-out controls (held_out= or z_held_out=).")
        return "".join(parts), notes

    def _braincharts_info(self, model) -> str:
        """The model table of a braincharts reference; its facts go to the methods too."""
        from analyses._report_braincharts import braincharts_facts

        facts, note = braincharts_facts(model)
        for k, v in facts.items():
            self.setting("normative", k, v)
        self.setting("normative", "reference_kind", "braincharts")
        info = pd.DataFrame({"value": [str(v) for v in facts.values()]}, index=list(facts))
        return _table(info) + (f'<p class="note">{html.escape(note)}</p>' if note else "")

    def _centile_figures(self, model, spec, controls, patients) -> str:
        from normative.plotting import plot_centiles

        regions = spec.get("responses")
        if regions is None:
            regions = list(model.responses_)[: self.centile_regions]
        k = len(regions)
        ncols = min(2, k)
        nrows = int(np.ceil(k / ncols))
        fig, axes = self.figs.new(nrows, ncols, figsize=(6 * ncols, 4 * nrows))
        overlay = "points" if self.individual else "binned"
        sex = spec.get("sex", "F")
        site = spec.get("site")
        for i, r in enumerate(regions):
            plot_centiles(model, r, sex=sex, site=site, patients=patients,
                          controls=controls if self.individual else None, overlay=overlay,
                          ax=axes.flat[i])
        for j in range(k, nrows * ncols):
            axes.flat[j].set_visible(False)
        fig.tight_layout()
        what = "patients as points" if self.individual else "patients as binned medians and IQRs"
        return (f"<h3>Centile curves</h3><p class=\"note\">{what}; curves for sex {html.escape(str(sex))}."
                "</p>" + self.figs.img(fig, "Normative centile curves with patients overlaid"))

    # -- deviations --
    def deviations(self, obj) -> tuple[str, list[str]]:
        from normative.deviations import CriticalDeviations, critical_deviations
        from normative.plotting import plot_brain_map, plot_deviation_profile

        notes = []
        if isinstance(obj, CriticalDeviations):
            res = obj
        elif isinstance(obj, pd.DataFrame):
            skip = {*_ID_COLUMNS, "n_crit", "n_crit_neg", "n_crit_pos", "age_out_of_range", "age",
                    "sex", "site", "icv", "volume_kind", "scan_date"}
            zcols = [c for c in obj.columns if c not in skip and pd.api.types.is_numeric_dtype(obj[c])]
            ref = self._held_out_z
            if ref is not None and isinstance(ref, pd.DataFrame):
                ref = ref[[c for c in zcols if c in ref.columns]] if set(zcols) <= set(ref.columns) else None
            res = critical_deviations(obj[zcols], self.threshold, self.tail, reference_z=ref)
        else:
            return self.generic("deviations", obj)
        self.setting("deviations", "threshold", res.threshold)
        self.setting("deviations", "tail", res.tail)
        self.setting("deviations", "expected count from", str(res.expected["source"].iloc[0]))
        freq = res.region_frequency()
        neg = pd.DataFrame({"frac_critical": freq})
        parts = [res._repr_html_(),
                 "<h3>Count distribution</h3>" + _table(
                     res.counts["n_crit"].value_counts().sort_index().rename("subjects")
                     .rename_axis("n_crit").to_frame().T, max_rows=5),
                 "<h3>Per-region frequency</h3>",
                 self.figs.plot(lambda ax: plot_deviation_profile(res, ax=ax),
                                alt="Fraction of subjects with a critical deviation per region",
                                figsize=(7, 0.22 * min(30, len(freq)) + 1.5))]
        try:
            def draw(ax):
                disp = plot_brain_map(100 * freq, axes=ax, title="% with a critical deviation")
                if disp.unplaced:
                    notes.append(f"{len(disp.unplaced)} regions have no centroid and are not on the map.")
            parts.append("<h3>Brain map</h3><p class=\"note\">Markers at approximate MNI152 centroids "
                         "on nilearn's bundled glass brain.</p>"
                         + self.figs.plot(draw, alt="Brain map of critical-deviation frequency",
                                          figsize=(9, 3.2)))
        except ValueError as exc:
            notes.append(f"brain map not drawn: {exc}")
        top = neg.sort_values("frac_critical", ascending=False).head(15)
        parts.append("<h3>Most frequently deviating regions</h3>" + _table(top))
        return "".join(parts), notes

    # -- comparison: EvaluationResult(s), ROC curves, anything with summary/plot --
    def comparison(self, obj) -> tuple[str, list[str]]:
        from models.evaluate import EvaluationResult, RocCurveResult

        items = _as_list(obj)
        from dataclasses import replace

        rocs = [(n, replace(r, name=n) if n and r.name == "score" else r)
                for n, r in items if isinstance(r, RocCurveResult)]
        evals = [(n, r) for n, r in items if isinstance(r, EvaluationResult)]
        rest = [(n, r) for n, r in items if not isinstance(r, (RocCurveResult, EvaluationResult))]
        parts, notes = [], []
        if rocs:
            def draw(ax):
                for k, (_, r) in enumerate(rocs):
                    r.plot(ax=ax, color=f"C{k}")
            methods = sorted({r.auc_ci_label for _, r in rocs})
            parts.append(f"<h3>ROC curves (AUC CI: {html.escape(', '.join(methods))}; bootstrap "
                         "sensitivity band)</h3>"
                         + self.figs.plot(draw, alt="ROC curves with confidence bands", figsize=(5.5, 5.5)))
        for name, ev in evals:
            self.record(f"comparison: {name}" if name else "comparison", ev.bootstrap)
            parts.append(f"<h3>{html.escape(name or 'Evaluation')}</h3>" + ev._repr_html_())
            fig, axes = self.figs.new(1, 2, figsize=(11, 4.5))
            ev.calibration.plot(ax=axes[0, 0])
            ev.decision.plot(ax=axes[0, 1])
            fig.tight_layout()
            parts.append(self.figs.img(fig, f"Calibration and decision curve: {name}"))
        if rest:
            h, n = self.generic("comparison", dict(rest) if all(k for k, _ in rest) else [r for _, r in rest])
            parts.append(h)
            notes += n
        return "".join(parts), notes

    def shap(self, obj) -> tuple[str, list[str]]:
        from models.plotting import plot_shap_importance

        parts = []
        for name, s in _as_list(obj):
            if not isinstance(s, pd.DataFrame):
                raise TypeError("build_report: 'shap' takes SHAP DataFrames (XGBClassifierModel.shap_values), "
                                f"got {type(s).__name__}.")
            if {"feature", "mean_abs_shap"} <= set(s.columns):     # already aggregated (ComparisonResult)
                from models.plotting import plot_feature_importance

                parts.append((f"<h3>{html.escape(name)}</h3>" if name else "")
                             + "<p class=\"note\">Mean |SHAP| per feature (log-odds), averaged over "
                             "cross-validation folds.</p>"
                             + self.figs.plot(lambda ax, s=s: plot_feature_importance(s, ax=ax),
                                              alt="Mean absolute SHAP value per feature", figsize=(6, 5))
                             + _table(s.set_index("feature").head(20)))
                continue
            imp = s.drop(columns=["bias"], errors="ignore").abs().mean().sort_values(ascending=False)
            parts.append((f"<h3>{html.escape(name)}</h3>" if name else "")
                         + f"<p class=\"note\">Mean |SHAP| over {len(s)} predictions (log-odds).</p>"
                         + self.figs.plot(lambda ax, s=s: plot_shap_importance(s, ax=ax),
                                          alt="Mean absolute SHAP value per feature", figsize=(6, 5))
                         + _table(imp.rename("mean_abs_shap").to_frame().head(20)))
        return "".join(parts), []

    def modality_weights(self, obj) -> tuple[str, list[str]]:
        if hasattr(obj, "summary") and not isinstance(obj, pd.DataFrame):
            return self.generic("modality_weights", obj)
        if isinstance(obj, Mapping):
            obj = pd.Series(obj, dtype=float)
        if isinstance(obj, pd.DataFrame) and _is_individual(obj) and not self.individual:
            obj = obj.drop(columns=[c for c in _ID_COLUMNS if c in obj.columns]).mean(numeric_only=True)
        if isinstance(obj, pd.DataFrame) and not _is_individual(obj) and len(obj) <= 10:
            # one row per fusion model (ComparisonResult.modality_weights): show each
            tab = obj.astype(float)

            def draw_models(ax, tab=tab):
                tab.T.plot.bar(ax=ax, rot=0)
                ax.set_ylabel("Mean modality weight")
                ax.legend(fontsize=7)
            return (self.figs.plot(draw_models, alt="Modality weights per fusion model", figsize=(6, 3.5))
                    + _table(tab)), []
        if isinstance(obj, pd.DataFrame):
            obj = obj.mean(numeric_only=True)
        w = obj.astype(float)

        def draw(ax):
            ax.bar([str(i) for i in w.index], w.to_numpy(), color=[f"C{k}" for k in range(len(w))])
            ax.set_ylabel("Mean modality weight")
        return (self.figs.plot(draw, alt="Modality weights", figsize=(5, 3.5))
                + _table(w.rename("weight").to_frame())), []


def _plot_expected_observed(controls, patients, ax):
    """Mean critical-deviation count in held-out controls vs patients, with 95 % CIs."""
    def mci(c):
        n = c.counts["n_crit"].to_numpy(float)
        se = n.std(ddof=1) / np.sqrt(n.size) if n.size > 1 else np.nan
        return n.mean(), 1.96 * se
    (m0, e0), (m1, e1) = mci(controls), mci(patients)
    ax.bar([0, 1], [m0, m1], yerr=[e0, e1], color=["0.6", "C3"], capsize=4)
    ax.set_xticks([0, 1])
    ax.set_xticklabels([f"held-out controls (n = {len(controls.counts)})",
                        f"patients (n = {len(patients.counts)})"])
    from scipy.stats import norm

    t = controls.threshold
    p = 2 * norm.sf(t) if controls.tail == "both" else norm.sf(t)
    ax.axhline(p * controls.flags.shape[1], color="0.3", ls="--", lw=1,
               label=f"nominal ({100 * p:.1f} % of {controls.flags.shape[1]} regions)")
    ax.set_ylabel(f"Mean regions with |Z| > {t:g} ({controls.tail})")
    ax.legend(fontsize="small", frameon=False)
    return ax


def _methods_html(b: _Builder, versions: dict, keys: Sequence[str]) -> str:
    s = pd.DataFrame(b.settings, columns=["section", "setting", "value"])
    if len(s):
        s = s.drop_duplicates(["section", "setting"], keep="last")
        s["value"] = s["value"].map(str)
    sentences = []
    nm = s.loc[(s["section"] == "normative")].set_index("setting")["value"] if len(s) else pd.Series()
    if nm.get("reference_kind") == "braincharts":
        from analyses._report_braincharts import braincharts_methods

        sentences.append(braincharts_methods(nm))
    elif "likelihood" in nm:
        sentences.append(
            f"Normative models were fitted to healthy reference controls with a {nm['likelihood']} "
            f"likelihood ({nm.get('backend', 'native')} backend, covariates {nm.get('covariates', '')}, "
            f"{nm.get('predictive', '')} predictive distribution; site as a random effect). "
            "Deviation scores (Z) of held-out controls assess calibration.")
    if "deviations" in keys or "threshold" in nm:
        sentences.append(f"A region was a critical deviation when |Z| > {b.threshold:g} (tail: {b.tail}); "
                         "the expected count in healthy controls is reported beside every patient count.")
    if "counts" in keys:
        sentences.append("Counts of critical deviations were modelled with log-link GLMs (Poisson or "
                         "negative binomial, theta by maximum likelihood as MASS::glm.nb); rate ratios have "
                         "Wald 95 % CIs.")
    if "mixed" in keys:
        sentences.append("EDSS trajectories were modelled with linear mixed models (REML unless stated, "
                         "Satterthwaite degrees of freedom as lmerTest).")
    if "km" in keys or "cox" in keys:
        sentences.append("Time to event was described with Kaplan-Meier curves (Greenwood variance) and "
                         "Cox proportional-hazards models (ties as stated); proportional hazards were checked "
                         "with scaled Schoenfeld residuals where reported.")
    if "comparison" in keys:
        sentences.append("Prediction models were compared on identical patient-grouped folds: AUROC with "
                         "DeLong CIs, AUPRC and Brier score with stratified-bootstrap CIs, calibration slope "
                         "and intercept, and decision curves.")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    return ("<p>" + " ".join(sentences) + "</p>"
            f"<p>Software: {html.escape(vers)}.</p><h3>Settings</h3>"
            + (_table(s.set_index(["section", "setting"]), max_rows=400) if len(s) else "<p>none recorded</p>"))


# --------------------------------------------------------------------------- entry point
def build_report(results: Mapping[str, Any], *, title: str = "normfuse report",
                 include_individual: bool = False, settings: Mapping[str, Any] | None = None,
                 threshold: float | None = None, tail: str | None = None,
                 centile_regions: int = 4, dpi: int = 90) -> Report:
    """Assemble existing results into one self-contained HTML report.

    Parameters
    ----------
    results : mapping of section name -> input. Recognised sections (see
        :data:`STANDARD_SECTIONS`; others are rendered generically from ``summary()``,
        ``_repr_html_()`` and ``plot``/``plot_*`` methods):

        - ``"cohort"``: a DataFrame (per person: summarised by :func:`cohort_table`,
          split by a ``group`` column when present) or ``{"data": df, "group": col}``.
        - ``"normative"``: a fitted ``NormativeModel`` or ``BrainchartsModel`` (described
          as the published braincharts reference: source, training sites, adapted
          sites, age range), or a dict with ``model`` and any of ``held_out`` (held-out
          controls: calibration, expected counts), ``held_out_label`` (who they are),
          ``patients`` (overlaid on centile curves; observed counts), ``controls``,
          ``responses`` (regions drawn), ``sex``, ``site``, or precomputed ``score``,
          ``z_held_out``, ``z_patients``.
        - ``"deviations"``: a deviations table or a ``CriticalDeviations``.
        - ``"counts"``, ``"mixed"``, ``"km"``, ``"cox"``, ``"logrank"``, ``"ph"``,
          ``"matching"``, ``"stratify"``: result objects, lists or ``{name: result}``.
        - ``"comparison"``: ``EvaluationResult``/``RocCurveResult`` objects by name, or a
          comparison result (rendered from ``summary()`` and its plot methods).
        - ``"shap"``: SHAP DataFrames by name; ``"modality_weights"``: Series or mapping.
    title : page title.
    include_individual : allow individual-level content (patient points on centile
        curves, per-subject tables). Default False: aggregates only, and the page is
        checked to contain none of the identifiers found in the inputs.
    settings : further settings to report in the methods (e.g. ``{"cv_folds": 5}``).
    threshold, tail : critical-deviation rule (default: the deviations result's, or 1.96
        and "both").
    centile_regions : how many regions get centile curves when ``responses`` is not given.
    dpi : resolution of embedded figures.

    Returns
    -------
    Report

    Raises
    ------
    ValueError
        If, in aggregate-only mode, an identifier from the inputs would appear in the page.

    Examples
    --------
    >>> from analyses import simulate_cohort, fit_counts
    >>> sim = simulate_cohort(n_patients=60, n_controls=60, seed=1)
    >>> res = fit_counts("n_crit ~ C(group)", sim.subjects.reset_index())
    >>> rep = build_report({"counts": res})
    >>> rep.summary().loc["counts", "status"], "cohort" in rep.not_run
    ('ok', True)
    """
    import matplotlib

    if not isinstance(results, Mapping):
        raise TypeError("build_report: pass a mapping of section name -> result, e.g. "
                        "{'counts': fit_counts(...), 'km': kaplan_meier(...)}; "
                        f"got {type(results).__name__}.")
    if "notes" in results:
        raise ValueError("build_report: 'notes' holds clinical-note text, which a report never shows. "
                         "Pass aggregate results computed from the notes (e.g. a model comparison).")
    b = _Builder(results, include_individual, dpi, threshold, tail, centile_regions)
    order = [k for k in STANDARD_SECTIONS if k in results]
    order += [k for k in results if k not in STANDARD_SECTIONS]
    sections = []
    with matplotlib.rc_context({"font.size": 9}):
        for key in order:
            obj = results[key]
            if obj is None:
                continue
            handler = getattr(b, key, None) if key in ("cohort", "normative", "deviations", "comparison",
                                                       "shap", "modality_weights") else None
            body, notes = handler(obj) if handler else b.generic(key, obj)
            note_html = "".join(f'<p class="warn">{html.escape(n)}</p>' for n in notes)
            title_ = STANDARD_SECTIONS.get(key) or _EXTRA_TITLES.get(key) or key.replace("_", " ").capitalize()
            sections.append(ReportSection(key=re.sub(r"[^A-Za-z0-9_-]", "-", key), title=title_,
                                          html=body + note_html, n_figures=body.count("<img "),
                                          status="partial" if notes else "ok", notes=tuple(notes)))
    for k, v in (settings or {}).items():
        b.setting("user", str(k), v)
    versions = _versions()
    not_run = tuple(k for k in STANDARD_SECTIONS if results.get(k) is None)
    st = pd.DataFrame(b.settings, columns=["section", "setting", "value"])
    rep = Report(title=title, sections=tuple(sections), not_run=not_run, versions=versions,
                 settings=st, include_individual=include_individual,
                 _methods_html=_methods_html(b, versions, order))
    if not include_individual:
        _check_no_identifiers(rep, results)
    log.info("report %r: %d sections, %d figures, not run: %s", title, len(sections), b.figs.n, not_run)
    return rep


def _check_no_identifiers(rep: Report, results: Mapping[str, Any]) -> None:
    ids: set[str] = set()
    _collect_ids(dict(results), ids)
    # purely numeric or very short ids would match ordinary numbers in tables
    ids = {i for i in ids if len(i) >= 4 and not re.fullmatch(r"[0-9.\-eE+]+", i)}
    if not ids:
        return
    for s in rep.sections:
        text = html.unescape(re.sub(r'src="data:[^"]*"', "", s.html))
        hit = next((i for i in ids if i in text), None)
        if hit is not None:
            raise ValueError(
                f"build_report: section {s.key!r} would show the identifier {hit!r} from the inputs, "
                "but the report is aggregate-only. Pass aggregate results for that section, or "
                "build_report(..., include_individual=True) for an internal report.")
