"""Critical deviations: counting regions with extreme normative Z-scores.

A region is a *critical deviation* when |Z| exceeds ``threshold`` (1.96 by default,
the two-sided 5 % level). ``tail="lower"`` counts only lower-than-expected values,
as the MS normative-modelling study did for atrophy; ``n_crit_neg``/``n_crit_pos``
are always reported. Beside a patient count, report what healthy controls show:
:func:`expected_counts` summarises held-out reference controls, or the count the
threshold implies under perfect calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from normfuse import checks
from normfuse.results import ResultMixin

__all__ = ["critical_deviations", "CriticalDeviations", "expected_counts", "deviation_table"]

Tail = Literal["both", "lower", "upper"]


def _check_tail(tail, threshold):
    if tail not in ("both", "lower", "upper"):
        raise ValueError(f"Got tail={tail!r}; expected 'both', 'lower' or 'upper'.")
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"Got threshold={threshold!r}; expected a positive number such as 1.96.")


@dataclass(frozen=True)
class CriticalDeviations(ResultMixin):
    """Per-subject critical-deviation counts, per-region flags and the expected count.

    Attributes
    ----------
    counts : DataFrame with ``n_crit``, ``n_crit_neg``, ``n_crit_pos`` (input index).
    flags : boolean DataFrame, one column per region (``True`` = critical under ``tail``).
    threshold, tail : the rule used.
    expected : DataFrame (one row) of the expected count in healthy controls:
        ``mean`` and its 95 % interval, ``source`` = 'held-out controls' or 'nominal'.
    """

    counts: object
    flags: object
    threshold: float
    tail: str
    expected: object
    _title = "Critical deviations"

    def summary(self):
        import pandas as pd

        n = self.counts["n_crit"]
        return pd.DataFrame({
            "mean": [float(n.mean())], "sd": [float(n.std(ddof=1)) if len(n) > 1 else np.nan],
            "frac_any": [float((n > 0).mean())],
            "expected_mean": [float(self.expected["mean"].iloc[0])],
            "expected_ci_low": [float(self.expected["ci_low"].iloc[0])],
            "expected_ci_high": [float(self.expected["ci_high"].iloc[0])],
        }, index=pd.Index(["n_crit"], name="count"))

    def _header_lines(self):
        return [f"threshold |Z| > {self.threshold:g}, tail={self.tail}; expected from "
                f"{self.expected['source'].iloc[0]}", f"n subjects = {len(self.counts)}"]

    def region_frequency(self):
        """Fraction of subjects with a critical deviation in each region."""
        return self.flags.mean(0).rename("frac_critical")


def _flags(z, threshold, tail):
    neg = z < -threshold
    pos = z > threshold
    if tail == "lower":
        return neg, neg, pos
    if tail == "upper":
        return pos, neg, pos
    return neg | pos, neg, pos


def expected_counts(reference_z=None, *, n_regions=None, threshold=1.96, tail: Tail = "both"):
    """Expected critical-deviation count per subject in healthy controls.

    With ``reference_z`` (Z of held-out reference controls, DataFrame or array) the
    mean count there and its normal-approximation 95 % CI; else the nominal count
    ``n_regions * P(|N(0,1)| > threshold)`` for the chosen tail.
    """
    import pandas as pd
    from scipy.stats import norm

    _check_tail(tail, threshold)
    if reference_z is not None:
        z = np.asarray(reference_z, float)
        crit, _, _ = _flags(np.where(np.isfinite(z), z, 0.0), threshold, tail)
        c = crit.sum(1)
        m = float(c.mean())
        se = float(c.std(ddof=1) / np.sqrt(len(c))) if len(c) > 1 else np.nan
        return pd.DataFrame({"mean": [m], "ci_low": [m - 1.96 * se], "ci_high": [m + 1.96 * se],
                             "n_reference": [len(c)], "source": ["held-out controls"]})
    if n_regions is None:
        raise ValueError("expected_counts: pass reference_z or n_regions.")
    p = 2 * norm.sf(threshold) if tail == "both" else norm.sf(threshold)
    m = n_regions * p
    return pd.DataFrame({"mean": [m], "ci_low": [m], "ci_high": [m], "n_reference": [0],
                         "source": ["nominal"]})


def critical_deviations(z, threshold: float = 1.96, tail: Tail = "both", *, reference_z=None):
    """Count critical deviations per subject.

    Parameters
    ----------
    z : DataFrame of Z-scores, one column per region (NaN = not measured, never critical).
    threshold : |Z| cut-off, default 1.96.
    tail : "both" (default), "lower" (only lower-than-expected) or "upper".
    reference_z : optional Z of held-out healthy controls, for the expected count.

    Returns
    -------
    CriticalDeviations

    Examples
    --------
    >>> import pandas as pd
    >>> z = pd.DataFrame({"a": [-2.5, 0.1], "b": [2.2, -3.0]})
    >>> res = critical_deviations(z)
    >>> res.counts["n_crit"].tolist(), res.counts["n_crit_neg"].tolist()
    ([2, 1], [1, 1])
    """
    import pandas as pd

    _check_tail(tail, threshold)
    checks.require_dataframe(z, "critical_deviations", "z")
    arr = z.to_numpy(dtype=float, na_value=np.nan)
    if np.isinf(arr).any():
        raise ValueError("critical_deviations: Z holds infinite values; check the model inputs.")
    safe = np.where(np.isfinite(arr), arr, 0.0)
    crit, neg, pos = _flags(safe, threshold, tail)
    counts = pd.DataFrame({"n_crit": crit.sum(1), "n_crit_neg": neg.sum(1), "n_crit_pos": pos.sum(1)},
                          index=z.index)
    flags = pd.DataFrame(crit, index=z.index, columns=z.columns)
    exp = expected_counts(reference_z, n_regions=z.shape[1], threshold=threshold, tail=tail)
    return CriticalDeviations(counts=counts, flags=flags, threshold=float(threshold), tail=tail,
                              expected=exp)


def deviation_table(data, z, *, threshold=1.96, tail: Tail = "both", age_out_of_range=None):
    """Assemble the ``deviations`` contract table: keys, Z per region, counts, flags."""
    import pandas as pd

    res = critical_deviations(z, threshold=threshold, tail=tail)
    keys = [c for c in ("subject_id", "session_id") if c in data.columns]
    parts = [data[keys]] if keys else []
    parts += [z, res.counts]
    if age_out_of_range is not None:
        parts.append(age_out_of_range.rename("age_out_of_range").to_frame())
    return pd.concat(parts, axis=1)
