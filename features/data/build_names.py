"""Build the name gazetteer shipped in ``features/data`` from the US Census 1990 name lists.

Source: the 1990 US Census name-frequency files ``dist.female.first``, ``dist.male.first``
and ``dist.all.last`` (US Census Bureau, public domain), as redistributed unchanged in the
``names==0.3.0`` sdist on PyPI (MIT). Each line is ``NAME  freq%  cumulative%  rank``.

Outputs (one lower-case name per line, gzip, deterministic bytes: no timestamp, mtime 0):

- ``census1990_first.txt.gz``: every first name of both lists (5,163 names).
- ``census1990_last.txt.gz``: the most frequent ``--n-last`` surnames (default 20,000).
  The full list has 88,799 surnames covering 90.5 % of the 1990 population; the top 20,000
  cover 78.0 % (top 10,000: 71.1 %) at a quarter of the size. The scrubber uses surnames
  only as supporting evidence (lower-case or ALL-CAPS tokens after a cue, a word such as
  "Will" or "Grant" opening a "First Last" pair), never to flag a lone word, so the rare
  tail adds little.

Usage (run from the repository root; not part of the installed package)::

    python features/data/build_names.py /path/to/names-0.3.0.tar.gz
"""
from __future__ import annotations

import argparse
import gzip
import io
import logging
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
log = logging.getLogger("features.data.build_names")
_MEMBERS = {"female": "dist.female.first", "male": "dist.male.first", "last": "dist.all.last"}


def read_census(tar_path: Path) -> dict[str, list[tuple[str, float]]]:
    """Names and cumulative frequencies (in file order: most frequent first) of each list."""
    out: dict[str, list[tuple[str, float]]] = {}
    with tarfile.open(tar_path, "r:gz") as tf:
        members = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
        for key, fname in _MEMBERS.items():
            if fname not in members:
                raise SystemExit(f"{tar_path}: no member {fname!r}; pass the names-0.3.0 sdist.")
            text = tf.extractfile(members[fname]).read().decode("ascii")
            rows = [line.split() for line in text.splitlines() if line.strip()]
            out[key] = [(r[0].lower(), float(r[2])) for r in rows]
    return out


def write_gz(path: Path, names: list[str]) -> None:
    """Write one name per line, gzip-compressed with a fixed header (reproducible bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(("\n".join(names) + "\n").encode("ascii"))
    path.write_bytes(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdist", type=Path, help="names-0.3.0.tar.gz")
    ap.add_argument("--n-last", type=int, default=20000, help="surnames kept (most frequent first)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lists = read_census(args.sdist)
    first = sorted({n for key in ("female", "male") for n, _ in lists[key]})
    last = [n for n, _ in lists["last"][: args.n_last]]
    write_gz(args.out / "census1990_first.txt.gz", first)
    write_gz(args.out / "census1990_last.txt.gz", sorted(last))
    cover = lists["last"][min(args.n_last, len(lists["last"])) - 1][1]
    log.info("%d first names; %d of %d surnames (cumulative %.1f %% of the 1990 population)",
             len(first), len(last), len(lists["last"]), cover)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
