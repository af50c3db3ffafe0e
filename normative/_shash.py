"""The sinh-arcsinh (SHASH) distribution of Jones & Pewsey (2009), array-generic.

Parametrisation: ``Y = mu + sigma * X`` with ``X = sinh((asinh(N) + eps) / delta)`` and
``N ~ Normal(0, 1)``; ``delta = exp(tau) > 0`` controls tail weight (``delta < 1``
heavier tails, ``delta > 1`` lighter), ``eps`` the skew. ``eps = 0, delta = 1`` is the
normal distribution. The exact deviation score of ``y`` is

    z = sinh(delta * asinh((y - mu) / sigma) - eps),

which is standard normal under the model. Functions take an array namespace ``xp``
(``numpy`` or ``torch``) so the same code runs on CPU and CUDA.

References
----------
Jones MC, Pewsey A (2009). Sinh-arcsinh distributions. Biometrika 96(4):761-780.
Dinga R et al. (2021). Normative modeling of neuroimaging data using generalized
additive models of location scale and shape. bioRxiv 2021.06.14.448106.
"""
from __future__ import annotations

import math

import numpy as np

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def zscore(xp, y, mu, sigma, eps, delta):
    """Deviation score: the standard-normal quantile of ``y`` under the model."""
    u = (y - mu) / sigma
    return xp.sinh(delta * xp.asinh(u) - eps)


def quantile(xp, p_norm_quantile, mu, sigma, eps, delta):
    """Value of ``Y`` whose deviation score is ``p_norm_quantile`` (a normal quantile)."""
    return mu + sigma * xp.sinh((xp.asinh(p_norm_quantile) + eps) / delta)


def logpdf(xp, y, mu, log_sigma, eps, tau):
    """Log density of ``y`` (elementwise)."""
    sigma = xp.exp(log_sigma)
    delta = xp.exp(tau)
    u = (y - mu) / sigma
    w = delta * xp.asinh(u) - eps
    s = xp.sinh(w)
    return (tau - log_sigma - _LOG_SQRT_2PI - 0.5 * xp.log1p(u * u)
            + _logcosh(xp, w) - 0.5 * s * s)


def _logcosh(xp, w):
    a = xp.abs(w)
    return a + xp.log1p(xp.exp(-2.0 * a)) - math.log(2.0)


_W_CLIP = 30.0   # |w| beyond this only occurs for absurd outliers; keeps exp() finite


def derivatives(xp, y, mu, log_sigma, eps, tau, shape=True, gaussian=False):
    """Log density and its first and second derivatives per observation.

    Returns ``ll, grad, hess`` where ``grad`` maps names ``m, s, e, t`` (mu,
    log-sigma, eps, tau) to arrays and ``hess`` maps pairs such as ``"ms"`` to arrays.
    With ``shape=False`` only the (mu, log-sigma) parts are computed; with
    ``gaussian=True`` (requires eps = tau = 0) the closed-form normal expressions are
    used, which are identical but cheaper.
    """
    inv_sigma = xp.exp(-log_sigma)
    u = (y - mu) * inv_sigma
    if gaussian:
        uu = u * u
        ll = -log_sigma - _LOG_SQRT_2PI - 0.5 * uu
        grad = {"m": u * inv_sigma, "s": uu - 1.0}
        hess = {"mm": -inv_sigma * inv_sigma + 0.0 * u, "ms": -2.0 * u * inv_sigma, "ss": -2.0 * uu}
        return ll, grad, hess
    delta = xp.exp(tau)
    r2 = 1.0 + u * u
    inv_r = 1.0 / xp.sqrt(r2)
    a = xp.asinh(u)
    w = xp.clip(delta * a - eps, -_W_CLIP, _W_CLIP)
    ew = xp.exp(w)
    iew = 1.0 / ew
    sw = 0.5 * (ew - iew)
    cw = 0.5 * (ew + iew)
    swcw = sw * cw
    cw2 = cw * cw
    g1 = sw / cw - swcw                       # d/dw [log cosh w - sinh^2 w / 2]
    g2 = 1.0 / cw2 - (cw2 + sw * sw)          # sech^2 w - cosh 2w
    ll = tau - log_sigma - _LOG_SQRT_2PI + xp.log(cw * inv_r) - 0.5 * sw * sw
    inv_r2 = inv_r * inv_r
    A = -u * inv_r2 + delta * g1 * inv_r                     # total d ll / du
    dA = (u * u - 1.0) * inv_r2 * inv_r2 + delta * delta * g2 * inv_r2 - delta * u * g1 * inv_r2 * inv_r
    grad = {"m": -A * inv_sigma, "s": -1.0 - A * u}
    hess = {
        "mm": dA * inv_sigma * inv_sigma,
        "ms": (u * dA + A) * inv_sigma,
        "ss": u * u * dA + A * u,
    }
    if shape:
        dA_e = -delta * g2 * inv_r
        dA_t = (delta * g1 + delta * delta * a * g2) * inv_r
        grad["e"] = -g1
        grad["t"] = 1.0 + delta * a * g1
        hess["me"] = -dA_e * inv_sigma
        hess["mt"] = -dA_t * inv_sigma
        hess["se"] = -u * dA_e
        hess["st"] = -u * dA_t
        hess["ee"] = g2
        hess["et"] = -g2 * delta * a
        hess["tt"] = delta * a * g1 + delta * delta * a * a * g2
    return ll, grad, hess


def _p_q(q: np.ndarray) -> np.ndarray:
    """Jones & Pewsey's P_q = e^{1/4} / sqrt(8 pi) (K_{(q+1)/2}(1/4) + K_{(q-1)/2}(1/4))."""
    from scipy.special import kv

    return np.exp(0.25) / np.sqrt(8.0 * np.pi) * (kv((q + 1.0) / 2.0, 0.25) + kv((q - 1.0) / 2.0, 0.25))


def moments(eps: np.ndarray, delta: np.ndarray):
    """Mean and standard deviation of ``X = sinh((asinh(N) + eps) / delta)`` (numpy)."""
    eps = np.asarray(eps, dtype=float)
    delta = np.asarray(delta, dtype=float)
    m1 = np.sinh(eps / delta) * _p_q(1.0 / delta)
    m2 = 0.5 * (np.cosh(2.0 * eps / delta) * _p_q(2.0 / delta) - 1.0)
    return m1, np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
