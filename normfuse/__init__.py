"""normfuse: normative brain-volume deviations fused with clinical data for MS research.

The distribution ships five top-level packages that run one way::

    normfuse (base)  <-  normative, features  <-  models  <-  analyses  <-  normfuse.cli / pipeline

This package holds the shared base (errors, column checks, persistence, device
selection) and the front door (command line and pipeline). Importing it is light:
heavy libraries are imported inside the functions that use them.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
