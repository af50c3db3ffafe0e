"""The simulated cohort's files read back exactly through the real FreeSurfer readers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normative.freesurfer import (
    attach_demographics,
    collect_subjects_dir,
    read_stats_table,
)
from normfuse.synthetic import simulate_cohort, write_cohort


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A small cohort written in its real formats."""
    cohort = simulate_cohort(n_patients=10, n_controls_reference=40, seed=3)
    root = tmp_path_factory.mktemp("cohort")
    paths = write_cohort(cohort, root / "out")
    return cohort, paths


def test_patient_stats_files_roundtrip(written):
    """collect_subjects_dir + participants.tsv give back every simulated patient volume."""
    cohort, paths = written
    root = paths["root"]
    vols = collect_subjects_dir(root / "subjects", atlases=("aseg", "aparc"), measures=("volume",))
    parts = pd.read_csv(root / "participants.tsv", sep="\t")
    # folder names are <subject>_<session>; map them back to the participants table
    key = vols["subject_id"].astype(str)
    ids = parts["subject_id"] + "_" + parts["session_id"]
    assert set(key) == set(ids)
    vols = vols.assign(subject_id=key.map(dict(zip(ids, parts["subject_id"], strict=True))),
                       session_id=key.map(dict(zip(ids, parts["session_id"], strict=True))))
    vols = attach_demographics(vols.drop(columns=["age", "sex", "site"], errors="ignore"),
                               parts[["subject_id", "session_id", "age", "sex", "site"]])
    truth = cohort.patient_volumes
    merged = truth.merge(vols, on=["subject_id", "session_id"], suffixes=("_true", "_read"))
    assert len(merged) == len(truth)
    regions = [c for c in truth.columns if c.startswith(("Left-", "Right-", "lh_", "rh_"))
               and c in vols.columns]
    assert len(regions) >= 60
    for r in regions:
        np.testing.assert_allclose(merged[r + "_read"], merged[r + "_true"], rtol=0, atol=0.051)
    np.testing.assert_allclose(merged["icv_read"], merged["icv_true"], rtol=1e-6)
    assert (merged["volume_kind_read"] == "pv_corrected").all()


def test_reference_table_roundtrip(written):
    """The asegstats2table-style reference table reads back exactly."""
    cohort, paths = written
    tab = read_stats_table(paths["root"] / "reference_controls_aseg.txt")
    truth = cohort.reference_controls.set_index("subject_id")
    tab = tab.set_index("subject_id").loc[truth.index]
    for r in ("Left-Thalamus", "Right-Hippocampus", "Left-Putamen"):
        np.testing.assert_allclose(tab[r], truth[r], atol=0.051)
