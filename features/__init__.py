"""Clinical inputs to model-ready tables: EHR windows, note embeddings, cohort table."""
from __future__ import annotations
