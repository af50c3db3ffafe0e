"""Plots of the normative stage: centile curves, Z calibration, deviation profiles, brain maps.

The only module of :mod:`normative` that imports matplotlib or nilearn, inside each
function. Every function draws on an optional ``ax``, returns the ``Axes`` (or the
nilearn display for :func:`plot_brain_map`), and never refits, recomputes a model or
saves a file.

The brain map is drawn fully offline: markers at approximate MNI152 centroids of the
FreeSurfer ``aseg`` structures and Desikan-Killiany parcels on nilearn's glass brain,
whose outlines ship inside the nilearn package. No nilearn fetcher is ever called.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "plot_centiles",
    "plot_z_calibration",
    "plot_deviation_profile",
    "plot_brain_map",
    "region_coordinates",
    "REGION_MNI",
]

# Approximate MNI152 centroids (mm) of FreeSurfer aseg structures, left hemisphere /
# midline; right-hemisphere structures mirror x. Rounded from published atlas centroid
# tables; good to ~5 mm, which is enough to place a marker, not to localise anything.
_ASEG_LEFT = {
    "Lateral-Ventricle": (-18, -10, 20), "Inf-Lat-Vent": (-30, -20, -10),
    "Thalamus": (-11, -18, 7), "Caudate": (-13, 12, 10), "Putamen": (-25, 2, 0),
    "Pallidum": (-19, -2, -1), "Hippocampus": (-26, -21, -13), "Amygdala": (-23, -5, -19),
    "Accumbens-area": (-9, 11, -7), "VentralDC": (-11, -17, -8),
    "Cerebellum-Cortex": (-25, -62, -38), "Cerebellum-White-Matter": (-16, -55, -33),
    "Cerebral-White-Matter": (-27, -18, 28), "choroid-plexus": (-22, -30, 12),
}
_ASEG_MIDLINE = {
    "3rd-Ventricle": (0, -12, 4), "4th-Ventricle": (0, -45, -30), "Brain-Stem": (0, -28, -35),
    "CSF": (0, -30, -10), "CC_Posterior": (0, -35, 15), "CC_Mid_Posterior": (0, -18, 22),
    "CC_Central": (0, -2, 24), "CC_Mid_Anterior": (0, 14, 20), "CC_Anterior": (0, 28, 8),
}
# Desikan-Killiany parcels (left hemisphere; right mirrors x).
_DK_LEFT = {
    "bankssts": (-53, -45, 9), "caudalanteriorcingulate": (-5, 18, 29),
    "caudalmiddlefrontal": (-37, 10, 44), "cuneus": (-7, -80, 20), "entorhinal": (-25, -8, -33),
    "fusiform": (-35, -45, -19), "inferiorparietal": (-42, -66, 30),
    "inferiortemporal": (-50, -30, -24), "isthmuscingulate": (-7, -46, 16),
    "lateraloccipital": (-31, -87, 0), "lateralorbitofrontal": (-24, 30, -14),
    "lingual": (-15, -68, -5), "medialorbitofrontal": (-7, 40, -15),
    "middletemporal": (-57, -27, -10), "parahippocampal": (-25, -33, -15),
    "paracentral": (-8, -26, 58), "parsopercularis": (-45, 14, 14),
    "parsorbitalis": (-42, 38, -10), "parstriangularis": (-45, 30, 5),
    "pericalcarine": (-12, -82, 6), "postcentral": (-42, -23, 45),
    "posteriorcingulate": (-6, -14, 38), "precentral": (-37, -11, 46),
    "precuneus": (-10, -57, 39), "rostralanteriorcingulate": (-5, 35, 5),
    "rostralmiddlefrontal": (-33, 43, 18), "superiorfrontal": (-12, 25, 46),
    "superiorparietal": (-23, -59, 54), "superiortemporal": (-51, -14, -2),
    "supramarginal": (-50, -40, 33), "frontalpole": (-9, 63, -9),
    "temporalpole": (-30, 12, -33), "transversetemporal": (-43, -23, 10), "insula": (-36, -2, 3),
}


def _build_region_mni() -> dict[str, tuple[float, float, float]]:
    out: dict[str, tuple[float, float, float]] = dict(_ASEG_MIDLINE)
    for name, (x, y, z) in _ASEG_LEFT.items():
        out[f"Left-{name}"] = (x, y, z)
        out[f"Right-{name}"] = (-x, y, z)
    for name, (x, y, z) in _DK_LEFT.items():
        for hemi, sx in (("lh", 1), ("rh", -1)):
            c = (sx * x, y, z)
            for suffix in ("_volume", "_thickness", "_area", ""):
                out[f"{hemi}_{name}{suffix}"] = c
            out[f"ctx-{hemi}-{name}"] = c
    return out


#: Approximate MNI152 centroids by region name (FreeSurfer 7 aseg names, ``lh_<parcel>_volume``
#: aparcstats2table names and ``ctx-lh-<parcel>`` names).
REGION_MNI: dict[str, tuple[float, float, float]] = _build_region_mni()


def region_coordinates(regions: Sequence[str]):
    """Approximate MNI coordinates of ``regions``; returns ``(coords (k, 3), known, unknown)``."""
    known = [r for r in regions if r in REGION_MNI]
    unknown = [r for r in regions if r not in REGION_MNI]
    coords = np.array([REGION_MNI[r] for r in known], dtype=float).reshape(-1, 3)
    return coords, known, unknown


def _axes(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_centiles(model, response: str, *, ages: Sequence[float] | None = None, sex: str = "F",
                  site: str | None = None, icv: float | None = None,
                  centiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
                  patients=None, controls=None, overlay: str = "points", ax=None):
    """Normative centile curves of one response against age, with people overlaid.

    Parameters
    ----------
    model : fitted :class:`normative.model.NormativeModel`, or a
        :class:`normative.braincharts.BrainchartsModel` (curves at an adapted site by
        default, over the braincharts training age range).
    response : the region to draw (one of ``model.responses_``).
    ages : age grid (default: 100 points over the reference age range).
    sex, site, icv : the covariate values of the curves (default site: the first
        reference site, for braincharts the first adapted site; default ICV: the
        reference mean, from ``controls`` when given, else 1.45e6 mm3).
    centiles : the centiles drawn (median solid, others dashed).
    patients, controls : optional DataFrames with ``age`` and ``response`` columns,
        overlaid as points (patients in red). Their other covariates differ from the
        curves', so points are a visual guide; Z-scores are the exact comparison.
    overlay : {"points", "binned"}
        ``"points"`` draws every person; ``"binned"`` draws only aggregates: per 5-year
        age bin holding at least 5 people, the median and interquartile range (no
        individual is shown; used by the report's default aggregate-only mode).
    ax : matplotlib Axes.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import pandas as pd

    from normfuse.checks import check_is_fitted

    check_is_fitted(model, ["responses_"])
    if response not in model.responses_:
        raise ValueError(f"plot_centiles: {response!r} is not a response of the model; "
                         f"choose one of {list(model.responses_)[:10]}.")
    design = getattr(model, "design_", None)
    if design is not None:
        (lo, hi), covs, site_col = design.age_range, list(design.covariates), model.site_col
        first_site = model.sites_[0] if site_col is not None else None
    else:       # BrainchartsModel: age, sex and site; default site the first adapted one
        (lo, hi), covs, site_col = model.age_range_, ["age", "sex"], "site"
        extra = model.sites_[model.n_reference_sites_:]
        first_site = extra[0] if extra else model.sites_[0]
    grid = np.linspace(lo, hi, 100) if ages is None else np.asarray(ages, float)
    row: dict = {}
    for c in covs:
        if c == "sex":
            row[c] = sex
        elif c == "age":
            continue
        elif c == "icv":
            row[c] = (float(controls["icv"].mean()) if controls is not None and "icv" in controls
                      else 1.45e6 if icv is None else icv)
        else:
            row[c] = float(controls[c].mean()) if controls is not None and c in controls else 0.0
    if icv is not None and "icv" in covs:
        row["icv"] = icv
    if site_col is not None:
        row[site_col] = site if site is not None else first_site
    df = pd.DataFrame({"age": grid, **{k: [v] * len(grid) for k, v in row.items()}})
    cen = model.centiles(df, q=centiles)[response]
    ax = _axes(ax)
    for q in cen.columns:
        med = abs(float(q) - 0.5) < 1e-9
        ax.plot(grid, cen[q].to_numpy(float), color="0.15" if med else "0.45",
                ls="-" if med else "--", lw=1.6 if med else 1.0, label=f"{100 * float(q):g}th centile")
    if overlay not in ("points", "binned"):
        raise ValueError(f"plot_centiles: overlay={overlay!r}; expected 'points' or 'binned'.")
    for data, color, label in ((controls, "0.6", "controls"), (patients, "C3", "patients")):
        if data is None or response not in data or "age" not in data:
            continue
        a = data["age"].to_numpy(float)
        v = data[response].to_numpy(float)
        if overlay == "points":
            ax.scatter(a, v, s=8, alpha=0.6, color=color, label=label, zorder=3)
            continue
        mid, med, q1, q3 = _binned(a, v, width=5.0, min_n=5)
        if mid.size:
            ax.errorbar(mid, med, yerr=[med - q1, q3 - med], fmt="o", ms=4, color=color, capsize=2,
                        label=f"{label}: median, IQR per 5 y", zorder=3)
    ax.set_xlabel("Age (years)")
    ax.set_ylabel(f"{response} (mm³)")
    where = f", site {row[site_col]}" if site_col is not None else ""
    ax.set_title(f"{response}: sex {sex}{where}", fontsize=10)
    ax.legend(fontsize="x-small", frameon=False)
    return ax


def _binned(age, value, width: float, min_n: int):
    """Median and quartiles of ``value`` in age bins of ``width`` holding >= ``min_n`` points."""
    ok = np.isfinite(age) & np.isfinite(value)
    age, value = age[ok], value[ok]
    if age.size == 0:
        e = np.empty(0)
        return e, e, e, e
    b = np.floor(age / width).astype(int)
    out = []
    for k in np.unique(b):                    # a handful of age bins, not rows
        sel = value[b == k]
        if sel.size >= min_n:
            out.append(((k + 0.5) * width, *np.percentile(sel, [50, 25, 75])))
    arr = np.array(out, dtype=float).reshape(-1, 4)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def plot_z_calibration(z, ax=None, *, max_points: int = 5000):
    """Normal QQ plot of pooled deviation scores with the identity line (calibration of Z).

    Parameters
    ----------
    z : Z-scores of held-out healthy controls (DataFrame, Series or array; NaN ignored).
    max_points : the QQ plot shows at most this many evenly spaced quantiles.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from scipy.stats import norm

    v = np.asarray(z, dtype=float).ravel()
    v = np.sort(v[np.isfinite(v)])
    if v.size == 0:
        raise ValueError("plot_z_calibration: no finite Z-scores to draw.")
    n = v.size
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))
    theo = norm.ppf((idx + 0.5) / n)
    ax = _axes(ax, (4.5, 4.5))
    ax.plot(theo, v[idx], ".", ms=3, color="C0", label=f"held-out Z (n = {n})")
    lim = max(4.0, float(np.abs(theo).max()))
    ax.plot([-lim, lim], [-lim, lim], color="0.4", ls="--", lw=1, label="N(0, 1)")
    frac = float(np.mean(np.abs(v) > 1.96))
    ax.set_xlabel("Standard normal quantile")
    ax.set_ylabel("Observed Z quantile")
    ax.set_title(f"Z calibration: mean {v.mean():.2f}, sd {v.std(ddof=1):.2f}, "
                 f"|Z| > 1.96: {100 * frac:.1f} % (5 % ideal)", fontsize=9)
    ax.legend(fontsize="small", frameon=False)
    return ax


def _region_frequency(deviations, threshold: float, tail: str):
    """Fraction critical per region from a CriticalDeviations or a deviations table."""
    import pandas as pd

    if hasattr(deviations, "region_frequency"):
        return deviations.region_frequency()
    if isinstance(deviations, pd.Series):
        return deviations
    if not isinstance(deviations, pd.DataFrame):
        raise TypeError("plot_deviation_profile: pass a deviations table (DataFrame), a "
                        f"CriticalDeviations result or a Series; got {type(deviations).__name__}.")
    from normative.deviations import critical_deviations

    skip = {"subject_id", "session_id", "n_crit", "n_crit_neg", "n_crit_pos", "age_out_of_range",
            "age", "sex", "site", "icv", "volume_kind", "scan_date"}
    zcols = [c for c in deviations.columns
             if c not in skip and pd.api.types.is_numeric_dtype(deviations[c])]
    if not zcols:
        raise ValueError("plot_deviation_profile: the table has no Z columns.")
    return critical_deviations(deviations[zcols], threshold=threshold, tail=tail).region_frequency()


def plot_deviation_profile(deviations, ax=None, *, threshold: float = 1.96, tail: str = "both",
                           top: int | None = 30, expected: float | None = None):
    """Bars of the fraction of subjects with a critical deviation in each region.

    Parameters
    ----------
    deviations : a ``deviations`` table (Z columns per region), a
        :class:`normative.deviations.CriticalDeviations` (its own threshold/tail apply),
        or a Series of per-region fractions.
    threshold, tail : the critical-deviation rule for a table.
    top : show the ``top`` most frequent regions (None: all).
    expected : per-region fraction expected in healthy controls (default: 0.05 for
        ``tail="both"``, 0.025 for one tail), drawn as a dashed line.

    Returns
    -------
    matplotlib.axes.Axes
    """
    freq = _region_frequency(deviations, threshold, tail).astype(float).sort_values(ascending=False)
    if top is not None:
        freq = freq.iloc[:top]
    freq = freq.iloc[::-1]
    own = hasattr(deviations, "region_frequency")
    t = deviations.tail if own else tail
    if expected is None:
        from scipy.stats import norm

        thr = float(deviations.threshold if own else threshold)
        expected = float(2 * norm.sf(thr) if t == "both" else norm.sf(thr))
    ax = _axes(ax, (6, 0.22 * len(freq) + 1.2))
    ax.barh([str(i) for i in freq.index], 100 * freq.to_numpy(), color="C0")
    ax.axvline(100 * expected, color="C3", ls="--", lw=1, label=f"expected in controls ({100 * expected:.1f} %)")
    ax.set_xlabel("Subjects with a critical deviation (%)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    return ax


def plot_brain_map(values_by_region: Mapping[str, float], *, title: str | None = None,
                   cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                   display_mode: str = "lzr", figure=None, axes=None, node_size: float = 60):
    """Per-region values as coloured markers on nilearn's (bundled, offline) glass brain.

    Parameters
    ----------
    values_by_region : mapping (or Series) region name -> value, e.g. the fraction of
        patients with a critical deviation. Regions without a known centroid (see
        :data:`REGION_MNI`) are left out and listed in the display's ``unplaced``
        attribute and the log.
    title, cmap, vmin, vmax, display_mode, node_size : passed to
        :func:`nilearn.plotting.plot_markers`.
    figure, axes : a matplotlib Figure or Axes to draw into.

    Returns
    -------
    nilearn display (``.frame_axes`` is the matplotlib Axes it drew in).

    Notes
    -----
    Markers sit at approximate MNI152 centroids (about 5 mm); the map shows where the
    deviations are, not their extent. Drawn from files inside the nilearn package: no
    download is attempted.
    """
    from nilearn import plotting

    from normfuse.checks import get_logger

    items = dict(values_by_region.items())
    coords, known, unknown = region_coordinates(list(items))
    if unknown:
        get_logger("normative.plotting").info(
            "plot_brain_map: %d regions without a centroid were not drawn: %s", len(unknown), unknown[:10])
    if not known:
        raise ValueError("plot_brain_map: none of the regions has a known centroid; expected "
                         "FreeSurfer names such as 'Left-Thalamus' or 'lh_precuneus_volume'. "
                         f"Got {list(items)[:5]}.")
    vals = np.array([float(items[r]) for r in known])
    if vmin is None:
        vmin = float(np.nanmin(vals))
    if vmax is None:
        vmax = float(np.nanmax(vals))
    if vmax <= vmin:
        vmax = vmin + 1e-9
    disp = plotting.plot_markers(vals, coords, node_cmap=cmap, node_vmin=vmin, node_vmax=vmax,
                                 node_size=node_size, display_mode=display_mode, title=title,
                                 figure=figure, axes=axes, colorbar=True)
    disp.unplaced = unknown
    return disp
