"""Poisson and negative-binomial GLMs of critical-deviation counts, agreeing with R.

``fit_counts`` reproduces R's ``glm(..., family = poisson)`` and ``MASS::glm.nb``:
coefficients, Wald SEs, incidence rate ratios (IRR) with ``confint.default`` limits,
theta (with the SE from ``MASS::theta.ml``), deviance and R's ``2 x log-likelihood``.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from analyses._common import check_counts, wald_table
from analyses._formula import design, drop_aliased
from normfuse.checks import check_numeric, require_columns
from normfuse.errors import ColumnContractError, ConvergenceWarning
from normfuse.results import ResultMixin

__all__ = ["CountModelResult", "fit_counts", "theta_ml"]


@dataclass(frozen=True)
class CountModelResult(ResultMixin):
    """A fitted Poisson or negative-binomial GLM (log link).

    Attributes
    ----------
    params : DataFrame
        Per term: coef, se, z, p, ci_low, ci_high, irr, irr_ci_low, irr_ci_high
        (Wald, as R's ``confint.default``).
    family : str
        ``"poisson"`` or ``"negbin"``.
    theta, theta_se : float
        NB shape (variance mu + mu^2/theta) and its SE (``theta.ml``); NaN for Poisson,
        SE NaN when theta was fixed.
    twice_loglik : float
        R's ``2 * logLik`` (full likelihood incl. constants), as printed by ``glm.nb``.
    aic : float
        R's AIC (theta counted as a parameter when estimated).
    """

    params: pd.DataFrame
    family: str
    formula: str
    theta: float
    theta_se: float
    theta_fixed: bool
    loglik: float
    twice_loglik: float
    aic: float
    deviance: float
    null_deviance: float
    df_resid: int
    n_obs: int
    converged: bool
    pearson_chi2: float = float("nan")
    dispersion: str = "model"
    aliased: tuple[str, ...] = field(default_factory=tuple)
    _title = "Count model (log link)"

    def summary(self) -> pd.DataFrame:
        """The coefficient table (numbers only)."""
        return self.params.copy()

    def _header_lines(self) -> list[str]:
        th = (f", theta {self.theta:.4g}" + ("" if self.theta_fixed else f" (SE {self.theta_se:.3g})")
              if self.family == "negbin" else "")
        return [f"{self.family}: {self.formula}; n = {self.n_obs}{th}",
                f"2 x log-likelihood {self.twice_loglik:.3f}; residual deviance "
                f"{self.deviance:.2f} on {self.df_resid} df; AIC {self.aic:.1f}"]

    def plot(self, ax=None, **kwargs):
        """Forest plot of incidence rate ratios (see :func:`analyses.plotting.forest_plot`)."""
        from analyses.plotting import forest_plot

        return forest_plot(self, ax=ax, **kwargs)


def _nb_loglik(y, mu, theta):
    from scipy.special import gammaln

    return float(np.sum(gammaln(theta + y) - gammaln(theta) - gammaln(y + 1) + theta * np.log(theta)
                        + y * np.log(mu + (y == 0)) - (theta + y) * np.log(theta + mu)))


#: theta above which counts are treated as not overdispersed (NB -> Poisson)
THETA_MAX = 1e6


def theta_ml(y, mu, theta0: float | None = None, maxiter: int = 50, tol: float = 1e-10):
    """ML estimate of the NB shape theta given means ``mu`` (``MASS::theta.ml``).

    Newton steps on log(theta) on R's score and observed information; returns
    ``(theta, se, converged)`` with ``se = 1/sqrt(information)`` as R reports it.
    """
    from scipy.special import digamma, polygamma

    y = np.asarray(y, float)
    mu = np.asarray(mu, float)
    n = y.size
    th = float(theta0) if theta0 else n / max(np.sum((y / mu - 1.0) ** 2), 1e-12)
    ok = False

    def score(t):
        return np.sum(digamma(t + y) - digamma(t) + np.log(t) + 1 - np.log(t + mu) - (y + t) / (mu + t))

    def info(t):
        return np.sum(-polygamma(1, t + y) + polygamma(1, t) - 1 / t + 2 / (mu + t)
                      - (y + t) / (mu + t) ** 2)

    for _ in range(maxiter):
        if th > THETA_MAX:           # no overdispersion: the MLE is at theta = infinity
            th = THETA_MAX
            break
        s, i = score(th), info(th)
        # Newton in log-theta: d/dlog = t*s ; d2 ~ -t^2*i + t*s
        g = th * s
        h = -(th ** 2) * i + g
        step = -g / h if h < 0 else np.sign(g) * 0.5
        step = float(np.clip(step, -2.0, 2.0))
        th_new = th * np.exp(step)
        if abs(th_new - th) <= tol * max(1.0, th):
            th = th_new
            ok = True
            break
        th = th_new
    se = 1.0 / np.sqrt(info(th)) if info(th) > 0 else np.nan
    return th, float(se), ok


def _check_separation(y, X: pd.DataFrame, who: str, data: pd.DataFrame | None = None) -> None:
    """Raise when every count is zero in a set of rows the model can fit apart.

    A 0/1 column separates when all counts are zero where it is 1 (its coefficient goes to
    -inf) or, in a model with a constant, where it is 0 (the intercept goes to -inf and the
    indicator's coefficient to +inf). For a factor with several dummies, the reference level
    (rows where every dummy of that factor is 0) is checked too.
    """
    A = X.to_numpy(float)
    n = A.shape[0]
    if n == 0:
        return
    has_const = bool(np.linalg.norm(A @ np.linalg.lstsq(A, np.ones(n), rcond=None)[0] - 1.0)
                     < 1e-8 * np.sqrt(n))
    zero = ~(y > 0)

    def fix(factor: str | None) -> str:
        ref = (f"write C({factor}, Treatment(<a level with counts>)) in the formula"
               if factor else "e.g. C(g, Treatment('p')) in the formula")
        return ("so the fitted rate there is 0, the log-rate coefficients diverge and the fit "
                f"cannot converge (R's glm reports huge SEs). Choose another reference level ({ref}), "
                "merge that level with another, use fewer covariates, or use a penalised (Firth) "
                "or exact method.")

    ind = np.all((A == 0.0) | (A == 1.0), axis=0)
    for j, name in enumerate(X.columns):
        col = A[:, j]
        if not ind[j] or not 0 < col.sum() < n:
            continue
        one = col == 1.0
        if zero[one].all():
            raise ColumnContractError(
                f"{who}: separation: every count is zero where {name!r} = 1 "
                f"({int(one.sum())} rows), {fix(_factor_of(name))}")
        if has_const and zero[~one].all():
            raise ColumnContractError(
                f"{who}: separation: every count is zero where {name!r} = 0 "
                f"({int((~one).sum())} rows{_level_note(_factor_of(name), ~one, data)}), "
                f"{fix(_factor_of(name))}")
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(X.columns):
        factor = _factor_of(name)
        if factor is not None and ind[j]:
            groups.setdefault(factor, []).append(j)
    for factor, cols in groups.items():
        if len(cols) < 2 or not has_const:
            continue
        ref = ~A[:, cols].any(axis=1)
        if ref.any() and zero[ref].all():
            raise ColumnContractError(
                f"{who}: separation: every count is zero in the reference level of {factor!r} "
                f"(rows where none of {[str(X.columns[j]) for j in cols]} is 1: "
                f"{int(ref.sum())} rows{_level_note(factor, ref, data)}), {fix(factor)}")


def _factor_of(term) -> str | None:
    """``'g'`` for a treatment-coded dummy ``'g[T.p]'``; None for other design columns."""
    m = re.fullmatch(r"(.+)\[T\.[^\]]*\]", str(term))
    return m.group(1) if m else None


def _level_note(var: str | None, rows: np.ndarray, data: pd.DataFrame | None) -> str:
    """``"; the reference level 'c' of 'g'"`` when ``var`` is a factor column of ``data``."""
    if var is None or data is None or var not in data.columns or len(data) != rows.size:
        return ""
    levels = pd.unique(data[var].to_numpy()[rows])
    if len(levels) == 1:
        lv = levels[0].item() if isinstance(levels[0], np.generic) else levels[0]
        return f"; the reference level {lv!r} of {var!r}"
    return ""


def fit_counts(formula: str, data: pd.DataFrame, family: Literal["poisson", "negbin"] = "poisson",
               theta: float | None = None, offset: str | None = None,
               dispersion: Literal["model", "pearson"] = "model",
               missing: Literal["drop", "raise"] = "drop", maxiter: int = 100) -> CountModelResult:
    """Fit a Poisson or negative-binomial GLM of counts; report IRRs with Wald CIs.

    Parameters
    ----------
    formula : str
        R-style formula, e.g. ``"n_crit ~ group + age + sex"`` (patsy syntax;
        categorical levels use treatment coding, first level as reference).
    data : DataFrame
        One row per subject. Not modified.
    family : {"poisson", "negbin"}
        ``"negbin"`` is NB2 (variance mu + mu^2/theta) as in ``MASS::glm.nb``.
    theta : float, optional
        Fix the NB shape (``theta=1`` reproduces the published MS analysis); by
        default it is estimated by maximum likelihood, alternating with IRLS as
        ``glm.nb`` does.
    offset : str, optional
        Column holding an offset on the log scale (e.g. ``log(follow-up years)``).
    dispersion : {"model", "pearson"}
        ``"model"`` (default): dispersion 1, Wald z tests and CIs, as ``summary.negbin``
        and Poisson ``summary.glm``. ``"pearson"``: dispersion estimated by Pearson
        chi-square / residual df with t tests and CIs, as R's ``summary.glm`` does for
        ``family = quasipoisson`` or ``negative.binomial(theta)`` fitted with ``glm()``
        (use this to reproduce an analysis run with ``glm(..., negative.binomial(1))``).
    missing : {"drop", "raise"}
        Complete cases (counted, warned) as R's ``na.omit``, or an error.

    Returns
    -------
    CountModelResult

    Raises
    ------
    ColumnContractError
        Negative or non-integer counts; a response that is not numeric (text, even text
        of numbers); predictors that are numbers stored as text; +-inf in any variable;
        constant predictors; separation (all counts zero in a level, the reference level
        included, or where a 0/1 covariate is 1 or 0); missing columns.

    Notes
    -----
    Aliased columns (linear combinations of earlier ones) are dropped as R does and
    named in a :class:`~normfuse.errors.DataDroppedWarning`. SEs use dispersion 1 (as
    ``summary.negbin``), also when theta is fixed.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"y": [0, 1, 2, 4, 3, 6], "g": ["c", "c", "c", "p", "p", "p"]})
    >>> res = fit_counts("y ~ g", d)
    >>> round(float(res.params.loc["g[T.p]", "irr"]), 4)   # 13 / 3
    4.3333
    """
    import statsmodels.api as sm

    who = "fit_counts"
    if dispersion not in ("model", "pearson"):
        raise ValueError(f"{who}: dispersion={dispersion!r}; expected 'model' or 'pearson'.")
    if family not in ("poisson", "negbin"):
        raise ValueError(f"{who}: family={family!r}; expected 'poisson' or 'negbin'.")
    if theta is not None and (family != "negbin" or not np.isfinite(theta) or theta <= 0):
        raise ValueError(f"{who}: theta={theta!r} needs family='negbin' and a positive value.")
    if offset is not None:
        require_columns(data, [offset], who)
    yser, X, d = design(formula, data, who, missing, extra=[offset] if offset else [])
    y = check_counts(yser, who)
    X, aliased = drop_aliased(X, who)
    _check_separation(y, X, who, d)
    off = check_numeric(d, [offset], who)[:, 0] if offset else None
    n, p = X.shape
    A = X.to_numpy(float)

    def glm(fam, start=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = sm.GLM(y, A, family=fam, offset=off).fit(start_params=start, tol=1e-12, maxiter=maxiter)
        return r

    converged = True
    if family == "poisson":
        r = glm(sm.families.Poisson())
        mu = r.fittedvalues
        converged = bool(r.converged)
        th, th_se = np.nan, np.nan
        ll = float(np.sum(y * np.log(np.where(y > 0, mu, 1.0)) - mu) - np.sum(_gammaln(y + 1)))
        k = p
        null = sm.GLM(y, np.ones((n, 1)), family=sm.families.Poisson(), offset=off).fit(tol=1e-12)
    else:
        r = glm(sm.families.Poisson())
        if theta is not None:
            th = float(theta)
            r = glm(sm.families.NegativeBinomial(alpha=1 / th), r.params)
            converged = bool(r.converged)
            th_se = np.nan
        else:
            th, _, _ = theta_ml(y, r.fittedvalues)
            ll_old = -np.inf
            for _ in range(maxiter):
                r = glm(sm.families.NegativeBinomial(alpha=1 / th), r.params)
                th, th_se, ok = theta_ml(y, r.fittedvalues, th)
                if th >= THETA_MAX:
                    break
                ll = _nb_loglik(y, r.fittedvalues, th)
                if abs(ll - ll_old) < 1e-11 * max(1, abs(ll)):
                    break
                ll_old = ll
            else:
                converged = False
            r = glm(sm.families.NegativeBinomial(alpha=1 / th), r.params)
            converged = converged and bool(r.converged) and ok
        mu = r.fittedvalues
        ll = _nb_loglik(y, mu, th)
        k = p + (0 if theta is not None else 1)
        null = sm.GLM(y, np.ones((n, 1)), family=sm.families.NegativeBinomial(alpha=1 / th),
                      offset=off).fit(tol=1e-12)
    if family == "negbin" and theta is None and th >= THETA_MAX:
        converged = False
        th_se = np.nan
        warnings.warn(f"{who}: the counts show no overdispersion (theta -> infinity, stopped at "
                      f"{THETA_MAX:g}); the negative binomial reduces to the Poisson model. Use "
                      "family='poisson', or fix theta (e.g. theta=1 as in the published analysis).",
                      ConvergenceWarning, stacklevel=2)
    elif not converged:
        warnings.warn(f"{who}: the {family} fit did not converge in {maxiter} iterations; "
                      "estimates may be unreliable (check for sparse levels or extreme counts).",
                      ConvergenceWarning, stacklevel=2)
    pearson = float(np.sum((y - r.fittedvalues) ** 2 / r.model.family.variance(r.fittedvalues)))
    if dispersion == "pearson":
        from scipy import stats

        phi = pearson / (n - p)
        se = np.asarray(r.bse) * np.sqrt(phi)
        coef = np.asarray(r.params)
        q = stats.t.ppf(0.975, n - p)
        tval = coef / se
        params = pd.DataFrame({"coef": coef, "se": se, "t": tval, "p": 2 * stats.t.sf(np.abs(tval), n - p),
                               "ci_low": coef - q * se, "ci_high": coef + q * se},
                              index=pd.Index([str(c) for c in X.columns], name="term"))
        params["irr"] = np.exp(coef)
        params["irr_ci_low"] = np.exp(params["ci_low"])
        params["irr_ci_high"] = np.exp(params["ci_high"])
    else:
        params = wald_table(X.columns, r.params, r.bse, exp="irr")
    big = params.index[np.abs(params["coef"].to_numpy()) > 15]
    if len(big):
        warnings.warn(f"{who}: coefficients {list(big)} exceed |15| on the log scale, a sign "
                      "of quasi-separation; their Wald CIs are not trustworthy.",
                      ConvergenceWarning, stacklevel=2)
    return CountModelResult(
        params=params, family=family, formula=formula, theta=float(th), theta_se=float(th_se),
        theta_fixed=theta is not None, loglik=ll, twice_loglik=2 * ll, aic=-2 * ll + 2 * k,
        deviance=float(r.deviance), null_deviance=float(null.deviance), df_resid=int(n - p),
        n_obs=int(n), converged=converged, pearson_chi2=pearson, dispersion=dispersion,
        aliased=tuple(aliased))


def _gammaln(x):
    from scipy.special import gammaln

    return gammaln(x)
