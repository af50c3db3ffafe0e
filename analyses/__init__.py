"""The statistics: matching, count models, mixed-effects models, survival, stratification, report."""
from __future__ import annotations
