"""Time the synthetic-cohort simulator at scale (issue 4: 100,000 patients in well under a minute).

    python benchmarks/synthetic_scale.py            # 100,000 patients, all modalities
    python benchmarks/synthetic_scale.py --quick    # 5,000 patients (a few seconds)
    python benchmarks/synthetic_scale.py --n 20000 --no-notes

Prints one line per run: patients, scans, visits, events, notes, wall and CPU seconds
(CPU time is the better measure on a shared machine: the simulator is single-threaded),
peak RSS.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normfuse.synthetic import simulate_cohort  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of patients")
    ap.add_argument("--quick", action="store_true", help="5,000 patients")
    ap.add_argument("--no-ehr", action="store_true")
    ap.add_argument("--no-notes", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = 5_000 if args.quick else args.n
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    c0 = time.process_time()
    c = simulate_cohort(n_patients=n, n_controls_reference=min(2000, n), seed=args.seed,
                        ehr=not args.no_ehr, notes=not args.no_notes)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    logging.getLogger("bench").info(
        "patients=%d scans=%d visits=%d events=%d notes=%d wall_s=%.1f cpu_s=%.1f peak_rss_mb=%.0f",
        n, len(c.patient_volumes), len(c.visits), len(c.events), len(c.notes), dt, cpu, rss)


if __name__ == "__main__":
    main()
