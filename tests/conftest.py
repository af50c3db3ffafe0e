"""Shared fixtures. Reference data live in ../shared/data and are read in place."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NORMFUSE_SHARED", ROOT.parent / "shared")) / "data"


def _shared(sub: str) -> Path:
    p = SHARED / sub
    if not p.exists():
        pytest.skip(
            f"needs the project's shared reference data at {p} (present in CI; absent in a "
            "user's clone). Set NORMFUSE_SHARED to its folder to run this test."
        )
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (skips with a reason when absent)."""
    return _shared("")


@pytest.fixture(scope="session")
def references() -> Path:
    """../shared/data/references: datasets with R reference results."""
    return _shared("references")


@pytest.fixture(scope="session")
def fs_data() -> Path:
    """../shared/data/freesurfer: real FreeSurfer/FastSurfer/SynthSeg outputs."""
    return _shared("freesurfer")


@pytest.fixture(scope="session")
def controls_dir() -> Path:
    """../shared/data/controls: healthy-control volume tables and the benchmark split."""
    return _shared("controls")


@pytest.fixture(scope="session")
def braincharts_dir() -> Path:
    """../shared/data/braincharts: the published pre-trained models."""
    return _shared("braincharts")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator."""
    return np.random.default_rng(20261123)


@pytest.fixture(scope="session")
def system_skip():
    """``skip(reason)`` for tests that drive a system program (PostgreSQL, Chromium).

    Such a test skips on a machine without the program; under CI (``.ci/run`` sets
    ``NORMFUSE_REQUIRE_SYSTEM_TESTS=1``) it fails instead, so a green CI run proves it ran.
    """
    def skip(reason: str):
        if os.environ.get("NORMFUSE_REQUIRE_SYSTEM_TESTS") == "1":
            pytest.fail(f"{reason} [NORMFUSE_REQUIRE_SYSTEM_TESTS=1: this test must run here]",
                        pytrace=False)
        pytest.skip(reason)

    return skip
