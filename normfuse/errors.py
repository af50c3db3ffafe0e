"""Exception and warning types shared by every normfuse stage.

Errors subclass ``ValueError``/``TypeError`` so that generic handlers keep working;
each message says what was wrong, shows the offending values and how to fix it.
Warnings are categorized so users can silence exactly one kind, e.g.::

    import warnings
    from normfuse.errors import OutOfRangeWarning
    warnings.filterwarnings("ignore", category=OutOfRangeWarning)
"""
from __future__ import annotations

__all__ = [
    "NormfuseError",
    "NotFittedError",
    "ColumnContractError",
    "InputFormatError",
    "SchemaError",
    "UnknownSiteError",
    "VolumeKindError",
    "MissingDependencyError",
    "NormfuseWarning",
    "ConvergenceWarning",
    "SmallReferenceGroupWarning",
    "OutOfRangeWarning",
    "DataDroppedWarning",
]


class NormfuseError(Exception):
    """Base class of every error raised by normfuse on purpose."""


class NotFittedError(NormfuseError, ValueError, AttributeError):
    """An estimator method that needs ``fit`` was called before ``fit``."""


class ColumnContractError(NormfuseError, ValueError):
    """A DataFrame lacks required columns or has columns that do not match ``fit``.

    ``missing`` and ``present`` (column names) are filled by ``checks.require_columns`` so
    callers can word their own fix.
    """

    def __init__(self, message: str, *, missing=(), present=()):
        super().__init__(message)
        self.missing = list(missing)
        self.present = list(present)


class InputFormatError(NormfuseError, ValueError):
    """A file or table could not be parsed; the message names file, line/row and value."""

    def __init__(self, message: str, *, path=None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class SchemaError(NormfuseError, ValueError):
    """A saved model is of another kind, another schema version, or was altered."""


class UnknownSiteError(NormfuseError, ValueError):
    """Data from a site the model was neither fitted on nor adapted to.

    ``sites`` (the unknown site names), ``n_rows`` (rows from them) and ``known`` (the
    model's sites) let callers such as the command line word their own fix.
    """

    def __init__(self, message: str, *, sites=(), n_rows: int | None = None, known=()):
        super().__init__(message)
        self.sites = list(sites)
        self.n_rows = n_rows
        self.known = list(known)


class VolumeKindError(NormfuseError, ValueError):
    """Volumes of different kinds (pv-corrected, voxel count, soft) were mixed."""


class MissingDependencyError(NormfuseError, ImportError):
    """An optional dependency is needed for the requested feature."""


class NormfuseWarning(UserWarning):
    """Base class of normfuse warnings."""


class ConvergenceWarning(NormfuseWarning):
    """An optimiser stopped before converging, or a fit hit a boundary."""


class SmallReferenceGroupWarning(NormfuseWarning):
    """Too few reference subjects for stable estimates (e.g. a site with < 5 controls)."""


class OutOfRangeWarning(NormfuseWarning):
    """Covariates (usually age) outside the range the model was fitted on."""


class DataDroppedWarning(NormfuseWarning):
    """Rows were dropped as documented; the message counts them and says why."""
