"""The Examples sections of the library's docstrings run and print what they claim.

Each module of the five packages is imported and its docstrings' ``>>>`` examples run with
:mod:`doctest` (one test per module), in a temporary working directory so an example that
writes files leaves nothing behind. Same as
``pytest --doctest-modules normfuse normative features models analyses``, but inside the
ordinary suite (``make test``).
"""
from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import warnings

import pytest

PACKAGES = ("normfuse", "normative", "features", "models", "analyses")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names.extend(m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."))
    return sorted(names)


MODULES = _module_names()


def _import(name: str):
    """Import a module; skip (with the reason) only when a third-party package is absent."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in PACKAGES:
            pytest.skip(f"{name} needs {exc.name}, which is not installed")
        raise


def _examples(module) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    # only docstrings defined in this module (not re-exported objects of other modules)
    return [t for t in finder.find(module, module.__name__) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    """Every docstring example of the module gives the output written under it."""
    module = _import(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    with warnings.catch_warnings():
        for test in _examples(module):
            runner.run(test, out=out.write, clear_globs=True)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()


def test_every_package_has_running_examples():
    """Each package has docstring examples that are not all skipped, so the test above can fail."""
    for pkg in PACKAGES:
        n = 0
        for name in MODULES:
            if name == pkg or name.startswith(pkg + "."):
                try:
                    module = importlib.import_module(name)
                except ModuleNotFoundError:
                    continue
                n += sum(sum(1 for ex in t.examples if not ex.options.get(doctest.SKIP))
                         for t in _examples(module))
        assert n >= 3, f"{pkg}: only {n} runnable docstring examples"


# Examples marked +SKIP because they read real files: run here against ../shared/data.
REAL_FILE_EXAMPLES = [
    ("normative.freesurfer", "read_stats"),
    ("normative.freesurfer", "read_aseg_stats"),
    ("normative.freesurfer", "read_aparc_stats"),
    ("normative.freesurfer", "read_brainvol_stats"),
    ("normative.freesurfer", "read_aseg_mgz"),
    ("normative.freesurfer", "read_stats_table"),
    ("analyses.mixed", "fit_mixed"),
]


@pytest.mark.shared
@pytest.mark.parametrize("module_name, func", REAL_FILE_EXAMPLES, ids=lambda v: v)
def test_real_file_examples(module_name, func, fs_data, references, tmp_path, monkeypatch):
    """The skipped examples on FreeSurfer's bert and lme4's sleepstudy give the printed values."""
    import pandas as pd

    (tmp_path / "bert").symlink_to(fs_data / "bert_fs7.2", target_is_directory=True)
    (tmp_path / "aseg_stats.txt").symlink_to(fs_data / "tables_fs7_long" / "aseg_stats.txt")
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(module_name)
    globs = dict(vars(module), sleepstudy=pd.read_csv(references / "lme4_sleepstudy.csv"))
    doc = getattr(module, func).__doc__.replace("# doctest: +SKIP", "")
    test = doctest.DocTestParser().get_doctest(doc, globs, f"{module_name}.{func}", None, 0)
    assert test.examples, f"{module_name}.{func} has no examples"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    runner.run(test, out=out.write)
    assert runner.summarize(verbose=False).failed == 0, out.getvalue()
