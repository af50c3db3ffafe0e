"""GPU/CPU timing ratios for the four cases of issue 8 section 4.

Cases (full size; ``--quick`` divides every size by about 20):

1. ``normative``  NormativeModel fit, 60,000 simulated controls x 100 regions;
2. ``vertexwise`` fit_chunked, 5,000 controls x 20,484 vertices (``benchmarks.vertexwise``);
3. ``xgboost``    XGBClassifierModel, 100,000 patients x 120 features, 300 rounds;
4. ``fusion``     FusionClassifier, one epoch on 100,000 simulated patients.

Each case is timed on the CPU and on CUDA with the same data and seed, and the
largest difference between the two results is printed beside the ratio (Z for the
normative cases, probabilities for XGBoost and the fusion network), so a run also
checks that the CUDA path gives the CPU result to float tolerance.

Without a CUDA device the script prints that it skipped and exits 0; ``--cpu-only``
times the CPU side anyway (a dry run of the script). ``--append`` adds a
``## GPU/CPU ratios`` section to benchmarks/RESULTS.md.

Run (repository root)::

    python -m benchmarks.gpu                      # full size, needs a GPU
    python -m benchmarks.gpu --quick --cpu-only   # seconds, anywhere
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CASES = ("normative", "vertexwise", "xgboost", "fusion")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _sync():
    from normfuse.device import cuda_available

    if cuda_available():
        import torch

        torch.cuda.synchronize()


def case_normative(device: str, quick: bool, seed: int = 0):
    from normative.model import NormativeModel
    from normative.simulate import simulate_controls

    n, R = (3000, 20) if quick else (60000, 100)
    df = simulate_controls(n, R, n_sites=8, seed=seed)
    cols = [c for c in df.columns if c.startswith("region_")]

    def run():
        m = NormativeModel(responses=cols, device=device).fit(df)
        _sync()
        return m

    t, m = _timed(run)
    return t, m.transform(df.iloc[:2000]).to_numpy(), f"{n:,} x {R}"


def case_vertexwise(device: str, quick: bool, seed: int = 0):
    from benchmarks.vertexwise import simulate
    from normative.many import fit_chunked, transform_chunked

    n, R = (1000, 1024) if quick else (5000, 20484)
    cov, Y, _ = simulate(n, R, seed=seed)

    def run():
        m = fit_chunked(cov, Y, chunk_size=1000 if device == "cpu" else 4096, device=device)
        _sync()
        return m

    t, m = _timed(run)
    Z = transform_chunked(m, cov.iloc[:500], Y[:500], chunk_size=1000)
    return t, Z, f"{n:,} x {R:,}"


def _xgb_table(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[rng.random((n, d)) < 0.05] = np.nan
    logit = 0.8 * np.nan_to_num(X[:, 0]) - 0.5 * np.nan_to_num(X[:, 1]) + 0.3 * np.nan_to_num(X[:, 2] * X[:, 3])
    y = (rng.random(n) < 1 / (1 + np.exp(-(logit - 0.7)))).astype(int)
    cols = [f"dev__{j}" for j in range(d // 2)] + [f"ehr__{j}" for j in range(d - d // 2)]
    t = pd.DataFrame(X, columns=cols)
    t["patient_id"] = np.arange(n)
    return t, y


def case_xgboost(device: str, quick: bool, seed: int = 0):
    from models.xgb import XGBClassifierModel

    n, d, rounds = (5000, 40, 60) if quick else (100000, 120, 300)
    table, y = _xgb_table(n, d, seed)

    def run():
        return XGBClassifierModel(feature_prefixes=("dev__", "ehr__"), n_estimators=rounds,
                                  early_stopping_rounds=None, device=device,
                                  random_state=seed).fit(table, y)

    t, m = _timed(run)
    return t, m.predict_proba(table.iloc[:5000])[:, 1], f"{n:,} x {d}, {rounds} rounds"


def case_fusion(device: str, quick: bool, seed: int = 0):
    from models.fusion import FusionClassifier
    from models.fusion_data import simulate_fusion_data

    n = 5000 if quick else 100000
    data, y = simulate_fusion_data(n, random_state=seed)

    def run():
        m = FusionClassifier("lstm", epochs=1, batch_size=256, validation_fraction=0.0,
                             device=device, random_state=seed).fit(data, y)
        _sync()
        return m

    t, m = _timed(run)
    return t, m.predict_proba(data)[:2000, 1], f"{n:,} patients, 1 epoch"


FUNCS = {"normative": case_normative, "vertexwise": case_vertexwise,
         "xgboost": case_xgboost, "fusion": case_fusion}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes divided by about 20")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--cpu-only", action="store_true",
                    help="time the CPU side even without a GPU (no ratios)")
    ap.add_argument("--append", action="store_true", help="append a section to benchmarks/RESULTS.md")
    ap.add_argument("--json", help="write the numbers to this JSON file")
    a = ap.parse_args(argv)
    from normfuse.device import cuda_available

    gpu = cuda_available()
    if not gpu and not a.cpu_only:
        sys.stdout.write("benchmarks.gpu: no CUDA device visible to torch; skipped "
                         "(use --cpu-only to time the CPU side).\n")
        return 0
    rows = []
    for case in a.cases:
        t_cpu, r_cpu, size = FUNCS[case]("cpu", a.quick)
        row = {"case": case, "size": size, "cpu_s": round(t_cpu, 2)}
        if gpu:
            FUNCS[case]("cuda", True)                       # warm-up (CUDA context, kernels)
            t_gpu, r_gpu, _ = FUNCS[case]("cuda", a.quick)
            row.update(gpu_s=round(t_gpu, 2), cpu_over_gpu=round(t_cpu / t_gpu, 2),
                       max_abs_diff=float(np.nanmax(np.abs(np.asarray(r_cpu) - np.asarray(r_gpu)))))
        rows.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    if a.append and gpu:
        import torch

        name = torch.cuda.get_device_name(0)
        lines = ["", f"## GPU/CPU ratios (`benchmarks/gpu.py`{' --quick' if a.quick else ''})", "",
                 f"GPU: {name}. CPU: this machine's cores. Max |diff| compares the CUDA result with "
                 "the CPU's (Z or probabilities).", "",
                 "| case | size | CPU s | GPU s | CPU/GPU | max abs diff |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['size']} | {r['cpu_s']} | {r['gpu_s']} | {r['cpu_over_gpu']} | "
                  f"{r['max_abs_diff']:.2e} |" for r in rows]
        res = Path(__file__).with_name("RESULTS.md")
        res.write_text(res.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
