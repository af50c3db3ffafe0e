"""Adapting a normative model to new scanners/sites from a few local healthy controls.

A site unseen in the reference fit gets its own location offset ``b`` and log-scale
``c`` per region, estimated from local controls by maximum a posteriori with Gaussian
priors centred on the average reference site. The prior spreads are the between-site
spreads learned from the reference sites (empirical Bayes), so a handful of local
controls moves the site only as far as the data support; the remaining uncertainty of
``b`` and ``c`` widens the predictive distribution (Laplace), which keeps Z calibrated
even with 5 controls per site and sex.

The same estimator serves both reference-model kinds, through :func:`fit_site_effects`:
:class:`~normative.model.NormativeModel` (SHASH likelihood, shape fixed at the reference
fit's) and :class:`~normative.braincharts.BrainchartsModel` (braincharts' BLR, which is
Gaussian after its SinhArcsinh warp: the special case ``eps = 0, delta = 1`` on warped
data). Only the inputs differ (see the two ``adapt`` methods); validation of the local
controls (:func:`new_site_codes`) is shared too, so both refuse, warn and record alike.

References
----------
Kia SM et al. (2021). Closing the life-cycle of normative modeling using federated
hierarchical Bayesian regression. (site transfer in normative models)
Bayer JMM et al. (2022). Site effects how-to and when: an overview of retrospective
techniques to accommodate site effects in multi-site neuroimaging analyses.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import numbers
import warnings

import numpy as np

from normfuse import checks
from normfuse.errors import ColumnContractError, SmallReferenceGroupWarning

__all__ = ["adapt_sites", "fit_site_effects", "new_site_codes", "SiteEffects"]

log = logging.getLogger("normfuse.normative")


@dataclasses.dataclass(frozen=True)
class SiteEffects:
    """MAP site effects of new sites and their Laplace posterior variances.

    Each array has shape ``(S, R)``: one row per new site (in the order of the site
    codes), one column per response.
    """

    offset: np.ndarray
    log_scale: np.ndarray
    offset_var: np.ndarray
    log_scale_var: np.ndarray
    converged: np.ndarray       # (R,) bool


def fit_site_effects(y, mask, site_code, n_sites: int, *, loc, log_scale, loc_prior_sd,
                     scale_prior_sd, loc_prior_mean=None, eps=None, tau=None,
                     max_iter: int = 100, tol: float = 1e-8, ridge: float = 1e-8) -> SiteEffects:
    """Site offsets and log-scales of new sites from their local controls (MAP + Laplace).

    For a row ``i`` of site ``s`` and response ``r`` the model is ::

        y_ir ~ SHASH(loc_ir + b_sr, exp(log_scale_ir + c_sr), eps_r, tau_r)
        b_sr ~ Normal(loc_prior_mean_r, loc_prior_sd_r^2)
        c_sr ~ Normal(0, scale_prior_sd_r^2)

    with ``loc``/``log_scale`` the reference model's predictive at the average site and
    the shape (``eps``, ``tau``) held fixed; ``eps = tau = None`` is the normal
    distribution. ``b`` and ``c`` are the posterior modes (batched damped Newton over all
    sites and responses at once, :func:`normative._engine.fit`) and their variances the
    diagonal of the inverse negative Hessian there. Sites share no parameters, so each
    site is estimated from its own rows only.

    Parameters
    ----------
    y : (n, R) responses in the units of ``loc`` (entries where ``mask`` is 0 are ignored).
    mask : (n, R) 1.0 where ``y`` is observed, else 0.0.
    site_code : (n,) integer site of each row, in ``0 .. n_sites - 1``.
    n_sites : number of new sites ``S``.
    loc, log_scale : (n, R) reference location and log-scale of each row.
    loc_prior_sd, scale_prior_sd : (R,) prior sds of the offset and the log-scale.
    loc_prior_mean : (R,) prior mean of the offset; ``None`` is 0.
    eps, tau : (R,) fixed SHASH skew and log tail weight; ``None`` for the normal model.
    max_iter, tol : Newton iterations and convergence tolerance (per observation).
    ridge : extra precision added to every prior (the engine's numerical guard); 0 gives
        exactly the priors above.

    Returns
    -------
    SiteEffects
        ``offset`` includes ``loc_prior_mean``.
    """
    from normative import _engine

    y = np.asarray(y, dtype=float)
    n, R = y.shape
    S = int(n_sites)
    code = np.asarray(site_code, dtype=np.int64)
    onehot = np.zeros((n, S))
    onehot[np.arange(n), code] = 1.0
    offset_mu = np.asarray(loc, dtype=float)
    if loc_prior_mean is not None:
        offset_mu = offset_mu + np.asarray(loc_prior_mean, dtype=float)[None, :]
    eps = np.zeros(R) if eps is None else np.array(eps, dtype=float)
    tau = np.zeros(R) if tau is None else np.array(tau, dtype=float)
    init = (np.zeros((S, R)), np.zeros((S, R)), eps, tau)
    prior_sd = (np.broadcast_to(np.asarray(loc_prior_sd, dtype=float), (R,)).copy(),
                np.broadcast_to(np.asarray(scale_prior_sd, dtype=float), (R,)).copy())
    # a damped Newton trial step may overflow; the engine rejects non-finite trials itself
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        res = _engine.fit(np, onehot, onehot, y, np.asarray(mask, dtype=float),
                          np.ones(S, bool), np.ones(S, bool), shape=False, init=init,
                          fixed_tau=prior_sd, offset_mu=offset_mu,
                          offset_ls=np.asarray(log_scale, dtype=float), max_iter=int(max_iter),
                          tol=tol, ridge=ridge)
    V = _engine.posterior_cov(np, res.neg_hessian)                  # (R, 2S, 2S)
    idx = np.arange(S)
    offset = res.beta if loc_prior_mean is None else res.beta + np.asarray(loc_prior_mean)[None, :]
    return SiteEffects(offset=offset, log_scale=res.gamma, offset_var=V[:, idx, idx].T,
                       log_scale_var=V[:, S + idx, S + idx].T,
                       converged=np.asarray(res.converged, dtype=bool))


def new_site_codes(local_controls, site_col: str, known_sites, *, min_controls: int, who: str,
                   prior_name: str = "the average reference site", stacklevel: int = 3):
    """Validate the sites of ``local_controls``; return ``(new_sites, site_code)``.

    Shared by every ``adapt`` method, so all of them refuse and warn alike: an empty
    table, a missing site value (naming the row) and sites the model already knows
    raise :class:`~normfuse.errors.ColumnContractError` (``ValueError`` for a bad
    ``min_controls``); new sites with fewer than ``min_controls`` rows warn with
    :class:`~normfuse.errors.SmallReferenceGroupWarning`. ``new_sites`` are sorted;
    ``site_code`` (n,) indexes them. ``stacklevel`` points the warning at the user's call.
    """
    if (isinstance(min_controls, bool) or not isinstance(min_controls, numbers.Integral)
            or min_controls < 1):
        raise ValueError(f"{who}: min_controls must be a positive integer; got {min_controls!r}.")
    if len(local_controls) == 0:
        raise ColumnContractError(f"{who}: local_controls has no rows; pass a few healthy "
                                  "controls (5-20 per new site) scanned at the new sites.")
    checks.require_columns(local_controls, [site_col], who)
    sites = local_controls[site_col].astype("string")
    na = sites.isna().to_numpy()
    if na.any():
        i = int(np.flatnonzero(na)[0])
        raise ColumnContractError(
            f"{who}: column {site_col!r} is missing at row {local_controls.index[i]!r} "
            f"({int(na.sum())} row(s) of local_controls without a site); every local control "
            "needs its site.")
    values = sites.to_numpy(dtype=object)
    seen = sorted(set(values.tolist()) & set(known_sites))
    if seen:
        raise ColumnContractError(
            f"{who}: local_controls include sites the model already knows: {seen[:10]}. "
            "adapt() adds new sites only; drop those rows, or refit the reference model "
            "including them.")
    uniq, code = np.unique(values.astype(str), return_inverse=True)   # sorted, as sorted()
    new_sites, code = uniq.tolist(), code.astype(np.int64).ravel()
    counts = np.bincount(code, minlength=len(new_sites))
    small = {s: int(c) for s, c in zip(new_sites, counts, strict=True) if c < min_controls}
    if small:
        warnings.warn(
            f"{who}: new sites with fewer than {min_controls} local controls: {small}; their "
            f"offsets and scales stay close to {prior_name}. Silence with "
            "warnings.filterwarnings('ignore', category=SmallReferenceGroupWarning).",
            SmallReferenceGroupWarning, stacklevel=stacklevel)
    return new_sites, code


def adapt_sites(model, local_controls, *, min_controls: int = 5):
    """Return a copy of ``model`` adapted to the new sites in ``local_controls``.

    Parameters
    ----------
    model : fitted :class:`normative.model.NormativeModel` (native backend).
    local_controls : DataFrame of healthy controls from the new sites, with the
        model's covariates, site column and responses. Sites already known to the
        model (reference or adapted) are refused: refit to change them.
    min_controls : warn (``SmallReferenceGroupWarning``) when a new site has fewer.

    Returns
    -------
    NormativeModel
        A new model; the input model is unchanged. The new sites are appended to
        ``sites_`` and their effects (standardised units) to ``adapted_offset_``,
        ``adapted_log_scale_`` and their variances.

    Notes
    -----
    The estimator is :func:`fit_site_effects` with the SHASH likelihood of the reference
    fit (its shape held fixed), the reference predictive at the average site (including
    the Laplace parameter uncertainty when ``predictive="posterior"``) as location and
    log-scale, and the between-site spreads learned from the reference sites
    (``site_prior_sd_``) as prior sds, both centred on zero.
    :meth:`normative.braincharts.BrainchartsModel.adapt` calls the same function.

    Examples
    --------
    >>> from normative.simulate import simulate_controls
    >>> from normative.model import NormativeModel
    >>> ref, truth, _ = simulate_controls(800, 4, n_sites=6, seed=0, return_truth=True)
    >>> ref_sites = truth["sites"][:4]
    >>> nm = NormativeModel().fit(ref[ref.site.isin(ref_sites)])
    >>> local = ref[ref.site == truth["sites"][4]].head(20)
    >>> nm2 = nm.adapt(local)
    >>> truth["sites"][4] in nm2.sites_
    True
    """
    checks.check_is_fitted(model, ["responses_"])
    who = "NormativeModel.adapt"
    if model.backend != "native":
        from normative._pcn import PcnBackend  # noqa: F401  (pcntoolkit's own transfer)

        new = copy.copy(model)
        new._pcn = model._pcn.transfer(local_controls)
        return new
    if model.design_.site_col is None:
        raise ValueError(f"{who}: the model was fitted without a site column; nothing to adapt.")
    checks.require_dataframe(local_controls, who, "local_controls")
    model._check_covariates(local_controls, who)
    model._check_volume_kind(local_controls, who, fitting=False)
    new_sites, code = new_site_codes(local_controls, model.design_.site_col, model.sites_,
                                     min_controls=min_controls, who=who, stacklevel=4)
    Y = model._model_units(model._responses_matrix(local_controls, who), local_controls.index, who)
    M = np.isfinite(Y).astype(float)
    modelled = getattr(model, "modelled_", None)
    if modelled is not None:
        M[:, ~modelled] = 0.0      # responses left out of the reference fit stay NaN
    Ys = np.where(M > 0, (np.where(M > 0, Y, 0.0) - model.y_mean_) / model.y_sd_, 0.0)

    # reference predictive at the average site, in standardised units
    X, Zs, _, _ = model.design_.build(local_controls, who, sites="any")
    mu0 = X @ model.beta_
    ls0 = Zs @ model.gamma_
    if model.predictive == "posterior":
        from normative.model import _quad_forms

        ls0 = 0.5 * np.log(np.exp(2.0 * ls0 + 2.0 * _quad_forms(Zs, model.cov_gamma_))
                           + _quad_forms(X, model.cov_beta_))
    # the engine's defaults (tolerance, ridge) of the reference fit: adapted models are
    # reproduced exactly as earlier versions made them
    eff = fit_site_effects(Ys, M, code, len(new_sites), loc=mu0, log_scale=ls0,
                           loc_prior_sd=model.site_prior_sd_[0],
                           scale_prior_sd=model.site_prior_sd_[1], eps=model.eps_,
                           tau=model.tau_, max_iter=model.max_iter)
    S = len(new_sites)
    new = copy.deepcopy(model)
    new.design_.extra_sites = list(model.design_.extra_sites) + new_sites
    new.sites_ = list(model.sites_) + new_sites
    new.adapted_offset_ = np.vstack([model.adapted_offset_, eff.offset])
    new.adapted_log_scale_ = np.vstack([model.adapted_log_scale_, eff.log_scale])
    new.adapted_offset_var_ = np.vstack([model.adapted_offset_var_, eff.offset_var])
    new.adapted_log_scale_var_ = np.vstack([model.adapted_log_scale_var_, eff.log_scale_var])
    if not bool(np.all(eff.converged)):
        log.warning("adapt: optimisation did not fully converge for some regions")
    log.info("adapted %d new site(s) from %d local controls", S, len(local_controls))
    return new
