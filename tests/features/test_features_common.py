"""Common checks over the feature estimators and the stage's import weight."""
from __future__ import annotations

import subprocess
import sys

import pytest
from sklearn.base import clone

from features.ehr import EHRFeaturizer
from features.notes import NoteEmbedder


@pytest.mark.parametrize("est", [EHRFeaturizer(min_patient_frac=0.2, lookbacks=("30D",)),
                                 NoteEmbedder(n_components=5, lookback="90D")])
def test_estimators_clone_and_params(est):
    """Estimators store parameters untouched, clone cleanly and are unfitted after clone."""
    c = clone(est)
    assert c.get_params() == est.get_params()
    assert not [k for k in vars(c) if k.endswith("_") and not k.startswith("_")]


def test_feature_modules_import_light():
    """Importing every features module pulls in no heavy optional library."""
    code = ("import sys, features.ehr, features.notes, features.cohort, features.sources\n"
            "heavy = [m for m in ('torch','xgboost','matplotlib','duckdb','sqlalchemy','statsmodels',"
            "'lifelines','sentence_transformers','nilearn') if m in sys.modules]\nprint(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
