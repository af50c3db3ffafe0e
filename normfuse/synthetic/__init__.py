"""The embedded demo cohort: simulated controls and MS patients in real file formats."""
from __future__ import annotations
