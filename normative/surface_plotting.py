"""Vertex-wise maps on nilearn's bundled fsaverage5 mesh (offline; matplotlib engine).

nilearn ships the fsaverage5 meshes and sulcal depth inside its package, so these
plots need no download. matplotlib and nilearn are imported inside the function.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from normative.surface import TEMPLATE_VERTICES

__all__ = ["plot_surface_map"]

_NV = TEMPLATE_VERTICES["fsaverage5"]


def plot_surface_map(
    values,
    *,
    hemi: Literal["both", "left", "right"] = "both",
    views: tuple[str, ...] = ("lateral", "medial"),
    mesh: Literal["inflated", "pial", "white_matter"] = "inflated",
    threshold: float | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    title: str | None = None,
    figure=None,
):
    """Draw per-vertex values (Z, centiles, effect sizes) on the fsaverage5 surface.

    Parameters
    ----------
    values : array of shape (20484,) or (10242,)
        Left then right hemisphere (as :func:`normative.surface.collect_surface` and
        :func:`normative.many.transform_chunked` return them), or one hemisphere when
        ``hemi`` is ``"left"``/``"right"``. NaN vertices get the neutral colour (0).
    hemi : {"both", "left", "right"}
    views : tuple of str
        nilearn views drawn for each hemisphere (one panel each).
    mesh : {"inflated", "pial", "white_matter"}
    threshold : float, optional
        Hide vertices with ``|value| < threshold`` (e.g. 1.96).
    vmax : float, optional
        Symmetric colour limit shared by every panel (default: max |value|).
    cmap, title : as in nilearn.
    figure : matplotlib Figure, optional
        Drawn into (cleared first); a new figure otherwise.

    Returns
    -------
    matplotlib.figure.Figure
        One 3-D axes per (hemisphere, view) panel, plus one colour bar.
    """
    import matplotlib.pyplot as plt
    from nilearn import datasets, plotting

    v = np.asarray(values, dtype=float).reshape(-1)
    if hemi == "both":
        if v.size != 2 * _NV:
            raise ValueError(f"plot_surface_map: hemi='both' needs {2 * _NV} values (fsaverage5 "
                             f"left then right); got {v.size}.")
        parts = {"left": v[:_NV], "right": v[_NV:]}
    elif hemi in ("left", "right"):
        if v.size != _NV:
            raise ValueError(f"plot_surface_map: hemi={hemi!r} needs {_NV} values (one "
                             f"fsaverage5 hemisphere); got {v.size}.")
        parts = {hemi: v}
    else:
        raise ValueError(f"plot_surface_map: hemi={hemi!r}; expected 'both', 'left' or 'right'.")
    if mesh not in ("inflated", "pial", "white_matter"):
        raise ValueError(f"plot_surface_map: mesh={mesh!r}; expected 'inflated', 'pial' or "
                         "'white_matter'.")
    views = tuple(views)
    if not views:
        raise ValueError("plot_surface_map: views is empty; use e.g. ('lateral', 'medial').")
    finite = v[np.isfinite(v)]
    if vmax is None:
        vmax = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    fs = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type=mesh, data_type="sulcal")
    fig = figure if figure is not None else plt.figure(figsize=(3.2 * len(parts) * len(views), 3.2))
    fig.clf()
    n_panels = len(parts) * len(views)
    k = 0
    for h, data in parts.items():
        surf = fs[mesh].parts[h]
        bg = sulc.data.parts[h]
        for view in views:
            k += 1
            ax = fig.add_subplot(1, n_panels, k, projection="3d")
            plotting.plot_surf_stat_map(
                surf, np.where(np.isfinite(data), data, 0.0), bg_map=bg, hemi=h, view=view,
                engine="matplotlib", cmap=cmap, colorbar=(k == n_panels), threshold=threshold,
                vmin=-vmax, vmax=vmax, symmetric_cbar=True, axes=ax, figure=fig,
                title=f"{h} {view}")
    if title:
        fig.suptitle(title)
    return fig
