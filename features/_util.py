"""Small helpers shared by the feature modules: strict timestamp parsing, drop logging.

Timestamp rule (applies to every table the feature stage reads):

* naive ``datetime64`` columns are used as they are;
* tz-aware columns, or strings that *all* carry an offset (``Z``, ``+01:00``), are
  converted to UTC and made naive;
* strings where some rows carry an offset and others do not are **rejected**
  (mixed time zones cannot be ordered safely); the error names a row of each kind;
* strings that cannot be parsed are **rejected**, naming the first bad row/value;
* missing values (``None``, ``NaN``, empty string) become ``NaT``; callers drop and
  count those rows.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from normfuse.checks import get_logger
from normfuse.errors import DataDroppedWarning, InputFormatError

_TZ_RE = r"(?:Z|[+-]\d{2}:?\d{2})\s*$"
# all-numeric dates with the year last (03/04/2021, 3.4.21): day-first in most of the
# world, month-first in the US; parsing them either way would silently misplace events
_AMBIGUOUS_DATE_RE = r"^\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}\b"

log = get_logger("features")


def to_naive_datetime(col: pd.Series, who: str, name: str) -> pd.Series:
    """Parse ``col`` into naive ``datetime64[ns]`` following the module's timestamp rule."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return col.astype("datetime64[ns]")
    if pd.api.types.is_numeric_dtype(col.dtype) and not col.notna().any():
        return pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns]")
    if pd.api.types.is_numeric_dtype(col.dtype):
        raise InputFormatError(
            f"{who}: column {name!r} holds numbers ({col.dtype}), not timestamps. Convert "
            f"with pd.to_datetime(df[{name!r}], unit='s') (or the unit it was stored in)."
        )
    s = col.astype("string").str.strip()
    s = s.mask(s == "")
    present = s.notna().to_numpy()
    has_tz = s.str.contains(_TZ_RE, regex=True).fillna(False).to_numpy(dtype=bool)
    if has_tz.any() and not has_tz[present].all():
        i_tz = int(np.flatnonzero(has_tz)[0])
        i_naive = int(np.flatnonzero(present & ~has_tz)[0])
        raise InputFormatError(
            f"{who}: column {name!r} mixes timestamps with a time-zone offset "
            f"(row {col.index[i_tz]!r}: {col.iloc[i_tz]!r}) and without one "
            f"(row {col.index[i_naive]!r}: {col.iloc[i_naive]!r}); "
            f"{int(has_tz.sum())} of {int(present.sum())} rows carry an offset. Convert all "
            "timestamps to one convention first, e.g. localise the naive ones with "
            "pd.to_datetime(...).dt.tz_localize('<their zone>')."
        )
    utc = bool(has_tz.any())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = pd.to_datetime(s, errors="coerce", format="ISO8601", utc=utc)
        retry = out.isna().to_numpy() & present
        if retry.any():
            amb = s.str.match(_AMBIGUOUS_DATE_RE).fillna(False).to_numpy(dtype=bool) & retry
            if amb.any():
                i = int(np.flatnonzero(amb)[0])
                raise InputFormatError(
                    f"{who}: column {name!r} holds {int(amb.sum())} dates written day and month "
                    f"as numbers with the year last; first at row {col.index[i]!r}: "
                    f"{col.iloc[i]!r}. Whether such dates are day/month or month/day is not stated "
                    "(03/04/2020 reads either way), and a wrong guess moves events by months. "
                    "Write dates as ISO 8601 "
                    "('2021-04-03'), or parse the column yourself, e.g. "
                    "pd.to_datetime(df[col], dayfirst=True)."
                )
            alt = pd.to_datetime(s[retry], errors="coerce", format="mixed", utc=utc)
            out = out.copy()
            out.loc[retry] = alt
    if utc:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    out = out.astype("datetime64[ns]")
    bad = out.isna().to_numpy() & present
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputFormatError(
            f"{who}: column {name!r} holds {int(bad.sum())} unparseable timestamps; first at "
            f"row {col.index[i]!r}: {col.iloc[i]!r}. Use ISO 8601 ('2021-03-04 08:15:00') "
            "or parse the column yourself with pd.to_datetime(..., format=...)."
        )
    return out


def dropped(n: int, what: str, reason: str, *, warn: bool = True, logger=None) -> None:
    """Log (WARNING) and optionally warn with :class:`DataDroppedWarning` that rows went."""
    if not n:
        return
    (logger or log).warning("dropped %d %s: %s", n, what, reason)
    if warn:
        warnings.warn(f"dropped {n} {what}: {reason}", DataDroppedWarning, stacklevel=3)


def ns(values) -> np.ndarray:
    """``datetime64[ns]`` values as int64 nanoseconds (NaT -> min int)."""
    return np.asarray(values, dtype="datetime64[ns]").view(np.int64)


def parse_offset(spec: str, who: str, arg: str) -> pd.Timedelta | None:
    """Parse a look-back/width like ``'90D'``, ``'4h'``; ``'all'`` -> ``None``."""
    if isinstance(spec, str) and spec.lower() == "all":
        return None
    try:
        td = pd.Timedelta(spec)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{who}: got {arg}={spec!r}; expected a duration such as '4h', '90D', '365D' or 'all'."
        ) from exc
    if td <= pd.Timedelta(0):
        raise ValueError(f"{who}: {arg}={spec!r} must be a positive duration.")
    return td
