"""Small numerical pieces shared by the simulator and :mod:`derive_params`.

* :func:`rcs_basis` - restricted (natural) cubic spline basis in age (Harrell, 2015,
  *Regression Modeling Strategies*, sec. 2.4.5): cubic between the knots and linear
  beyond the outer knots, so curves extrapolate as straight lines in log-volume.
* :func:`shash` - the sinh-arcsinh transform of Jones & Pewsey (2009) with tail weight 1,
  standardised to mean 0 and SD 1. It is increasing in ``z``, so a volume built from a
  standard-normal ``z`` has true normative quantile score exactly ``z``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rcs_basis", "shash", "shash_moments", "shash_eps_for_skew"]


def rcs_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Restricted cubic spline columns ``[x, s_1(x), ..., s_{k-2}(x)]`` for ``k`` knots.

    Non-linear columns are scaled by ``(t_k - t_1)^2`` so coefficients are of the order
    of the linear one.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(knots, dtype=np.float64)
    k = t.size
    cols = [x]
    scale = (t[-1] - t[0]) ** 2
    tk, tk1 = t[-1], t[-2]
    for j in range(k - 2):
        s = (np.clip(x - t[j], 0, None) ** 3
             - np.clip(x - tk1, 0, None) ** 3 * (tk - t[j]) / (tk - tk1)
             + np.clip(x - tk, 0, None) ** 3 * (tk1 - t[j]) / (tk - tk1))
        cols.append(s / scale)
    return np.stack(cols, axis=-1)


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(120)
_GH_W = _GH_W / _GH_W.sum()


def shash_moments(eps: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, SD and skewness of ``sinh(asinh(Z) + eps)`` for standard-normal ``Z``."""
    e = np.atleast_1d(np.asarray(eps, dtype=np.float64))[:, None]
    x = np.sinh(np.arcsinh(_GH_X)[None, :] + e)
    m = x @ _GH_W
    c = x - m[:, None]
    v = (c**2) @ _GH_W
    sk = (c**3) @ _GH_W / v**1.5
    return m, np.sqrt(v), sk


def shash(z: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Standardised sinh-arcsinh transform of ``z`` with skew parameter ``eps`` (broadcast)."""
    eps = np.asarray(eps, dtype=np.float64)
    m, s, _ = shash_moments(eps.ravel())
    m = m.reshape(eps.shape)
    s = s.reshape(eps.shape)
    return (np.sinh(np.arcsinh(z) + eps) - m) / s


def shash_eps_for_skew(skew: float, bound: float = 0.9) -> float:
    """Skew parameter ``eps`` whose standardised SHASH has skewness ``skew`` (clipped)."""
    from scipy.optimize import brentq

    lo, hi = shash_moments(-bound)[2][0], shash_moments(bound)[2][0]
    skew = float(np.clip(skew, lo + 1e-9, hi - 1e-9))
    return float(brentq(lambda e: shash_moments(e)[2][0] - skew, -bound, bound))
