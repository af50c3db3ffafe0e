"""The ``normfuse`` command line.

::

    normfuse demo [--out DIR] [--patients N] [--seed S]      simulate a cohort, run everything
    normfuse run study.toml [--out DIR]                       the pipeline on your own data
    normfuse freesurfer collect SUBJECTS_DIR --out vols.parquet [--demographics participants.tsv]
    (collect and the normative subcommands take --join FILE and --where EXPR, repeatable)
    normfuse normative fit TABLE... --out MODEL [--demographics F]
    normfuse normative adapt MODEL TABLE... --out MODEL2 [--demographics F]
    normfuse normative score MODEL TABLE... --out deviations.parquet [--tail lower]
    normfuse normative evaluate MODEL TABLE... --out metrics.csv
    normfuse normative import-braincharts ZIP -o MODEL [--measures A,B|--measures-file F] [--list]
    normfuse features build study.toml --out DIR      (and models compare / analyses run / report)

Global options: ``--quiet`` (errors only, no progress bars), ``--verbose`` (``-v`` info,
``-vv`` debug and tracebacks). Exit codes: 0 success, 2 bad input or configuration (one
line on stderr naming the problem and the fix), 1 an unexpected error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from normfuse import __version__

__all__ = ["main", "console_main", "build_parser"]

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPT = 0, 1, 2, 130
_ATLASES = ("aseg", "aparc", "aparc.DKTatlas", "aparc.a2009s", "wmparc", "brainvol")
log = logging.getLogger("normfuse.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse's own convention)
        self.exit(EXIT_INPUT, f"normfuse: error: {message} (see `{self.prog} --help`)\n")


def _setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    root = logging.getLogger("normfuse")
    for h in list(root.handlers):
        if getattr(h, "_normfuse_cli", False):
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("normfuse: %(levelname)s: %(message)s"))
    h._normfuse_cli = True
    root.addHandler(h)
    root.setLevel(level)
    import warnings

    logging.captureWarnings(True)
    if quiet:
        warnings.simplefilter("ignore")


# ----------------------------------------------------------------------------- helpers
def _write_table(df, path: str | Path) -> Path:
    from normfuse.persist import atomic_path

    path = Path(path)
    suf = path.suffix.lower()
    if suf not in (".csv", ".parquet", ".tsv"):
        raise ValueError(f"--out {path}: unsupported suffix {suf!r}; use .csv, .tsv or .parquet.")
    with atomic_path(path) as tmp:
        if suf == ".parquet":
            d = df.copy()
            for c in d.columns:
                if d[c].dtype == object:
                    d[c] = d[c].astype("string")
            d.to_parquet(tmp)
        else:
            df.to_csv(tmp, sep="\t" if suf == ".tsv" else ",", index=False)
    return path


def _volumes(args):
    from normfuse.pipeline import read_volumes

    return read_volumes(args.tables, args.demographics, what="volumes",
                        sex_codes=args.sex_codes, join=args.join or (), where=args.where or ())


def _tables_named(args) -> str:
    """The volume tables a subcommand read, as the user typed them (for error messages)."""
    tabs = [str(t) for t in args.tables]
    out = ", ".join(tabs[:3]) + (f" (+{len(tabs) - 3} more)" if len(tabs) > 3 else "")
    if getattr(args, "demographics", None):
        out += f" (with --demographics {args.demographics})"
    return out


def _contract_message(exc, args) -> str:
    """A model's column-contract error, said about the files: the table(s) named, lists capped."""
    from normfuse.checks import _fmt

    where = _tables_named(args)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not exc.missing:
        return f"{where}: {' '.join(lines)}"
    who = lines[0].split(":", 1)[0] if ":" in lines[0] else "normfuse"
    missing, present = exc.missing, exc.present
    if "columns must match" in lines[0]:
        model = f"the model {args.model}" if getattr(args, "model", None) else "the model"
        return (f"{where}: {who}: the table lacks {len(missing)} region column(s) {model} was "
                f"fitted on: {_fmt(missing, limit=10)}; its columns: {_fmt(present, limit=10)}. "
                "Pass volume tables with these regions (FreeSurfer 7 names, as `normfuse "
                "freesurfer collect` writes), or a model fitted on this table's regions.")
    hints = [ln for ln in lines[1:] if not ln.startswith(("Missing:", "Present:", "Unexpected:"))]
    demo = "" if {"age", "sex", "site"}.isdisjoint(missing) else (
        " age, sex and site may also come from --demographics FILE (subject_id, age, sex, "
        "site).")
    return (f"{where}: {who}: required columns are missing: {_fmt(missing, limit=10)}; "
            f"present: {_fmt(present, limit=10)}. Add or rename them in the table."
            + demo + (" " + " ".join(hints) if hints else ""))


def _about_tables(func, args):
    """Run ``func`` (reading or modelling the subcommand's tables); errors name the tables."""
    from normfuse.errors import ColumnContractError, InputFormatError

    try:
        return func()
    except ColumnContractError as exc:
        raise ColumnContractError(_contract_message(exc, args), missing=exc.missing,
                                  present=exc.present) from exc
    except InputFormatError as exc:
        if exc.path is not None:        # it names its file already
            raise
        raise InputFormatError(f"{_tables_named(args)}: {exc}") from exc


def _load_model(path):
    """A saved NormativeModel or BrainchartsModel, by the kind recorded in the folder."""
    from normfuse._pipeline_common import load_reference_model
    from normfuse.errors import InputFormatError

    if not Path(path).is_dir():
        raise InputFormatError("normative model folder not found (pass the folder written by "
                               "`normfuse normative fit`/`adapt`, or by `normfuse normative "
                               "import-braincharts`).", path=path)
    return load_reference_model(path, "normative model folder")


# ----------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from normfuse.config import to_toml
    from normfuse.persist import atomic_write_text
    from normfuse.pipeline import OutputFolderError, demo_config, run_pipeline
    from normfuse.synthetic import simulate_cohort, write_cohort
    from normfuse.synthetic.writers import MANIFEST as SYN_MANIFEST

    out = Path(args.out).absolute()        # relative paths would be resolved twice in the config
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: the output path is a file, not a folder; choose another "
                                "--out.")
    data = out / "data"
    n_local = 20
    n_sites_p = 2
    sim = {"n_patients": args.patients, "seed": args.seed,
           "n_controls_reference": args.controls,
           "n_matched_controls": args.patients + n_local * n_sites_p}
    t0 = time.perf_counter()
    reuse = False
    if (data / SYN_MANIFEST).is_file() and not args.force:
        m = json.loads((data / SYN_MANIFEST).read_text())
        if m.get("seed") == args.seed and m.get("n_patients") == args.patients:
            reuse = True
        else:
            raise OutputFolderError(
                f"{out}: holds a demo simulated with other settings (seed {m.get('seed')}, "
                f"{m.get('n_patients')} patients); pass --force to replace it, or choose another "
                "--out.")
    if not reuse:
        from normfuse.pipeline import _check_out

        _check_out(out, "", {}, args.force)   # refuses a folder holding something else
        log.info("simulating %d patients (seed %d)", args.patients, args.seed)
        cohort = simulate_cohort(n_patients=args.patients,
                                 n_controls_reference=args.controls,
                                 n_matched_controls=sim["n_matched_controls"],
                                 n_patient_sites=n_sites_p, seed=args.seed)
        write_cohort(cohort, data, overwrite=True)
    t_sim = time.perf_counter() - t0
    cfg = demo_config(data, seed=args.seed, n_local=n_local)
    toml = to_toml(cfg, relative_to=out)
    res = run_pipeline(cfg, out, force=args.force and not reuse, quiet=args.quiet,
                       extra_manifest={"demo": {**sim, "simulate_and_write_seconds":
                                                round(t_sim, 3), "reused_data": reuse},
                                       "seeds": {"simulation": args.seed}})
    atomic_write_text(out / "study.toml", toml)
    _finish(res, out, args)
    return EXIT_OK


def _finish(res, out: Path, args) -> None:
    if not args.quiet:
        tim = ", ".join(f"{k} {v:.1f}s" + (" (resumed)" if k in res.skipped else "")
                        for k, v in res.timings.items())
        sys.stderr.write(f"normfuse: results in {out} ({tim})\n")


def cmd_run(args) -> int:
    from normfuse.config import load_config
    from normfuse.pipeline import run_pipeline

    cfg = load_config(args.config)
    if getattr(args, "n_jobs", None) is not None:   # `models compare --n-jobs`
        cfg["models"]["n_jobs"] = args.n_jobs
    out = Path(args.out).absolute() if args.out else Path(args.config).resolve().parent / "normfuse-output"
    res = run_pipeline(cfg, out, force=args.force, quiet=args.quiet,
                       stages=[args.until] if getattr(args, "until", None) else None)
    _finish(res, out, args)
    return EXIT_OK


def _n_jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-zero integer (1: one job at a "
                                         "time, -1: all cores)")
    return n


def _stage_cmd(stage: str):
    def run(args) -> int:
        args.until = stage
        return cmd_run(args)

    return run


def cmd_fs_collect(args) -> int:
    from normfuse.errors import InputFormatError
    from normfuse.pipeline import read_volumes

    if not Path(args.subjects_dir).is_dir():
        raise InputFormatError("SUBJECTS_DIR not found or not a folder.", path=args.subjects_dir)
    args.atlases_given = args.atlases is not None
    args.atlases = args.atlases or ["aseg", "aparc"]
    try:
        vols = read_volumes(args.subjects_dir, args.demographics, atlases=args.atlases,
                            what="volumes", sex_codes=args.sex_codes, join=args.join or (),
                            where=args.where or ())
    except InputFormatError as exc:
        # a stats file of one of the atlases asked for is missing: say which option helps
        path = getattr(exc, "path", None)
        name = Path(path).name if path else ""
        stem = next((a for a in sorted(args.atlases, key=len, reverse=True)
                     if name in (f"{a}.stats", f"lh.{a}.stats", f"rh.{a}.stats")), None)
        if stem is None or "not found" not in str(exc):
            raise
        rest = [a for a in args.atlases if a != stem]
        hint = (f" Collect without it: --atlases {' '.join(rest)}" if rest else "") + \
            (" (the default --atlases is aseg aparc)." if not args.atlases_given else ".")
        raise InputFormatError(f"{exc}{hint}") from exc
    _write_table(vols, args.out)
    log.info("collected %d scans into %s", len(vols), args.out)
    return EXIT_OK


def cmd_norm_fit(args) -> int:
    from normative.model import NormativeModel

    vols = _about_tables(lambda: _volumes(args), args)
    if args.exclude_sites:
        if "site" not in vols.columns:
            from normfuse.errors import InputFormatError

            raise InputFormatError(f"{_tables_named(args)}: --exclude-sites needs a 'site' "
                                   "column; add it to the table or pass --demographics FILE "
                                   "with one.")
        vols = vols.loc[~vols["site"].astype(str).isin(args.exclude_sites).to_numpy()]
    regions = args.regions or None
    if regions is None:
        from normfuse.pipeline import _regions

        regions = _about_tables(lambda: _regions({"normative": {"regions": []}}, vols), args)
    m = _about_tables(lambda: NormativeModel(regions, likelihood=args.likelihood,
                                             device=args.device).fit(vols), args)
    m.save(args.out)
    return EXIT_OK


def cmd_norm_adapt(args) -> int:
    m = _load_model(args.model)
    vols = _about_tables(lambda: _volumes(args), args)
    _about_tables(lambda: m.adapt(vols), args).save(args.out)
    return EXIT_OK


def _measures_file(path) -> list[str]:
    """Measure names from a text file: one per line; ``#`` starts a comment."""
    from normfuse.errors import InputFormatError

    p = Path(path)
    if not p.is_file():
        raise InputFormatError("--measures-file not found.", path=p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputFormatError("--measures-file is not UTF-8 text; write one measure name per "
                               "line.", path=p) from None
    names = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise InputFormatError("--measures-file names no measure (one name per line; '#' "
                               "starts a comment).", path=p)
    return names


def _capped(names, limit=8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def cmd_norm_import_braincharts(args) -> int:
    from normative.braincharts import braincharts_measures, close_measure_names, import_braincharts
    from normfuse.errors import ColumnContractError, InputFormatError

    zip_path = Path(args.zip)
    if not zip_path.is_file():
        raise InputFormatError("braincharts zip not found (lifespan_57K_82sites.zip is in the "
                               "models/ folder of github.com/predictive-clinical-neuroscience/"
                               "braincharts).", path=zip_path)
    if args.list:
        if args.out or args.measures or args.measures_file:
            raise ValueError("--list prints the measures of the zip and writes nothing; leave "
                             "out -o/--out, --measures and --measures-file.")
        table = braincharts_measures(zip_path)
        lines = [f"# {len(table)} measures in {zip_path.name} (braincharts names; the "
                 "FreeSurfer 7 name after '#' where it differs; either spelling works in "
                 "--measures/--measures-file)"]
        for m, f in zip(table["measure"], table["freesurfer7"], strict=True):
            lines.append(m if m == f else f"{m}  # {f}")
        sys.stdout.write("\n".join(lines) + "\n")
        return EXIT_OK
    if not args.out:
        raise ValueError(f"{zip_path}: say where to save the model: -o/--out FOLDER (or --list "
                         "to see the measures).")
    out = Path(args.out)
    if out.exists() and not (out.is_dir() and (out / "model.json").is_file()):
        raise InputFormatError("exists and is not a saved normfuse model folder; choose another "
                               "-o/--out (an earlier model folder is replaced).", path=out)
    if args.measures_file:
        measures = _measures_file(args.measures_file)
    elif args.measures:
        measures = [m.strip() for m in args.measures.split(",") if m.strip()]
        if not measures:
            raise ValueError(f"--measures {args.measures!r} names no measure; give names "
                             "separated by commas, e.g. --measures Left-Thalamus,Right-Thalamus.")
    else:
        measures = None
    try:
        model = import_braincharts(zip_path, measures, site_ids=args.site_ids,
                                   verbose=args.verbose)
    except ColumnContractError as exc:
        if not exc.missing:
            raise
        table = braincharts_measures(zip_path)
        hints = "; ".join(f"{m!r} (close: {', '.join(close_measure_names(m, table)) or 'none'})"
                          for m in exc.missing[:10])
        given = f"--measures-file {args.measures_file}" if args.measures_file else "--measures"
        raise ColumnContractError(
            f"{zip_path}: {len(exc.missing)} measure(s) of {given} not in the zip: {hints}. "
            f"List its {len(table)} measures with `normfuse normative import-braincharts "
            f"{zip_path} --list`.", missing=exc.missing, present=exc.present) from exc
    model.save(out)
    if not args.quiet:
        lo, hi = model.age_range_
        sys.stdout.write(
            f"imported {len(model.responses_)} braincharts measure(s) from {zip_path.name}: "
            f"{_capped(model.responses_)}\n"
            f"training sites: {model.n_reference_sites_}; training ages {lo:g}-{hi:g} years\n"
            f"saved to {out}; adapt it to your scanners with `normfuse normative adapt {out} "
            "LOCAL_CONTROLS.csv --out ADAPTED/`\n")
    return EXIT_OK


def _new_sites_hint(func, args):
    """Run ``func``; an unknown site gets the command that adapts the model to it."""
    from normfuse.errors import UnknownSiteError

    try:
        return _about_tables(func, args)
    except UnknownSiteError as exc:
        if not exc.sites:       # raised without the structured details: keep its own words
            raise
        known = f" (the model knows {exc.known[:10]}{' ...' if len(exc.known) > 10 else ''})" \
            if exc.known else ""
        raise UnknownSiteError(
            f"{_tables_named(args)}: {exc.n_rows} rows come from site(s) {exc.sites[:10]} that {args.model} was neither "
            f"fitted on nor adapted to{known}. Adapt the model to them first: "
            f"`normfuse normative adapt {args.model} "
            "LOCAL_CONTROLS.csv --out ADAPTED/` (a few healthy controls per new site, never "
            "the ones you score), then pass ADAPTED/ here.", sites=exc.sites, n_rows=exc.n_rows,
            known=exc.known) from exc


def cmd_norm_score(args) -> int:
    m = _load_model(args.model)
    vols = _about_tables(lambda: _volumes(args), args)
    dev = _new_sites_hint(lambda: m.deviations(vols, threshold=args.threshold, tail=args.tail),
                          args)
    _write_table(dev, args.out)
    return EXIT_OK


def cmd_norm_evaluate(args) -> int:
    m = _load_model(args.model)
    vols = _about_tables(lambda: _volumes(args), args)
    sc = _new_sites_hint(lambda: m.score(vols), args)
    _write_table(sc.rename_axis("region").reset_index(), args.out)
    return EXIT_OK


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    def opts(parser, default):
        parser.add_argument("-q", "--quiet", action="store_true", default=default or False,
                            help="only errors; no progress bars")
        parser.add_argument("-v", "--verbose", action="count", default=default or 0,
                            help="more messages (-vv: debug and tracebacks)")
        return parser

    def sexopt(sp):
        sp.add_argument("--sex-codes", nargs="+", metavar="CODE=F|M", default=None,
                        help="meaning of numeric sex values, e.g. 0=F 1=M (FCON1000/"
                        "PCNtoolkit) or 1=M 2=F; F/M and female/male need none")
        sp.add_argument("--join", action="append", metavar="FILE", default=None,
                        help="extra table added by subject_id (sub_id/participant_id read as "
                        "subject_id), e.g. a train/test split file; every scan needs a row; "
                        "repeatable")
        sp.add_argument("--where", action="append", metavar="EXPR", default=None,
                        help="keep rows where EXPR holds (repeatable; all must hold), applied "
                        "after --demographics and --join: COLUMN=VALUE, COLUMN!=VALUE, "
                        "COLUMN=V1,V2 (any of) compare text; COLUMN<N, <=, >, >= compare "
                        "numbers (quote them in the shell: 'age>=18')")

    # options given before or after the subcommand both count (SUPPRESS keeps the top value)
    common = opts(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)
    p = opts(_Parser(prog="normfuse"), None)
    p.description = "Normative brain-volume deviations fused with clinical data for MS."
    p.add_argument("--version", action="version", version=f"normfuse {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", parents=[common], help="simulate a cohort and run the whole pipeline")
    d.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    d.add_argument("--patients", type=int, default=362, help="MS patients (default 362)")
    d.add_argument("--controls", type=int, default=2000, help="reference controls (default 2000)")
    d.add_argument("--seed", type=int, default=0, help="simulation and analysis seed (default 0)")
    d.add_argument("--force", action="store_true", help="replace earlier results in --out")
    d.set_defaults(func=cmd_demo)

    def study(sp):
        sp.add_argument("config", help="study TOML file (see README 'Your own study')")
        sp.add_argument("--out", help="output folder (default: normfuse-output beside the config)")
        sp.add_argument("--force", action="store_true", help="replace earlier results in --out")

    r = sub.add_parser("run", parents=[common], help="run the pipeline on a study.toml")
    study(r)
    r.add_argument("--until", choices=["collect", "normative", "features", "models", "analyses",
                                       "report"], help="stop after this stage")
    r.set_defaults(func=cmd_run)

    fs = sub.add_parser("freesurfer", parents=[common], help="FreeSurfer outputs")
    fss = fs.add_subparsers(dest="action", required=True, parser_class=_Parser)
    c = fss.add_parser("collect", parents=[common], help="SUBJECTS_DIR -> volumes table")
    c.add_argument("subjects_dir", help="FreeSurfer SUBJECTS_DIR (<subject>/stats/*.stats) or "
                   "BIDS derivatives (sub-*/ses-*/stats); FastSurfer outputs too")
    c.add_argument("--out", required=True, help="volumes table (.parquet, .csv or .tsv)")
    c.add_argument("--demographics", help="participants table (subject_id or participant_id, "
                   "session_id, age, sex, site)")
    c.add_argument("--atlases", nargs="+", default=None, choices=_ATLASES, metavar="ATLAS",
                   help="stats files read per scan, from: " + ", ".join(_ATLASES) +
                   " (default: aseg aparc)")
    sexopt(c)
    c.set_defaults(func=cmd_fs_collect)

    n = sub.add_parser("normative", parents=[common], help="normative models")
    ns = n.add_subparsers(dest="action", required=True, parser_class=_Parser)

    def vols(sp):
        sp.add_argument("tables", nargs="+", help="a SUBJECTS_DIR or volume tables (.txt from "
                        "asegstats2table/aparcstats2table, .csv, .tsv, .parquet)")
        sp.add_argument("--demographics", help="subject_id (or participant_id), age, sex, site "
                        "table, when the tables lack them")
        sexopt(sp)

    f = ns.add_parser("fit", parents=[common], help="fit on reference controls -> model folder")
    vols(f)
    f.add_argument("--out", required=True, help="model folder to write")
    f.add_argument("--likelihood", choices=["shash", "normal"], default="shash")
    f.add_argument("--regions", nargs="+", help="regions to model (default: standard regions present)")
    f.add_argument("--exclude-sites", nargs="+", default=[], help="sites left out of the fit")
    f.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    f.set_defaults(func=cmd_norm_fit)
    for name, func, helptext in (("adapt", cmd_norm_adapt, "adapt a model to new sites"),
                                 ("score", cmd_norm_score, "Z-scores and critical deviations"),
                                 ("evaluate", cmd_norm_evaluate, "EXPV/SMSE/MSLL/Rho per region")):
        sp = ns.add_parser(name, parents=[common], help=helptext)
        sp.add_argument("model", help="model folder (from `normfuse normative fit`/`adapt`, "
                        "or `normfuse normative import-braincharts`)")
        vols(sp)
        sp.add_argument("--out", required=True,
                        help="model folder" if name == "adapt" else "table (.parquet/.csv/.tsv)")
        if name == "score":
            sp.add_argument("--threshold", type=float, default=1.96,
                            help="|Z| above which a deviation is critical (default 1.96)")
            sp.add_argument("--tail", choices=["lower", "upper", "both"], default="both",
                            help="deviations counted in n_crit (default both; `normfuse run` "
                            "uses [normative] tail, default lower)")
        sp.set_defaults(func=func)

    ib = ns.add_parser(
        "import-braincharts", parents=[common],
        help="published braincharts lifespan models (zip) -> model folder",
        description="Read the published braincharts lifespan models (pcntoolkit 0.x pickles,\n"
        "e.g. lifespan_57K_82sites.zip) in place, with a restricted unpickler that never runs\n"
        "code from the file, and save them as a normfuse model folder (JSON + npz) for\n"
        "`normfuse normative adapt/score/evaluate` and `[reference] model` in study.toml.\n"
        "Measures may be named as FreeSurfer 7 writes them (Left-Thalamus, eTIV) or as\n"
        "braincharts does (Left-Thalamus-Proper, EstimatedTotalIntraCranialVol).",
        epilog="examples:\n  normfuse normative import-braincharts lifespan_57K_82sites.zip --list\n"
        "  normfuse normative import-braincharts lifespan_57K_82sites.zip -o bc/ "
        "--measures Left-Thalamus,Right-Thalamus,eTIV",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ib.add_argument("zip", metavar="ZIP", help="braincharts model zip, as downloaded")
    ib.add_argument("-o", "--out", metavar="MODEL", help="model folder to write (replaced "
                    "if it holds an earlier model)")
    which = ib.add_mutually_exclusive_group()
    which.add_argument("--measures", metavar="A,B,...", help="measures to import, separated by "
                       "commas, in FreeSurfer 7 names (Left-Thalamus, eTIV) or braincharts "
                       "names (Left-Thalamus-Proper); default: all")
    which.add_argument("--measures-file", metavar="FILE", help="measures to import, one per "
                       "line ('#' starts a comment; the --list output works as is)")
    ib.add_argument("--site-ids", metavar="FILE", default=None,
                    help="training sites in design order, one per line, for zips other than "
                    "lifespan_57K_82sites (e.g. site_ids_ct_82sites.txt); default: its 82 sites")
    ib.add_argument("--list", action="store_true",
                    help="print the measures in the zip (one per line, with the count) and "
                    "write nothing")
    ib.set_defaults(func=cmd_norm_import_braincharts)

    for group, action, stage, helptext in (
            ("features", "build", "features", "build the analysis table"),
            ("models", "compare", "models", "compare prediction models"),
            ("analyses", "run", "analyses", "run the statistics")):
        g = sub.add_parser(group, parents=[common], help=helptext)
        gs = g.add_subparsers(dest="action", required=True, parser_class=_Parser)
        sp = gs.add_parser(action, parents=[common], help=helptext + " (earlier stages run or "
                           "resume as needed)")
        study(sp)
        if stage == "models":
            sp.add_argument("--n-jobs", type=_n_jobs, default=None, metavar="N",
                            help="worker processes for the (repeat, fold) jobs (-1: all cores; "
                            "default: [models] n_jobs); results do not depend on it")
        sp.set_defaults(func=_stage_cmd(stage))
    rp = sub.add_parser("report", parents=[common], help="write report.html")
    study(rp)
    rp.set_defaults(func=_stage_cmd("report"))
    return p


def _one_line(exc: BaseException) -> str:
    msg = " ".join(s.strip() for s in str(exc).splitlines() if s.strip())
    return msg or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``normfuse`` program; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help / --version / usage errors
        return int(exc.code or 0)
    _setup_logging(args.quiet, args.verbose)
    from normfuse.errors import NormfuseError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("normfuse: interrupted; finished stages are kept and resume on the "
                         "next run, the interrupted stage left no files.\n")
        return EXIT_INTERRUPT
    except (NormfuseError, ValueError, TypeError, FileNotFoundError, FileExistsError,
            PermissionError, NotADirectoryError, IsADirectoryError) as exc:
        if args.verbose >= 2:
            log.exception("details")
        sys.stderr.write(f"normfuse: error: {_one_line(exc)}\n")
        return EXIT_INPUT
    except Exception as exc:  # an unexpected failure: one line, traceback with -vv
        if args.verbose >= 2:
            log.exception("details")
        sys.stderr.write(f"normfuse: unexpected error ({type(exc).__name__}): {_one_line(exc)} "
                         "(run with -vv for the traceback)\n")
        return EXIT_ERROR


def console_main(argv: Sequence[str] | None = None) -> NoReturn:
    """The installed ``normfuse`` program: :func:`main`, then a clean process exit.

    :func:`main` has written and closed every output file by the time it returns (stage
    files are moved into place atomically, the manifest is written last, DuckDB
    connections and thread pools are closed in ``finally`` blocks). What is left is the
    interpreter's own teardown, and there pyarrow's native thread pools (started by any
    Parquet read, e.g. the tables read back on a resumed run) race against the C++
    static destructors: about 1 run in 40 under load ended with ``terminate called
    without an active exception`` and exit code 134 after a complete, correct run
    (apache/arrow#34314). So the program flushes its log handlers and standard streams
    and leaves with ``os._exit(rc)``, which skips that teardown. Python callers of
    :func:`main` (tests, notebooks) are unaffected: it returns the exit code.
    """
    rc = main(argv)
    try:
        logging.shutdown()          # flushes and closes the handlers (atexit would)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):   # a closed or broken pipe: nothing more can be said
        rc = rc or EXIT_ERROR
    os._exit(rc)


if __name__ == "__main__":  # pragma: no cover
    console_main()
