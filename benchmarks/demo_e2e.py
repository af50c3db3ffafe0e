"""End-to-end demo timing: `normfuse demo` into a fresh folder, time per stage.

Run: ``python benchmarks/demo_e2e.py`` (default size, 362 patients) or ``--quick``
(40 patients, 600 reference controls). Prints the manifest's stage timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/models.py would shadow the models package: put the repository root first
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="reduced size (40 patients)")
    args = ap.parse_args(argv)
    from normfuse.cli import main as cli

    size = ["--patients", "40", "--controls", "600"] if args.quick else []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "demo"
        t0 = time.perf_counter()
        rc = cli(["-q", "demo", "--out", str(out), *size])
        wall = time.perf_counter() - t0
        man = json.loads((out / "manifest.json").read_text())
    rows = {"simulate + write": man["demo"]["simulate_and_write_seconds"], **man["timings"]}
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| total (wall, in-process) | {wall:.1f} | exit code {rc}")


if __name__ == "__main__":
    main()
