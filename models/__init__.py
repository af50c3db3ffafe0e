"""Predictors (XGBoost, torch fusion network) and their evaluation."""
from __future__ import annotations
