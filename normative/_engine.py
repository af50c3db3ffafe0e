"""Batched penalised Newton fitting of many normative regressions at once.

Every response (region) ``r`` has its own parameters

    mu_r      = X  beta_r          (location: intercept, age B-spline, sex, ICV, ... + site offsets)
    log sig_r = Zs gamma_r         (scale: intercept, age B-spline, sex, ...          + site log-scales)
    eps_r, tau_r                   (SHASH skew and log tail weight; fixed at 0 for "normal")

and all responses share the design matrices, so gradients are one matrix product for
all regions and Hessians are batched cross-products. Site effects are Gaussian random
effects (ridge penalties) whose variances are estimated by empirical Bayes (EM
updates on the Laplace approximation). The optimiser is Levenberg-Marquardt-damped
Newton with per-region step acceptance, so every region converges on its own.

Array-generic: ``xp`` is ``numpy`` or ``torch`` (float64 on CPU, any float on CUDA).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from normative import _shash

log = logging.getLogger("normfuse.normative")

_SITE_TAU0 = (0.5, 0.2)     # initial prior sd of site offsets / site log-scales (standardised y)
_TAU_FLOOR = 1e-3


@dataclasses.dataclass
class FitResult:
    beta: object      # (p, R)
    gamma: object     # (q, R)
    eps: object       # (R,)
    tau: object       # (R,)
    tau_loc: object   # (R,) prior sd of site offsets
    tau_scale: object  # (R,) prior sd of site log-scales
    n_iter: int
    converged: object  # (R,) bool
    loglik: object    # (R,) penalised log-likelihood
    neg_hessian: object = None  # (R, P, P) at the optimum (posterior precision)


def _solve(xp, A, b):
    return xp.linalg.solve(A, b[..., None])[..., 0]


def _site_ids(onehot_mask):
    """Site index of each one-hot column (in order), -1 for dense columns."""
    m = np.asarray(onehot_mask, bool)
    ids = np.full(m.size, -1, dtype=np.int64)
    ids[m] = np.arange(int(m.sum()))
    return ids


def _pair_plan(xp, A, B, onehot_a, onehot_b, symmetric):
    """Column pairs (i, j) whose weighted cross-products can be non-zero.

    One-hot columns of different sites never share a row, so those pairs are
    skipped. Returns ``(I, J, Pi)`` with ``Pi[:, k] = A[:, I[k]] * B[:, J[k]]``
    (n, n_pairs): every weighted cross-product of every response is then
    ``Pi.T @ W``, one matrix product for all responses.
    """
    sa, sb = _site_ids(onehot_a), _site_ids(onehot_b)
    ii, jj = np.meshgrid(np.arange(A.shape[1]), np.arange(B.shape[1]), indexing="ij")
    keep = ~((sa[ii] >= 0) & (sb[jj] >= 0) & (sa[ii] != sb[jj]))
    if symmetric:
        keep &= ii <= jj
    I, J = ii[keep], jj[keep]
    Ii = I if xp is np else xp.as_tensor(I, device=A.device)
    Jj = J if xp is np else xp.as_tensor(J, device=A.device)
    return I, J, A[:, Ii] * B[:, Jj]


def _cross(plan, W):
    """(n_pairs, R) weighted cross-products of the pairs in ``plan``."""
    return plan[2].T @ W


def fit(xp, X, Zs, Y, M, site_cols_loc, site_cols_scale, *, shape=True, max_iter=100,
        tol=1e-8, eb_rounds=4, init=None, fixed_tau=None, chunk=16, offset_mu=None,
        offset_ls=None):
    """Fit all responses. ``M`` is the (n, R) 0/1 mask of observed responses.

    ``site_cols_*`` are boolean masks over the columns of ``X``/``Zs`` marking the
    penalised site columns. ``fixed_tau`` = (tau_loc, tau_scale) arrays skip the
    empirical-Bayes updates (used when refitting with known priors).
    """
    n, p = X.shape
    q = Zs.shape[1]
    R = Y.shape[1]
    k = 2 if shape else 0
    P = p + q + k
    f64 = Y.dtype
    sl = xp.asarray(site_cols_loc, dtype=f64) if xp is np else xp.as_tensor(site_cols_loc, dtype=f64, device=Y.device)
    ss = xp.asarray(site_cols_scale, dtype=f64) if xp is np else xp.as_tensor(site_cols_scale, dtype=f64, device=Y.device)
    Yz = xp.where(M > 0, Y, xp.zeros_like(Y))
    nobs = M.sum(0)
    oh_x = np.asarray(site_cols_loc, bool)
    oh_z = np.asarray(site_cols_scale, bool)
    plan_xx = _pair_plan(xp, X, X, oh_x, oh_x, True)
    plan_xz = _pair_plan(xp, X, Zs, oh_x, oh_z, False)
    plan_zz = _pair_plan(xp, Zs, Zs, oh_z, oh_z, True)
    om = 0.0 if offset_mu is None else offset_mu
    ol = 0.0 if offset_ls is None else offset_ls

    if init is None:
        # weighted least squares start for beta, log-sd start for gamma
        G = xp.zeros((R, p, p), dtype=f64, **_dev(xp, Y))
        G[:, plan_xx[0], plan_xx[1]] = _cross(plan_xx, M).T
        G[:, plan_xx[1], plan_xx[0]] = _cross(plan_xx, M).T
        G = G + 1e-6 * xp.eye(p, dtype=f64, **_dev(xp, Y))[None]
        G = G + (sl / _SITE_TAU0[0] ** 2)[None, :] * xp.eye(p, dtype=f64, **_dev(xp, Y))[None]
        beta = _solve(xp, G, (X.T @ (M * (Yz - om))).T).T
        res = (Yz - om - X @ beta) * M
        s0 = xp.log(xp.sqrt((res * res).sum(0) / xp.clip(nobs, 1, None)))
        gamma = xp.zeros((q, R), dtype=f64, **_dev(xp, Y))
        gamma[0] = s0
        eps = xp.zeros(R, dtype=f64, **_dev(xp, Y))
        tau = xp.zeros(R, dtype=f64, **_dev(xp, Y))
    else:
        beta, gamma, eps, tau = (xp.asarray(v) if xp is np else v.clone() for v in init)
        if xp is np:
            beta, gamma, eps, tau = beta.copy(), gamma.copy(), eps.copy(), tau.copy()

    if fixed_tau is not None:
        tl, ts = fixed_tau
        eb_rounds = 1
    else:
        tl = xp.full((R,), _SITE_TAU0[0], dtype=f64, **_dev(xp, Y))
        ts = xp.full((R,), _SITE_TAU0[1], dtype=f64, **_dev(xp, Y))

    total_iter = 0
    conv = None
    for rnd in range(eb_rounds):
        pen_b = sl[:, None] / (tl[None, :] ** 2)       # (p, R)
        pen_g = ss[:, None] / (ts[None, :] ** 2)       # (q, R)
        # tiny ridge on everything else, for numerical safety
        pen_b = pen_b + 1e-8
        pen_g = pen_g + 1e-8

        def objective(beta, gamma, eps, tau):
            mu = om + X @ beta
            lsig = ol + Zs @ gamma
            ll = _shash.logpdf(xp, Yz, mu, lsig, eps[None, :], tau[None, :])
            ll = (ll * M).sum(0)
            return ll - 0.5 * (pen_b * beta * beta).sum(0) - 0.5 * (pen_g * gamma * gamma).sum(0)

        lam = xp.full((R,), 1e-3, dtype=f64, **_dev(xp, Y))
        cur = objective(beta, gamma, eps, tau)
        conv = xp.zeros(R, dtype=bool, **_dev(xp, Y))
        for it in range(max_iter):
            total_iter += 1
            mu = om + X @ beta
            lsig = ol + Zs @ gamma
            _, g, h = _shash.derivatives(xp, Yz, mu, lsig, eps[None, :], tau[None, :], shape=shape)
            grad = [X.T @ (g["m"] * M) - pen_b * beta, Zs.T @ (g["s"] * M) - pen_g * gamma]
            if shape:
                grad += [(g["e"] * M).sum(0)[None, :], (g["t"] * M).sum(0)[None, :]]
            grad = xp.concatenate(grad, 0).T                        # (R, P)
            H = xp.zeros((R, P, P), dtype=f64, **_dev(xp, Y))
            H[:, plan_xx[0], plan_xx[1]] = _cross(plan_xx, h["mm"] * M).T
            H[:, plan_xz[0], p + plan_xz[1]] = _cross(plan_xz, h["ms"] * M).T
            H[:, p + plan_zz[0], p + plan_zz[1]] = _cross(plan_zz, h["ss"] * M).T
            if shape:
                for j, key in enumerate(("e", "t")):
                    c = p + q + j
                    H[:, :p, c] = (X.T @ (h["m" + key] * M)).T
                    H[:, p:p + q, c] = (Zs.T @ (h["s" + key] * M)).T
                H[:, p + q, p + q] = (h["ee"] * M).sum(0)
                H[:, p + q, p + q + 1] = (h["et"] * M).sum(0)
                H[:, p + q + 1, p + q + 1] = (h["tt"] * M).sum(0)
            iu = np.triu_indices(P, 1)
            H[:, iu[1], iu[0]] = H[:, iu[0], iu[1]]
            negH = -H
            idx = xp.arange(P, **_dev(xp, Y))
            negH[:, idx[:p], idx[:p]] += pen_b.T
            negH[:, idx[p:p + q], idx[p:p + q]] += pen_g.T
            diag = xp.abs(negH[:, idx, idx])
            # Levenberg-Marquardt: retry rejected regions with more damping
            accepted_any = False
            for _ in range(8):
                A = negH.clone() if xp is not np else negH.copy()
                A[:, idx, idx] += lam[:, None] * (diag + 1e-6)
                step = _solve(xp, A, grad)                            # (R, P)
                step = xp.where(xp.isfinite(step), step, xp.zeros_like(step))
                nb = beta + step[:, :p].T
                ng = gamma + step[:, p:p + q].T
                ne = eps + step[:, p + q] if shape else eps
                nt = tau + step[:, p + q + 1] if shape else tau
                if shape:
                    ne = xp.clip(ne, -5.0, 5.0)
                    nt = xp.clip(nt, -2.5, 2.5)
                new = objective(nb, ng, ne, nt)
                ok = xp.isfinite(new) & (new >= cur - 1e-12 * xp.abs(cur))
                if bool(ok.any()):
                    accepted_any = True
                okp = ok[None, :]
                beta = xp.where(okp, nb, beta)
                gamma = xp.where(okp, ng, gamma)
                if shape:
                    eps = xp.where(ok, ne, eps)
                    tau = xp.where(ok, nt, tau)
                gain = xp.where(ok, new - cur, xp.zeros_like(cur))
                cur = xp.where(ok, new, cur)
                lam = xp.where(ok, xp.clip(lam / 5.0, 1e-9, None), lam * 10.0)
                if bool(ok.all()):
                    break
            decrement = (grad * step).sum(1)
            conv = (xp.abs(decrement) < tol * xp.clip(nobs, 1, None)) | (
                ok & (gain < 1e-10 * xp.clip(nobs, 1, None)))
            if bool(conv.all()) or not accepted_any and bool((lam > 1e12).all()):
                break
        # empirical-Bayes update of the site-effect prior variances
        if fixed_tau is None and rnd < eb_rounds - 1:
            try:
                V = xp.linalg.inv(negH)
            except Exception:  # pragma: no cover - singular only for degenerate designs
                break
            vb = V[:, idx[:p], idx[:p]].T                           # (p, R)
            vg = V[:, idx[p:p + q], idx[p:p + q]].T
            nsl = float(sl.sum())
            nss = float(ss.sum())
            if nsl >= 2:
                tl = xp.sqrt(xp.clip(((beta * beta + vb) * sl[:, None]).sum(0) / nsl, _TAU_FLOOR ** 2, None))
            if nss >= 2:
                ts = xp.sqrt(xp.clip(((gamma * gamma + vg) * ss[:, None]).sum(0) / nss, _TAU_FLOOR ** 2, None))
    return FitResult(beta, gamma, eps, tau, tl, ts, total_iter, conv, cur, negH)


def _dev(xp, ref):
    return {} if xp is np else {"device": ref.device}
