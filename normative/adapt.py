"""Adapting a normative model to new scanners/sites from a few local healthy controls.

A site unseen in the reference fit gets its own location offset ``b`` and log-scale
``c`` per region, estimated from local controls by maximum a posteriori with Gaussian
priors centred on the average reference site. The prior spreads are the between-site
spreads learned from the reference sites (empirical Bayes), so a handful of local
controls moves the site only as far as the data support; the remaining uncertainty of
``b`` and ``c`` widens the predictive distribution (Laplace), which keeps Z calibrated
even with 5 controls per site and sex.

References
----------
Kia SM et al. (2021). Closing the life-cycle of normative modeling using federated
hierarchical Bayesian regression. (site transfer in normative models)
Bayer JMM et al. (2022). Site effects how-to and when: an overview of retrospective
techniques to accommodate site effects in multi-site neuroimaging analyses.
"""
from __future__ import annotations

import copy
import logging
import warnings

import numpy as np

from normfuse import checks
from normfuse.errors import ColumnContractError, SmallReferenceGroupWarning

__all__ = ["adapt_sites"]

log = logging.getLogger("normfuse.normative")


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
        A new model; the input model is unchanged.

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
    from normative import _engine

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
    site_col = model.design_.site_col
    sites = local_controls[site_col].astype("string")
    known = set(model.sites_)
    seen = sorted(set(sites.dropna().tolist()) & known)
    if seen:
        raise ColumnContractError(
            f"{who}: local_controls include sites the model already knows: {seen[:10]}. "
            "adapt() adds new sites only; drop those rows, or refit the reference model "
            "including them.")
    new_sites = sorted(set(sites.tolist()))
    counts = sites.value_counts()
    small = {s: int(c) for s, c in counts.items() if c < min_controls}
    if small:
        warnings.warn(
            f"{who}: new sites with fewer than {min_controls} local controls: {small}; their "
            "offsets stay close to the average reference site.", SmallReferenceGroupWarning,
            stacklevel=2)
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
    lookup = {s: i for i, s in enumerate(new_sites)}
    code = np.fromiter((lookup[s] for s in sites.tolist()), dtype=np.int64, count=len(sites))
    S = len(new_sites)
    onehot = np.zeros((len(code), S))
    onehot[np.arange(len(code)), code] = 1.0
    tau_loc = model.site_prior_sd_[0]
    tau_scale = model.site_prior_sd_[1]
    R = len(model.responses_)
    shape = model.likelihood == "shash"
    init = (np.zeros((S, R)), np.zeros((S, R)), model.eps_.copy(), model.tau_.copy())
    res = _engine.fit(np, onehot, onehot, Ys, M, np.ones(S, bool), np.ones(S, bool), shape=False,
                      init=init, fixed_tau=(tau_loc, tau_scale), offset_mu=mu0, offset_ls=ls0,
                      max_iter=model.max_iter)
    del shape
    V = _engine.posterior_cov(np, res.neg_hessian)                  # (R, 2S, 2S)
    idx = np.arange(S)
    new = copy.deepcopy(model)
    new.design_.extra_sites = list(model.design_.extra_sites) + new_sites
    new.sites_ = list(model.sites_) + new_sites
    new.adapted_offset_ = np.vstack([model.adapted_offset_, res.beta])
    new.adapted_log_scale_ = np.vstack([model.adapted_log_scale_, res.gamma])
    new.adapted_offset_var_ = np.vstack([model.adapted_offset_var_, V[:, idx, idx].T])
    new.adapted_log_scale_var_ = np.vstack([model.adapted_log_scale_var_, V[:, S + idx, S + idx].T])
    if not bool(np.all(res.converged)):
        log.warning("adapt: optimisation did not fully converge for some regions")
    log.info("adapted %d new site(s) from %d local controls", S, len(local_controls))
    return new
