"""Run every benchmark script in turn (full sizes); each updates its RESULTS.md section.

    python benchmarks/run_all.py            # everything (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick    # each script's reduced size, RESULTS.md untouched
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "normative_vs_pcntoolkit.py", "freesurfer_collect.py", "synthetic_scale.py", "features_ehr.py",
    "bench_evaluate.py", "stats_coverage.py", "stats_speed.py", "models.py", "compare.py",
    "braincharts_import.py", "vertexwise.py", "demo_e2e.py", "gpu.py",
]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    failed = []
    for name in SCRIPTS:
        t0 = time.perf_counter()
        # run as a module so `benchmarks/models.py` cannot shadow the `models` package
        mod = "benchmarks." + name[:-3]
        rc = subprocess.call([sys.executable, "-m", mod, *argv], cwd=ROOT)
        sys.stderr.write(f"{name}: exit {rc} after {time.perf_counter() - t0:.0f} s\n")
        if rc:
            failed.append(name)
    if failed:
        sys.stderr.write(f"failed: {failed}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
