"""Shared fixtures of the models tests: a small planted comparison table, a local Dask client."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def small():
    """240 planted patients (dev and txt informative)."""
    from models.compare import simulate_comparison_table

    return simulate_comparison_table(240, random_state=3)


@pytest.fixture(scope="module")
def client():
    """Two single-threaded in-process Dask workers, TCP on 127.0.0.1 only, no dashboard."""
    distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       protocol="tcp", host="127.0.0.1", dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()
