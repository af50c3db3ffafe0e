"""The scale benchmark scripts run at tiny size (so they do not rot between GPU sessions)."""
from __future__ import annotations

import pytest


def test_vertexwise_benchmark_tiny():
    """benchmarks.vertexwise at 300 x 40 fits, transforms and recovers the planted z."""
    from benchmarks.vertexwise import run

    res = run(300, 40, chunk_size=16, likelihood="normal")
    assert res["converged"] == 1.0
    assert res["corr_with_planted_median"] > 0.95
    assert 0.9 < res["z_rms"] < 1.1
    assert res["fit_peak_rss_mb"] >= res["rss_before_fit_mb"] > 0


def test_gpu_benchmark_skips_without_cuda(monkeypatch, capsys):
    """benchmarks.gpu exits 0 with a message where no CUDA device is visible."""
    import normfuse.device
    from benchmarks import gpu

    monkeypatch.setattr(normfuse.device, "cuda_available", lambda: False)
    assert gpu.main(["--quick"]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_benchmark_cpu_side_runs(monkeypatch, capsys):
    """benchmarks.gpu --cpu-only times the XGBoost case on the CPU at reduced size."""
    import normfuse.device
    from benchmarks import gpu

    monkeypatch.setattr(normfuse.device, "cuda_available", lambda: False)
    assert gpu.main(["--quick", "--cpu-only", "--cases", "xgboost"]) == 0
    out = capsys.readouterr().out
    assert '"case": "xgboost"' in out and "cpu_s" in out
