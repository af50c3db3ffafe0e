"""Design matrices of the normative model: age B-splines, sex, linear covariates, sites."""
from __future__ import annotations

import numpy as np

from normfuse.errors import ColumnContractError, UnknownSiteError

SEX_LEVELS = ("F", "M")


def bspline_basis(x: np.ndarray, lo: float, hi: float, interior: np.ndarray, degree: int = 3) -> np.ndarray:
    """Cubic B-spline basis on [lo, hi] (x clamped into the range), first column dropped.

    The full basis sums to one, so the first column is dropped to keep the design
    identifiable beside an intercept.
    """
    from scipy.interpolate import BSpline

    t = np.r_[[lo] * (degree + 1), np.asarray(interior, float), [hi] * (degree + 1)]
    xc = np.clip(np.asarray(x, float), lo, hi)
    # keep the right boundary inside the last interval
    xc = np.minimum(xc, hi - 1e-9 * max(1.0, abs(hi)))
    B = BSpline.design_matrix(xc, t, degree).toarray()
    return B[:, 1:]


def sex_indicator(values, who: str) -> np.ndarray:
    """1.0 for 'M', 0.0 for 'F'; anything else is an error naming the values."""
    import pandas as pd

    s = pd.Series(values)
    s = s.astype("string").str.strip().str.upper()
    bad = ~s.isin(SEX_LEVELS)
    if bad.any():
        shown = sorted(set(map(str, pd.Series(values)[bad.to_numpy()].tolist())))[:10]
        raise ColumnContractError(
            f"{who}: column 'sex' must hold 'F' or 'M'; found {shown} "
            f"in {int(bad.sum())} rows. Map codes first, e.g. df['sex'] = df['sex'].map({{0: 'F', 1: 'M'}})."
        )
    return (s == "M").to_numpy(dtype=float)


class DesignSpec:
    """Learned description of the design (knots, scalings, sites); builds X and Zs."""

    def __init__(self, *, covariates, site_col, age_col, age_range, loc_knots, scale_knots,
                 linear_stats, sites, site_scale=True, scale_covariates=("age", "sex")):
        self.covariates = list(covariates)
        self.site_col = site_col
        self.age_col = age_col
        self.age_range = tuple(float(v) for v in age_range) if age_range is not None else None
        self.loc_knots = np.asarray(loc_knots, float)
        self.scale_knots = np.asarray(scale_knots, float)
        self.linear_stats = {k: (float(m), float(s)) for k, (m, s) in linear_stats.items()}
        self.sites = list(sites)
        self.site_scale = bool(site_scale)
        self.scale_covariates = list(scale_covariates)
        self.extra_sites: list[str] = []     # adapted sites (no design columns)

    @classmethod
    def learn(cls, df, covariates, site_col, age_df, scale_age_df, who, site_scale=True,
              scale_covariates=None):
        covariates = list(covariates)
        age_col = "age" if "age" in covariates else None
        age_range = loc_knots = scale_knots = None
        if age_col is not None:
            age = df[age_col].to_numpy(float)
            age_range = (float(age.min()), float(age.max()))
            if age_range[1] - age_range[0] <= 0:
                raise ColumnContractError(f"{who}: 'age' is constant ({age_range[0]}); it cannot be modelled.")
            n_int_loc = max(age_df - 3, 0)
            n_int_sc = max(scale_age_df - 3, 0)
            loc_knots = np.quantile(age, np.linspace(0, 1, n_int_loc + 2)[1:-1]) if n_int_loc else []
            scale_knots = np.quantile(age, np.linspace(0, 1, n_int_sc + 2)[1:-1]) if n_int_sc else []
        lin = {}
        for c in covariates:
            if c in ("age", "sex"):
                continue
            v = df[c].to_numpy(float)
            sd = float(v.std())
            if not np.isfinite(sd) or sd == 0:
                raise ColumnContractError(f"{who}: covariate {c!r} is constant; drop it from covariates.")
            lin[c] = (float(v.mean()), sd)
        sites = []
        if site_col is not None:
            sites = sorted(map(str, df[site_col].astype("string").unique().tolist()))
        return cls(covariates=covariates, site_col=site_col, age_col=age_col, age_range=age_range,
                   loc_knots=[] if loc_knots is None else loc_knots,
                   scale_knots=[] if scale_knots is None else scale_knots,
                   linear_stats=lin, sites=sites, site_scale=site_scale,
                   scale_covariates=[c for c in ("age", "sex") if c in covariates]
                   if scale_covariates is None else scale_covariates)

    def site_codes(self, df, who, allowed=None) -> np.ndarray:
        if self.site_col is None:
            return np.zeros(len(df), dtype=np.int64)
        s = df[self.site_col].astype("string").to_numpy(dtype=object)
        lookup = {name: i for i, name in enumerate(self.sites + self.extra_sites)}
        codes = np.fromiter((lookup.get(v, -1) for v in s), dtype=np.int64, count=len(s))
        if allowed == "any":
            return codes
        if (codes < 0).any():
            unknown = sorted({str(v) for v, c in zip(s, codes, strict=True) if c < 0})
            raise UnknownSiteError(
                f"{who}: site(s) {unknown[:10]} were neither in the reference fit nor adapted "
                f"({int((codes < 0).sum())} rows). Known sites: {(self.sites + self.extra_sites)[:10]}"
                f"{' ...' if len(self.sites) > 10 else ''}. Adapt the model with a few local "
                "healthy controls from each new site: model = model.adapt(local_controls).",
                sites=unknown, n_rows=int((codes < 0).sum()), known=self.sites + self.extra_sites,
            )
        return codes

    def build(self, df, who, sites="known"):
        """Return (X, Zs, site_codes, age_out_of_range).

        Rows of adapted (or, with ``sites="any"``, unknown: code -1) sites get zero
        site columns, i.e. the average reference site.
        """
        n = len(df)
        loc = [np.ones((n, 1))]
        sc = [np.ones((n, 1))]
        out = np.zeros(n, dtype=bool)
        if self.age_col is not None:
            age = df[self.age_col].to_numpy(float)
            lo, hi = self.age_range
            out = (age < lo) | (age > hi)
            loc.append(bspline_basis(age, lo, hi, self.loc_knots))
            if "age" in self.scale_covariates:
                sc.append(bspline_basis(age, lo, hi, self.scale_knots))
        if "sex" in self.covariates:
            sx = sex_indicator(df["sex"].to_numpy(dtype=object), who)[:, None]
            loc.append(sx)
            if "sex" in self.scale_covariates:
                sc.append(sx)
        for c, (m, s) in self.linear_stats.items():
            loc.append(((df[c].to_numpy(float) - m) / s)[:, None])
        codes = self.site_codes(df, who, allowed=sites)
        S = len(self.sites) if self.site_col is not None else 0
        if S:
            oh = np.zeros((n, S))
            ref = (codes >= 0) & (codes < S)
            oh[np.flatnonzero(ref), codes[ref]] = 1.0
            loc.append(oh)
            if self.site_scale:
                sc.append(oh)
        return np.hstack(loc), np.hstack(sc), codes, out

    def n_site_cols(self):
        return len(self.sites) if self.site_col is not None else 0

    def to_dict(self):
        return {"covariates": self.covariates, "site_col": self.site_col, "age_col": self.age_col,
                "age_range": self.age_range, "loc_knots": self.loc_knots.tolist(),
                "scale_knots": self.scale_knots.tolist(),
                "linear_stats": {k: list(v) for k, v in self.linear_stats.items()},
                "sites": self.sites, "site_scale": self.site_scale, "extra_sites": self.extra_sites,
                "scale_covariates": self.scale_covariates}

    @classmethod
    def from_dict(cls, d):
        obj = cls._from_dict(d)
        obj.extra_sites = list(d.get("extra_sites", []))
        return obj

    @classmethod
    def _from_dict(cls, d):
        return cls(covariates=d["covariates"], site_col=d["site_col"], age_col=d["age_col"],
                   age_range=d["age_range"], loc_knots=d["loc_knots"], scale_knots=d["scale_knots"],
                   linear_stats=d["linear_stats"], sites=d["sites"],
                   site_scale=d.get("site_scale", True),
                   scale_covariates=d.get("scale_covariates", ("age", "sex")))
