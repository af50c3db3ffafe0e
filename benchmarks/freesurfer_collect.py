"""Time collect_subjects_dir on N synthetic copies of bert's aseg.stats.

Writes N subjects (values jittered, so no two files are identical) into a temporary
SUBJECTS_DIR, then times (a) reading every file's bytes alone (the I/O floor) and
(b) collect_subjects_dir on the same folder. The collector should cost a small multiple
of the I/O floor.

Usage::

    python benchmarks/freesurfer_collect.py            # N = 1000
    python benchmarks/freesurfer_collect.py --quick    # N = 100
    python benchmarks/freesurfer_collect.py --n 5000 --bert ../shared/data/freesurfer/bert_fs7.2/stats/aseg.stats
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a checkout: use its packages
    sys.path.insert(0, str(ROOT))
DEFAULT_BERT = ROOT.parent / "shared/data/freesurfer/bert_fs7.2/stats/aseg.stats"
_NUM = re.compile(r"(?<=\s)(\d+\.\d)(?=\s)")


def write_subjects(template: str, root: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` subjects ``sub-0000 ...`` whose table volumes are jittered by +-5 %."""
    rng = np.random.default_rng(seed)
    head, _, table = template.partition("# ColHeaders")
    colline, _, rows = table.partition("\n")
    for i in range(n):
        f = 1.0 + rng.uniform(-0.05, 0.05)
        body = _NUM.sub(lambda m, f=f: f"{float(m.group(1)) * f:.1f}", rows)
        d = root / f"sub-{i:04d}" / "stats"
        d.mkdir(parents=True)
        (d / "aseg.stats").write_text(head + "# ColHeaders" + colline + "\n" + body)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of subjects (default 1000)")
    ap.add_argument("--quick", action="store_true", help="N = 100")
    ap.add_argument("--bert", type=Path, default=DEFAULT_BERT, help="path of bert's aseg.stats")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats; best is reported")
    args = ap.parse_args(argv)
    n = 100 if args.quick else args.n
    logging.basicConfig(level=logging.WARNING)

    from normative.freesurfer import collect_subjects_dir

    template = args.bert.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_subjects(template, root, n)
        t_write = time.perf_counter() - t0
        io_t, coll_t = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            total = sum(len(p.read_bytes()) for p in sorted(root.glob("*/stats/aseg.stats")))
            io_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            vols = collect_subjects_dir(root)
            coll_t.append(time.perf_counter() - t0)
        assert len(vols) == n
        res = {"n_subjects": n, "bytes": total, "write_s": t_write, "io_floor_s": min(io_t),
               "collect_s": min(coll_t), "per_subject_ms": 1e3 * min(coll_t) / n,
               "ratio_to_io": min(coll_t) / min(io_t), "shape": vols.shape}
    for k, v in res.items():
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")  # noqa: T201
    return res


if __name__ == "__main__":
    main()
