"""Batched penalised Newton fitting of many normative regressions at once.

Every response (region) ``r`` has its own parameters

    mu_r      = X  beta_r          (location: intercept, age B-spline, sex, ICV, ... + site offsets)
    log sig_r = Zs gamma_r         (scale: intercept, age B-spline, sex [+ site log-scales])
    eps_r, tau_r                   (SHASH skew and log tail weight; fixed unless ``shape``)

All responses share the design matrices, so each Newton iteration needs, for all
regions together, a handful of matrix products: gradients are ``X.T @ G`` and every
Hessian block is ``Pi.T @ W`` where ``Pi`` holds the products of design-column pairs
(pairs of one-hot columns of different sites are skipped: they never share a row).
Rows are processed in chunks so temporaries stay cache-sized and memory is bounded.

Site effects are Gaussian random effects (ridge penalties) whose variances are
estimated by empirical Bayes on the Laplace approximation: between Newton fits, the
fixed-point update ``tau^2 = sum(b^2) / (m - sum(V_bb) / tau^2)`` (MacKay 1992), which
has the fixed point of the EM update ``tau^2 = (sum(b^2) + sum(V_bb)) / m`` but reaches
it in about half the rounds. With flat priors on the other coefficients this is the
REML-type estimate (a test compares it with statsmodels' REML). The
optimiser is Levenberg-Marquardt-damped Newton with per-region step acceptance, so
each region converges on its own.

Array-generic: ``xp`` is ``numpy`` or ``torch`` (float64 on CPU, any float on CUDA).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from normative import _shash

log = logging.getLogger("normfuse.normative")

_SITE_TAU0 = (0.5, 0.2)     # initial prior sd of site offsets / site log-scales (standardised y)
_EB_ROUNDS = 25             # most empirical-Bayes rounds (each response stops once settled)
_TAU_FLOOR = 1e-3
_CHUNK_ROWS = 4096
_RIDGE = 1e-8               # added to every coefficient's prior precision (numerical guard)
# weakly-informative priors on the SHASH shape: eps ~ N(0, 0.5^2), log delta ~ N(0, 0.5^2).
# Negligible with hundreds of controls; at small n they stop the (mu, sigma, eps) ridge
# of the SHASH likelihood from drifting to degenerate skew.
SHAPE_PRIOR_SD = (0.5, 0.5)
# weakly-informative prior on the log-scale coefficients of age and sex: N(0, 1) on each
# (sigma changing by a factor e between the youngest age and a knot, or between sexes).
# Negligible with hundreds of controls; with a few dozen it stops the scale spline from
# collapsing sigma onto a handful of points (an unbounded likelihood, heavier with SHASH).
SCALE_PRIOR_SD = 1.0


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


def _dev(xp, ref):
    return {} if xp is np else {"device": ref.device}


def _site_ids(onehot_mask):
    """Site index of each one-hot column (in order), -1 for dense columns."""
    m = np.asarray(onehot_mask, bool)
    ids = np.full(m.size, -1, dtype=np.int64)
    ids[m] = np.arange(int(m.sum()))
    return ids


def _pair_index(onehot_a, onehot_b, symmetric):
    """Column pairs (I, J) whose weighted cross-products can be non-zero."""
    sa, sb = _site_ids(onehot_a), _site_ids(onehot_b)
    ii, jj = np.meshgrid(np.arange(sa.size), np.arange(sb.size), indexing="ij")
    keep = ~((sa[ii] >= 0) & (sb[jj] >= 0) & (sa[ii] != sb[jj]))
    if symmetric:
        keep &= ii <= jj
    return ii[keep], jj[keep]


def _solve(xp, A, b):
    return xp.linalg.solve(A, b[..., None])[..., 0]


class _Problem:
    """Row chunks of the data and design, with the pair products precomputed."""

    def __init__(self, xp, X, Zs, Y, M, oh_x, oh_z, offset_mu, offset_ls, chunk_rows, pool=None):
        self.xp = xp
        self.pool = pool if xp is np else None
        self.p, self.q = X.shape[1], Zs.shape[1]
        self.R = Y.shape[1]
        self.pxx = _pair_index(oh_x, oh_x, True)
        self.pxz = _pair_index(oh_x, oh_z, False)
        self.pzz = _pair_index(oh_z, oh_z, True)
        idx = [(self.pxx, X, X), (self.pxz, X, Zs), (self.pzz, Zs, Zs)]
        tidx = []
        for (rows_i, cols_j), A, B in idx:
            if xp is np:
                tidx.append((rows_i, cols_j, A, B))
            else:
                tidx.append((xp.as_tensor(rows_i, device=A.device), xp.as_tensor(cols_j, device=A.device), A, B))
        self.chunks = []
        n = Y.shape[0]
        # near-equal chunks of at most chunk_rows rows (5,000 rows: 2,560 + 2,440, not
        # 4,096 + 904), so the threads sharing them get equal work; sizes are multiples of
        # 512 rows, so large fits keep 4,096-row chunks; the split depends on n only
        k = max(1, -(-n // chunk_rows))
        per_chunk = -(-n // k)                               # ceil(n / k)
        size = min(chunk_rows, -(-per_chunk // 512) * 512)
        for s in range(0, n, size):
            sl = slice(s, min(s + size, n))
            Mc = M[sl]
            Yc = xp.where(Mc > 0, Y[sl], xp.zeros_like(Y[sl]))
            pis = [A[sl][:, ci] * B[sl][:, cj] for ci, cj, A, B in tidx]
            om = 0.0 if offset_mu is None else offset_mu[sl]
            ol = 0.0 if offset_ls is None else offset_ls[sl]
            self.chunks.append((X[sl], Zs[sl], Yc, Mc, pis, om, ol))
        self.nobs = M.sum(0)

    def _map(self, fn):
        """Apply ``fn`` to every chunk (on a thread pool for numpy) and sum the results."""
        if self.pool is None or len(self.chunks) == 1:
            parts = [fn(c) for c in self.chunks]
        else:
            parts = list(self.pool.map(fn, self.chunks))
        out = parts[0]
        for part in parts[1:]:
            out = [a + b for a, b in zip(out, part, strict=True)] if isinstance(out, list) else out + part
        return out

    def loglik(self, beta, gamma, eps, tau):
        xp = self.xp

        def one(c):
            Xc, Zc, Yc, Mc, _, om, ol = c
            ll = _shash.logpdf(xp, Yc, om + Xc @ beta, ol + Zc @ gamma, eps[None, :], tau[None, :])
            return (ll * Mc).sum(0)

        return self._map(one)

    def newton_terms(self, beta, gamma, eps, tau, shape, gaussian):
        """Gradient (R, P) and Hessian (R, P, P) of the log-likelihood."""
        xp = self.xp
        p, q, R = self.p, self.q, self.R
        k = 2 if shape else 0
        P = p + q + k
        ref = beta
        def one(c):
            Xc, Zc, Yc, Mc, (pxx, pxz, pzz), om, ol = c
            _, g, h = _shash.derivatives(xp, Yc, om + Xc @ beta, ol + Zc @ gamma, eps[None, :],
                                         tau[None, :], shape=shape, gaussian=gaussian)
            out = [Xc.T @ (g["m"] * Mc), Zc.T @ (g["s"] * Mc), pxx.T @ (h["mm"] * Mc),
                   pxz.T @ (h["ms"] * Mc), pzz.T @ (h["ss"] * Mc)]
            if shape:
                out += [(g["e"] * Mc).sum(0), (g["t"] * Mc).sum(0),
                        Xc.T @ xp.concatenate([h["me"] * Mc, h["mt"] * Mc], 1),
                        Zc.T @ xp.concatenate([h["se"] * Mc, h["st"] * Mc], 1),
                        (h["ee"] * Mc).sum(0), (h["et"] * Mc).sum(0), (h["tt"] * Mc).sum(0)]
            return out

        parts = self._map(one)
        gb, gg, hxx, hxz, hzz = parts[:5]
        if shape:
            ge, gt, hx_et, hz_et, hee, het, htt = parts[5:]
        grad = [gb, gg] + ([ge[None, :], gt[None, :]] if shape else [])
        grad = xp.concatenate(grad, 0).T
        H = xp.zeros((R, P, P), dtype=beta.dtype, **_dev(xp, ref))
        H[:, self.pxx[0], self.pxx[1]] = hxx.T
        H[:, self.pxz[0], p + self.pxz[1]] = hxz.T
        H[:, p + self.pzz[0], p + self.pzz[1]] = hzz.T
        if shape:
            c = p + q
            H[:, :p, c] = hx_et[:, :R].T
            H[:, :p, c + 1] = hx_et[:, R:].T
            H[:, p:c, c] = hz_et[:, :R].T
            H[:, p:c, c + 1] = hz_et[:, R:].T
            H[:, c, c] = hee
            H[:, c, c + 1] = het
            H[:, c + 1, c + 1] = htt
        iu = np.triu_indices(P, 1)
        H[:, iu[1], iu[0]] = H[:, iu[0], iu[1]]
        return grad, H

    def gram(self):
        """(R, p, p) X' diag(M_r) X, for the least-squares start."""
        xp = self.xp
        acc = None
        for _, _, _, Mc, (pxx, _, _), _, _ in self.chunks:
            v = pxx.T @ Mc
            acc = v if acc is None else acc + v
        G = xp.zeros((self.R, self.p, self.p), dtype=acc.dtype, **_dev(xp, acc))
        G[:, self.pxx[0], self.pxx[1]] = acc.T
        G[:, self.pxx[1], self.pxx[0]] = acc.T
        return G


def posterior_cov(xp, neg_hessian):
    """Inverse of each response's posterior precision (batched).

    A response whose precision is singular or not finite (a degenerate fit, usually
    also reported as not converged) gets the pseudo-inverse of its finite part instead of
    failing the whole batch; the count is logged.
    """
    singular = (np.linalg.LinAlgError,) if xp is np else (xp.linalg.LinAlgError,)
    try:
        return xp.linalg.inv(neg_hessian)
    except singular:
        pass
    ok = xp.isfinite(neg_hessian).all(-1).all(-1)
    H = xp.where(ok[:, None, None], neg_hessian, xp.zeros_like(neg_hessian))
    ev = xp.linalg.eigvalsh(H)
    n_bad = int((ev[:, 0] <= 1e-12 * xp.abs(ev[:, -1])).sum())
    log.warning("posterior precision singular in %d of %d responses; pseudo-inverse used",
                n_bad, H.shape[0])
    return xp.linalg.pinv(H, hermitian=True)


def _prior_sd_update(xp, coef, var, cols, m, sd):
    """One empirical-Bayes step for the prior sd of the penalised columns ``cols``.

    ``gamma = m - sum(V) / sd^2`` is the effective number of site effects the data
    determine; ``sd^2 = sum(b^2) / gamma`` (MacKay's update) has the fixed point of EM.
    """
    ss = (coef * coef * cols[:, None]).sum(0)
    eff = xp.clip(m - (var * cols[:, None]).sum(0) / (sd * sd), 0.5, None)
    return xp.sqrt(xp.clip(ss / eff, _TAU_FLOOR ** 2, None))


def fit(xp, X, Zs, Y, M, site_cols_loc, site_cols_scale, *, shape=True, max_iter=100,
        tol=1e-8, eb_rounds=_EB_ROUNDS, init=None, fixed_tau=None, offset_mu=None,
        offset_ls=None, chunk_rows=_CHUNK_ROWS, n_jobs=None, init_prior_sd=None,
        scale_prior_cols=None, ridge=_RIDGE):
    """Fit all responses. ``M`` is the (n, R) 0/1 mask of observed responses.

    ``site_cols_*`` are boolean masks over the columns of ``X``/``Zs`` marking the
    penalised (one-hot site) columns. ``init`` = (beta, gamma, eps, tau) warm-starts;
    without ``shape`` the given eps/tau stay fixed (zero: the normal model).
    ``fixed_tau`` = (tau_loc, tau_scale) arrays skip the empirical-Bayes updates;
    ``init_prior_sd`` = (tau_loc, tau_scale) arrays start them (default ``_SITE_TAU0``).
    ``scale_prior_cols`` marks the columns of ``Zs`` with the N(0, SCALE_PRIOR_SD^2) prior.
    Each response stops its empirical-Bayes rounds once its prior sds move by less than
    0.1 % (at most ``eb_rounds`` rounds).
    ``offset_mu``/``offset_ls`` (n, R) are added to the location / log-scale.
    ``ridge`` is added to the prior precision of every coefficient (a numerical guard for
    the unpenalised ones); 0 when every coefficient has a proper prior (site adaptation).
    ``n_jobs`` threads share the row chunks on the CPU (default: all cores); BLAS is
    held to one thread meanwhile so the two kinds of parallelism do not fight.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    n_jobs = (os.cpu_count() or 1) if n_jobs is None else max(1, int(n_jobs))
    if xp is not np or n_jobs == 1 or Y.shape[0] <= chunk_rows:
        return _fit(xp, X, Zs, Y, M, site_cols_loc, site_cols_scale, None, shape=shape,
                    max_iter=max_iter, tol=tol, eb_rounds=eb_rounds, init=init,
                    fixed_tau=fixed_tau, offset_mu=offset_mu, offset_ls=offset_ls,
                    chunk_rows=chunk_rows, init_prior_sd=init_prior_sd,
                    scale_prior_cols=scale_prior_cols, ridge=ridge)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(n_jobs) as pool:
        return _fit(xp, X, Zs, Y, M, site_cols_loc, site_cols_scale, pool, shape=shape,
                    max_iter=max_iter, tol=tol, eb_rounds=eb_rounds, init=init,
                    fixed_tau=fixed_tau, offset_mu=offset_mu, offset_ls=offset_ls,
                    chunk_rows=chunk_rows, init_prior_sd=init_prior_sd,
                    scale_prior_cols=scale_prior_cols, ridge=ridge)


def _fit(xp, X, Zs, Y, M, site_cols_loc, site_cols_scale, pool, *, shape, max_iter, tol,
         eb_rounds, init, fixed_tau, offset_mu, offset_ls, chunk_rows, init_prior_sd=None,
         scale_prior_cols=None, ridge=_RIDGE):
    p, q, R = X.shape[1], Zs.shape[1], Y.shape[1]
    P = p + q + (2 if shape else 0)
    f64 = Y.dtype
    dv = _dev(xp, Y)
    sl = np.asarray(site_cols_loc, bool)
    ss = np.asarray(site_cols_scale, bool)
    slx = xp.asarray(sl.astype(float)) if xp is np else xp.as_tensor(sl.astype(float), dtype=f64, device=Y.device)
    ssx = xp.asarray(ss.astype(float)) if xp is np else xp.as_tensor(ss.astype(float), dtype=f64, device=Y.device)
    sp = np.zeros(q, bool) if scale_prior_cols is None else np.asarray(scale_prior_cols, bool)
    spx = xp.asarray(sp.astype(float)) if xp is np else xp.as_tensor(sp.astype(float), dtype=f64, device=Y.device)
    prob = _Problem(xp, X, Zs, Y, M, sl, ss, offset_mu, offset_ls, chunk_rows, pool)
    nobs = prob.nobs

    if init is None:
        G = prob.gram() + (1e-6 + slx / _SITE_TAU0[0] ** 2)[None, :] * xp.eye(p, dtype=f64, **dv)[None]
        om = 0.0 if offset_mu is None else offset_mu
        Yz = xp.where(M > 0, Y - om, xp.zeros_like(Y))
        beta = _solve(xp, G, (X.T @ Yz).T).T
        res = (Yz - X @ beta) * M
        gamma = xp.zeros((q, R), dtype=f64, **dv)
        gamma[0] = xp.log(xp.sqrt((res * res).sum(0) / xp.clip(nobs, 1, None)))
        eps = xp.zeros(R, dtype=f64, **dv)
        tau = xp.zeros(R, dtype=f64, **dv)
    else:
        beta, gamma, eps, tau = (v.copy() if xp is np else v.clone() for v in init)
    gaussian = (not shape) and bool((eps == 0).all()) and bool((tau == 0).all())

    if fixed_tau is not None:
        tl, ts = fixed_tau
        eb_rounds = 1
    elif init_prior_sd is not None:
        tl, ts = (v.copy() if xp is np else v.clone() for v in init_prior_sd)
    else:
        tl = xp.full((R,), _SITE_TAU0[0], dtype=f64, **dv)
        ts = xp.full((R,), _SITE_TAU0[1], dtype=f64, **dv)

    idx = xp.arange(P, **dv)
    total_iter = 0
    conv = xp.zeros(R, dtype=bool, **dv)
    # responses whose site-effect prior variances have settled: frozen from then on, so
    # every response follows the same path whatever else is fitted with it (chunked
    # fits equal the joint fit)
    settled = xp.zeros(R, dtype=bool, **dv)
    negH = None
    cur = None
    for rnd in range(eb_rounds):
        pen_b = slx[:, None] / (tl[None, :] ** 2) + ridge      # (p, R); tiny ridge elsewhere
        pen_g = ssx[:, None] / (ts[None, :] ** 2) + spx[:, None] / SCALE_PRIOR_SD ** 2 + ridge

        def objective(b, g, e, t, pen_b=pen_b, pen_g=pen_g):
            out = (prob.loglik(b, g, e, t) - 0.5 * (pen_b * b * b).sum(0)
                   - 0.5 * (pen_g * g * g).sum(0))
            if shape:
                out = out - 0.5 * (e / SHAPE_PRIOR_SD[0]) ** 2 - 0.5 * (t / SHAPE_PRIOR_SD[1]) ** 2
            return out

        lam = xp.full((R,), 1e-3, dtype=f64, **dv)
        cur = objective(beta, gamma, eps, tau)
        conv = settled.clone() if xp is not np else settled.copy()
        for _ in range(max_iter):
            total_iter += 1
            grad, H = prob.newton_terms(beta, gamma, eps, tau, shape, gaussian)
            grad[:, :p] -= (pen_b * beta).T
            grad[:, p:p + q] -= (pen_g * gamma).T
            negH = -H
            negH[:, idx[:p], idx[:p]] += pen_b.T
            negH[:, idx[p:p + q], idx[p:p + q]] += pen_g.T
            if shape:
                grad[:, p + q] -= eps / SHAPE_PRIOR_SD[0] ** 2
                grad[:, p + q + 1] -= tau / SHAPE_PRIOR_SD[1] ** 2
                negH[:, p + q, p + q] += 1.0 / SHAPE_PRIOR_SD[0] ** 2
                negH[:, p + q + 1, p + q + 1] += 1.0 / SHAPE_PRIOR_SD[1] ** 2
            diag = xp.abs(negH[:, idx, idx])
            # Levenberg-Marquardt: regions whose step does not improve retry with more damping
            todo = ~conv
            step = xp.zeros_like(grad)
            gain = xp.zeros_like(cur)
            for _ in range(10):
                A = negH.copy() if xp is np else negH.clone()
                A[:, idx, idx] += lam[:, None] * (diag + 1e-6)
                st = _solve(xp, A, grad)
                st = xp.where(xp.isfinite(st), st, xp.zeros_like(st))
                st = xp.where(todo[:, None], st, xp.zeros_like(st))
                nb = beta + st[:, :p].T
                ng = gamma + st[:, p:p + q].T
                ne, nt = eps, tau
                if shape:
                    ne = xp.clip(eps + st[:, p + q], -5.0, 5.0)
                    nt = xp.clip(tau + st[:, p + q + 1], -2.5, 2.5)
                new = objective(nb, ng, ne, nt)
                ok = todo & xp.isfinite(new) & (new >= cur - 1e-12 * xp.abs(cur))
                okp = ok[None, :]
                beta = xp.where(okp, nb, beta)
                gamma = xp.where(okp, ng, gamma)
                if shape:
                    eps = xp.where(ok, ne, eps)
                    tau = xp.where(ok, nt, tau)
                gain = xp.where(ok, new - cur, gain)
                step = xp.where(ok[:, None], st, step)
                cur = xp.where(ok, new, cur)
                lam = xp.where(ok, xp.clip(lam / 5.0, 1e-9, None), xp.where(todo, lam * 10.0, lam))
                todo = todo & ~ok
                if not bool(todo.any()):
                    break
            decrement = (grad * step).sum(1)
            small = xp.clip(nobs, 1, None) * tol
            conv = conv | ((xp.abs(decrement) < small) & (gain < small)) | (lam > 1e10)
            if bool(conv.all()):
                break
        # empirical-Bayes update of the site-effect prior variances
        if fixed_tau is None and rnd < eb_rounds - 1:
            V = posterior_cov(xp, negH)
            vb = V[:, idx[:p], idx[:p]].T
            vg = V[:, idx[p:p + q], idx[p:p + q]].T
            nsl, nss = int(sl.sum()), int(ss.sum())
            old = (tl, ts)
            if nsl >= 2:
                tl = _prior_sd_update(xp, beta, vb, slx, nsl, tl)
            if nss >= 2:
                ts = _prior_sd_update(xp, gamma, vg, ssx, nss, ts)
            moved = xp.maximum(xp.abs(tl / old[0] - 1), xp.abs(ts / old[1] - 1))
            # a settled response keeps the prior its parameters were fitted under
            settled = settled | (moved < 1e-3)
            tl = xp.where(settled, old[0], tl)
            ts = xp.where(settled, old[1], ts)
            if bool(settled.all()):
                break
    return FitResult(beta, gamma, eps, tau, tl, ts, total_iter, conv, cur, negH)
