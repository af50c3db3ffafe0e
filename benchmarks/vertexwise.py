"""Vertex-wise normative fit: 5,000 simulated controls x 20,484 fsaverage5 vertices.

Simulates cortical thickness with a few shared age curves (vertex loadings), sex and
site offsets, heteroscedastic noise and planted standard-normal deviations, written
into one ``(n, R)`` float64 array in vertex blocks (no DataFrame of the whole
thing); then times :func:`normative.many.fit_chunked` and
:func:`normative.many.transform_chunked`, reports peak RSS after each stage
(``resource.getrusage`` overall; a 50 ms /proc sampler within each stage) and checks the Z against the planted deviations.

Run (repository root)::

    python -m benchmarks.vertexwise             # full size (several minutes on 2 cores)
    python -m benchmarks.vertexwise --quick     # 1,000 x 2,000, seconds
    python -m benchmarks.vertexwise --n 5000 --vertices 20484 --chunk-size 500 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import pandas as pd


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss in KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def current_rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class StagePeak:
    """Peak RSS within a ``with`` block, sampled every 50 ms by a thread."""

    def __enter__(self):
        import threading

        self.peak = current_rss_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, current_rss_mb())

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_mb())
        return False


def simulate(n: int, R: int, *, n_sites: int = 6, seed: int = 0, block: int = 2048):
    """Covariates (DataFrame), thickness (n, R) and the planted z (n, R) float32."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(8.0, 85.0, n)
    male = rng.random(n) < 0.5
    site = rng.integers(0, n_sites, n)
    icv = rng.normal(1.45e6, 1.2e5, n) * np.where(male, 1.07, 0.95)
    cov = pd.DataFrame({"age": age, "sex": np.where(male, "M", "F"), "icv": icv,
                        "site": pd.array([f"site_{s:02d}" for s in site], dtype="string")})
    a = (age - 40.0) / 30.0
    curves = np.column_stack([a, a**2, np.tanh(2 * a), np.exp(-((age - 20.0) / 10.0) ** 2)])
    Y = np.empty((n, R))
    Z = np.empty((n, R), dtype=np.float32)
    for s in range(0, R, block):
        e = min(s + block, R)
        k = e - s
        base = rng.uniform(1.8, 3.4, k)
        load = rng.normal(0.0, 1.0, (curves.shape[1], k)) * np.array([[0.20], [0.05], [0.05], [0.1]])
        site_off = rng.normal(0.0, 0.05, (n_sites, k))
        sd0 = rng.uniform(0.12, 0.25, k)
        sd_age = rng.uniform(0.0, 0.3, k)
        mu = base + curves @ load + 0.03 * male[:, None] + site_off[site]
        sd = sd0 * (1.0 + sd_age * np.clip(a, 0, None)[:, None])
        z = rng.standard_normal((n, k))
        Y[:, s:e] = mu + sd * z
        Z[:, s:e] = z
    return cov, Y, Z


def run(n: int, R: int, chunk_size: int, likelihood: str, seed: int = 0) -> dict:
    from normative.many import fit_chunked, transform_chunked
    from normative.surface import vertex_names

    out = {"n": n, "vertices": R, "chunk_size": chunk_size, "likelihood": likelihood,
           "cores": os.cpu_count(), "rss_start_mb": round(peak_rss_mb(), 1)}
    t = time.perf_counter()
    cov, Y, Ztrue = simulate(n, R, seed=seed)
    out["simulate_s"] = round(time.perf_counter() - t, 2)
    out["data_mb"] = round(Y.nbytes / 2**20, 1)
    out["simulate_peak_rss_mb"] = round(peak_rss_mb(), 1)
    names = vertex_names("fsaverage5") if R == 20484 else None
    out["rss_before_fit_mb"] = round(current_rss_mb(), 1)
    t = time.perf_counter()
    with StagePeak() as pk:
        model = fit_chunked(cov, Y, names=names, chunk_size=chunk_size, likelihood=likelihood)
    out["fit_s"] = round(time.perf_counter() - t, 2)
    out["fit_peak_rss_mb"] = round(pk.peak, 1)
    out["converged"] = float(np.mean(model.converged_))
    Zhat = np.empty((n, R), dtype=np.float32)
    out["rss_before_transform_mb"] = round(current_rss_mb(), 1)
    t = time.perf_counter()
    with StagePeak() as pk:
        transform_chunked(model, cov, Y, chunk_size=chunk_size, out=Zhat)
    out["transform_s"] = round(time.perf_counter() - t, 2)
    out["transform_peak_rss_mb"] = round(pk.peak, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    # in-sample accuracy against the planted deviations
    out["z_rms"] = round(float(np.sqrt(np.mean([np.mean(Zhat[:, s:s + 2048].astype(np.float64) ** 2)
                                                 for s in range(0, R, 2048)]))), 4)
    out["frac_abs_z_gt_1.96"] = round(float((np.abs(Zhat) > 1.96).mean()), 4)
    r = np.empty(R)
    for s in range(0, R, 2048):           # in vertex blocks: keeps the check's memory small
        zc = Zhat[:, s:s + 2048] - Zhat[:, s:s + 2048].mean(0)
        tc = Ztrue[:, s:s + 2048] - Ztrue[:, s:s + 2048].mean(0)
        r[s:s + 2048] = (zc * tc).sum(0) / np.sqrt((zc * zc).sum(0) * (tc * tc).sum(0))
    out["corr_with_planted_median"] = round(float(np.median(r)), 4)
    out["corr_with_planted_min"] = round(float(r.min()), 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 controls x 2,000 vertices")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--vertices", type=int, default=20484)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--likelihood", default="shash", choices=["shash", "normal"])
    ap.add_argument("--json", help="write the numbers to this JSON file")
    a = ap.parse_args(argv)
    n, R = (1000, 2000) if a.quick else (a.n, a.vertices)
    res = run(n, R, a.chunk_size, a.likelihood)
    text = json.dumps(res, indent=2)
    sys.stdout.write(text + "\n")
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
