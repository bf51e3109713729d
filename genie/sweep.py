"""Run a notebook over a grid of parameters with papermill and collect the results.

    python -m genie.sweep notebooks/01_quickstart.ipynb --out runs/bits \\
        --set smoke=false --grid w_bits=2,4 --grid quantizer=adaround,genie

runs the notebook once per combination (cases x grid), writes each executed notebook to
``OUT/<run>/<notebook>.ipynb``, points the notebook's ``out_dir`` parameter at ``OUT/<run>``,
reads the ``result.json`` the notebook writes there, and combines everything into
``OUT/results.json`` (a list of records: run name, parameters, status, result) and
``OUT/results.csv`` (one row per run, scalar fields only). ``--case NAME:key=value,...`` adds
named variants (e.g. the ablation's M1..M5) that are crossed with the grid. ``--collect DIR``
checks every result against the record of :mod:`genie.record` and combines all sweeps below DIR
into one table, ``DIR/summary.json`` and ``DIR/summary.csv``.

``--workers N`` runs N notebooks at once on this machine (``auto``: one per GPU, each pinned to
its GPU, or on a CPU-only machine one per core, the cores shared out as threads, ``--threads``);
``--scheduler tcp://HOST:PORT`` runs each as a task of a Dask cluster whose workers share the
``--out`` folder (:mod:`genie.sweep_exec`). A rerun into the same ``--out`` reuses every run
whose ``result.json`` is valid and was finished by a run with the same parameters (status
``reused``) and runs the others (:mod:`genie.sweep_state`); ``--rerun`` runs them all. A run
whose worker dies is run again ``--retries`` times (default 1), then recorded as failed.

Values are parsed as Python literals when they can be (``4``, ``0.5``, ``True``, ``None``,
``"text"``); ``true``/``false``/``none`` are accepted in lower case; anything else is a string,
except a value that opens a list, tuple, dict or quote it does not close (``[2,4``): that is
refused, and so is a value of another kind than the notebook's default for that parameter (a
string where the default is ``True``, a float or a bool where it is an integer, a number where it
is a list). Every argument is parsed before the first run: a name given twice (two ``--grid``
or ``--set`` of one name, one name both swept and set, a case label twice) is refused, not
overridden. Exit status: 0 when every run succeeded (or was reused), 1 when one failed (the others still run,
unless ``--fail-fast``), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import numbers
import re
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import GenieError, exit_status, shown
from .files import check_output_folder, folder_lock
from .sweep_results import RESULT_FILE, SUCCEEDED, collect, load_results, print_collected, write_results
from .sweep_state import summary_line
from .validate import (CONNECT_SECONDS, RETRIES, SECONDS, THREADS, WORKERS, OneLineParser, apply_option_ranges,
                       check_bool, check_float, check_int)

__all__ = ["RESULT_FILE", "build_parser", "check_parameters", "collect", "find_notebook", "load_results", "main",
           "notebook_parameters", "parse_arguments", "parse_assignment", "parse_case", "parse_value", "plan", "sweep",
           "write_results"]

_LOWER = {"true": True, "false": False, "none": None, "null": None}


_OPENERS = "[({\"'"


def parse_value(text: str):
    """A command-line value as a Python value (literal if possible, else the string itself).
    Text that opens a list, tuple, dict or string (``[``, ``(``, ``{``, a quote) must be a
    complete literal: ``[2,4`` is a :class:`GenieError`, not the string ``"[2,4"``."""
    text = text.strip()
    if text.lower() in _LOWER:
        return _LOWER[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        if text and (text[0] in _OPENERS or text[-1] in "])}\"'"):
            raise GenieError(f"the value {text!r} is not a complete Python literal ({type(exc).__name__}: "
                             f"{getattr(exc, 'msg', exc)}); write a list as [2,4], a string with commas or "
                             "brackets in quotes ('a,b')") from None
        return text


def _split_items(text: str) -> list:
    """Split ``a,b,[1,2],"x,y"`` at the top-level commas; unbalanced brackets or quotes (which
    would swallow the commas after them) are a :class:`GenieError`."""
    items, depth, quote, current = [], 0, None, ""
    for ch in text:
        if depth < 0:
            break
        if quote:
            current += ch
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += ch
    if quote or depth:
        what = f"an unclosed {quote}" if quote else "an unclosed bracket" if depth > 0 else "a bracket never opened"
        raise GenieError(f"{text!r} has {what}; write a list as [2,4], a string with commas or brackets in quotes "
                         "('a,b')")
    items.append(current)
    return [i for i in (s.strip() for s in items) if i]


def parse_assignment(text: str, many: bool = False) -> tuple:
    """``key=value`` -> ``(key, value)``; with ``many``, ``key=v1,v2`` -> ``(key, [v1, v2])``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise GenieError(f"expected name=value, got {text!r}")
    if many:
        values = [parse_value(v) for v in _split_items(value)]
        if not values:
            raise GenieError(f"no values for {key!r} in {text!r}")
        return key, values
    return key, parse_value(value)


def parse_case(text: str) -> tuple:
    """``NAME:key=value,key=value`` -> ``(NAME, {key: value})``."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise GenieError(f"expected NAME:key=value,... (NAME of letters, digits, _ . -), got {text!r}")
    return name, dict(parse_assignment(item) for item in _split_items(rest))


def grid(**axes: Sequence) -> list:
    """The cartesian product of ``axes`` as a list of parameter dicts (``[{}]`` without axes)."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(axes[k]) for k in keys))]


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-") or "x"


def run_name(case: Optional[str], params: dict) -> str:
    """A file-system friendly run name from the case name and the grid values."""
    parts = ([case] if case else []) + [f"{k}={_slug(v)}" for k, v in params.items()]
    return "_".join(parts) or "run"


def plan(cases: Optional[dict] = None, axes: Optional[dict] = None, common: Optional[dict] = None) -> list:
    """``[(name, parameters)]`` for every case crossed with every grid point; ``common``
    parameters come first, then the case's, then the grid's (later ones win). ``axes``:
    ``{name: non-empty list of values}``; ``cases``: ``{label: {name: value}}``."""
    checked_axes = {}
    for key, values in (axes or {}).items():
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
            raise GenieError(f"axes[{key!r}] must be a list of values to sweep, got {shown(values)}")
        checked_axes[key] = list(values)
        if not checked_axes[key]:
            raise GenieError(f"axes[{key!r}] is empty: give at least one value")
    axes = checked_axes
    for label, params in (cases or {}).items():
        if not isinstance(params, dict):
            raise GenieError(f"cases[{label!r}] must be a dict of parameters, got {shown(params)}")
    cases = cases or {None: {}}
    runs, names = [], set()
    for case, case_params in cases.items():
        for point in grid(**(axes or {})):
            name = run_name(case, point)
            if name in names:
                raise GenieError(f"two runs would be called {name!r}; give the cases different names")
            names.add(name)
            runs.append((name, {**(common or {}), **case_params, **point}))
    return runs


def find_notebook(name) -> Path:
    """``name`` as given if it exists, else the notebook of that name in ``notebooks/`` of the
    working directory or of the genie checkout."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in (Path.cwd() / "notebooks", Path(__file__).resolve().parents[1] / "notebooks"):
        if (folder / path.name).is_file():
            return folder / path.name
    raise GenieError(f"no notebook {name} here, in ./notebooks or in the genie checkout's notebooks/")


def notebook_parameters(notebook: Path) -> dict:
    """Names and default expressions of the notebook's ``parameters`` cell (as papermill sees it)."""
    import papermill as pm

    if Path(notebook).suffix != ".ipynb":
        raise GenieError(f"{notebook} is not a Jupyter notebook (.ipynb): give the notebook to sweep")
    try:
        return {name: info["default"] for name, info in pm.inspect_notebook(str(notebook)).items()}
    except Exception as exc:  # nbformat raises its own kinds for files that are not notebooks
        raise GenieError(f"{notebook} is not a readable Jupyter notebook ({exc.__class__.__name__}: "
                         f"{str(exc)[:200]}); give the notebook to sweep") from None


# the kind of value a parameter takes, from the type of its default: (accepted types, in words);
# a default of None (or an expression that is not a literal) says nothing, so anything goes
# (numpy's integers and floats count as numbers, as everywhere in genie's arguments)
_KINDS = {bool: ((bool, np.bool_), "True or False"), int: ((numbers.Integral,), "an integer"),
          float: ((numbers.Real,), "a number"), str: ((str,), "a string"), list: ((list, tuple), "a list"),
          tuple: ((list, tuple), "a list"), dict: ((dict,), "a dict")}


def _kind_mismatch(default_text: str, value) -> Optional[str]:
    """In words, what a parameter whose default is ``default_text`` takes, where ``value`` is not
    that (a bool is not a number here: ``True`` for ``recon_iters`` is a slip); else None."""
    try:
        default = ast.literal_eval(default_text)
    except (ValueError, SyntaxError):
        return None
    accepted, words = _KINDS.get(type(default), (None, None))
    is_flag = isinstance(value, (bool, np.bool_))
    if accepted is None or (isinstance(value, accepted) and (bool in accepted or not is_flag)):
        return None
    return words


def check_parameters(notebook, runs: Iterable) -> None:
    """Raise :class:`GenieError` when a run sets a parameter the notebook does not declare, or one
    to a value of another kind than the parameter's default (a string for a flag: ``"False"``
    would run as true), or when the notebook has no ``out_dir`` parameter."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise GenieError(f"no notebook at {notebook}")
    declared = notebook_parameters(notebook)
    for name, params in runs:
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise GenieError(f"{notebook.name} has no parameter {', '.join(unknown)} "
                             f"(its parameters: {', '.join(declared)})")
        for key, value in params.items():
            words = _kind_mismatch(declared[key], value)
            if words is not None:
                raise GenieError(f"run {name!r} sets {key} = {shown(value)}, but {notebook.name}'s {key} takes "
                                 f"{words} (its default is {declared[key]})")
    if "out_dir" not in declared:
        raise GenieError(f"{notebook.name} has no out_dir parameter: the sweep cannot collect its result.json")


def sweep(notebook, runs: Iterable, out_dir, kernel: Optional[str] = None, cwd: Optional[str] = None,
          fail_fast: bool = False, log=print, env: Optional[dict] = None, timeout: Optional[float] = None,
          on_record=None, workers=1, threads: Optional[int] = None, scheduler: Optional[str] = None,
          retries: int = 1, rerun: bool = False, connect_timeout: float = 10.0, callback=None) -> list:
    """Execute ``notebook`` once per ``(name, parameters)`` in ``runs`` with papermill.

    Each run gets ``out_dir = OUT/<name>`` injected (so the notebook's ``result.json`` lands
    there) and its executed copy is written to ``OUT/<name>/<notebook name>``. Returns the list
    of records also written to ``OUT/results.json`` and ``OUT/results.csv``. ``env``: extra
    environment variables for the kernels (default: ``GENIE_LIVE=0``, static figures).
    ``timeout``: seconds per cell. ``workers``: runs at once on this machine (an int or
    ``"auto"``, :func:`genie.sweep_exec.local_slots`), ``threads``: threads per run;
    ``scheduler``: the address of a Dask scheduler to run them on instead; ``retries``: how often
    a run whose worker died is run again. A run with a valid result of an earlier sweep into
    ``out_dir`` is reused, not run (status ``reused``), unless ``rerun``
    (:mod:`genie.sweep_state`). ``log``: called with one line per run start and end (None:
    silent); ``callback``: the sweep's events (:class:`genie.events.SweepRunEnd`, ...);
    ``on_record``: each finished run's record. While it runs, ``out_dir`` is locked: a second
    sweep into it stops at once.
    """
    from .sweep_exec import connect, execute_sweep

    settings = dict(timeout=check_float(timeout, "timeout (seconds per cell)", SECONDS, or_none=" or None (no limit)"),
                    fail_fast=check_bool(fail_fast, "fail_fast"), rerun=check_bool(rerun, "rerun"),
                    workers=check_int(workers, "workers", WORKERS), retries=check_int(retries, "retries", RETRIES),
                    threads=check_int(threads, "threads", THREADS, or_none=" or None (the cores shared out)"),
                    connect_timeout=check_float(connect_timeout, "connect_timeout", CONNECT_SECONDS),
                    scheduler=scheduler, kernel=kernel, cwd=cwd, env=dict(env or {"GENIE_LIVE": "0"}))
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise GenieError(f"scheduler must be a Dask scheduler's address (tcp://HOST:PORT), got {shown(scheduler)}")
    if scheduler and (workers != 1 or threads is not None):
        raise GenieError("--workers and --threads are for runs on this machine; with --scheduler the cluster's "
                         "workers run the sweep (start as many as should run at once)")
    notebook = Path(notebook)
    if not notebook.is_file():
        raise GenieError(f"no notebook at {notebook}")
    runs = _checked_runs(runs)
    check_parameters(notebook, runs)
    out = check_output_folder(out_dir, "the sweep's runs", "--out ", files=("results.json", "results.csv"))
    settings["client"] = connect(scheduler, settings["connect_timeout"]) if scheduler else None
    try:
        with folder_lock(out):
            return execute_sweep(notebook, runs, out, settings, log=log, callback=callback, on_record=on_record)
    finally:
        if settings["client"] is not None:
            settings["client"].close()


def _checked_runs(runs: Iterable) -> list:
    """``runs`` as a list of ``(name, parameters)`` with distinct names, each a non-empty
    string, and dicts of parameters (what :func:`plan` returns)."""
    runs = list(runs)
    names = set()
    for item in runs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and item[0]
                and isinstance(item[1], dict)):
            raise GenieError(f"every run must be a (name, parameters dict) pair, as plan() returns; got {shown(item)}")
        if item[0] in names:
            raise GenieError(f"two runs are called {item[0]!r}: give every run its own name")
        names.add(item[0])
    return runs


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to an ``argparse`` sub-parser collection; returns its parser."""
    p = subparsers.add_parser(
        "sweep", help="run a notebook over a grid of parameters with papermill, collect results",
        description="Run a notebook once per combination of parameters with papermill; write each executed "
                    "notebook and a combined results.json / results.csv under --out.")
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", nargs="?", help="the notebook to run (it must have a parameters cell with out_dir)")
    p.add_argument("--out", help="folder for the runs and results (e.g. runs/sweep-bits)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="a parameter and the values to sweep (repeat for a product)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter for every run")
    p.add_argument("--case", action="append", default=[], metavar="LABEL:NAME=V,NAME=V",
                   help="a named variant, crossed with the grid (repeat)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    p.add_argument("--cwd", default=None, help="working directory of the kernels (default: the current one)")
    p.add_argument("--cell-timeout", type=float, default=None, help="seconds a cell may run (default: no limit)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    p.add_argument("--workers", default=1, metavar="N|auto",
                   help="runs at once on this machine (auto: one per GPU, each pinned to it, or one per CPU core)")
    p.add_argument("--threads", default=None, metavar="N", help="threads per run (default: the cores shared out)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run every run as a task of the Dask scheduler at ADDRESS (tcp://HOST:PORT; --out shared)")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the scheduler (default 10)")
    p.add_argument("--retries", default=1, metavar="N", help="runs again of a run whose worker died (default 1)")
    p.add_argument("--rerun", action="store_true", help="run every run, even those with a valid earlier result")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--collect", metavar="DIR", default=None,
                   help="instead of running: combine every results.json below DIR into DIR/summary.json and .csv")


def run_sweep(args: argparse.Namespace) -> int:
    """Run the ``sweep`` command from parsed arguments; returns the exit status."""
    return exit_status("genie sweep", lambda: _sweep_command(args))


# the form of each repeatable option's argument, for messages
_FORMS = {"--grid": "NAME=V1,V2, e.g. w_bits=2,4", "--set": "NAME=VALUE, e.g. smoke=False",
          "--case": "LABEL:NAME=V,NAME=V, e.g. M1:distiller=direct,swing=False"}


def _given(option: str, texts: Sequence[str], parse) -> dict:
    """``{name: value}`` of the ``option`` arguments ``texts``, each parsed by ``parse``
    (``text -> (name, value)``); a malformed one or a name given twice is a :class:`GenieError`
    naming the option, the text and the expected form."""
    parsed, source = {}, {}
    for text in texts:
        try:
            name, value = parse(text)
        except GenieError as exc:
            raise GenieError(f"{option} {text!r}: {exc} (expected {_FORMS[option]})") from None
        if name in parsed:
            fix = ("give all its values in one --grid, e.g. --grid w_bits=2,4" if option == "--grid"
                   else "give it once")
            raise GenieError(f"{option} gives {name} twice ({source[name]!r} and {text!r}): {fix}")
        parsed[name], source[name] = value, text
    return parsed


def _case(text: str) -> tuple:
    """:func:`parse_case`, refusing a case that sets one name twice."""
    label, sep, rest = text.partition(":")
    items = _split_items(rest) if sep else []
    names = [item.partition("=")[0].strip() for item in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GenieError(f"case {label.strip()} sets {', '.join(twice)} twice: give each once")
    return parse_case(text)


def parse_arguments(args: argparse.Namespace) -> tuple:
    """``(cases, axes, common)`` from ``--case``, ``--grid`` and ``--set``, every one parsed and
    checked before anything runs: malformed values, a name given twice, a name both swept
    (``--grid``) and fixed (``--set``), and a case setting a swept name (the grid's value would
    always win) are each a :class:`GenieError`."""
    axes = _given("--grid", args.grid, lambda text: parse_assignment(text, many=True))
    common = _given("--set", args.set, parse_assignment)
    cases = _given("--case", args.case, _case) or None
    both = sorted(set(axes) & set(common))
    if both:
        raise GenieError(f"{', '.join(both)} is both swept (--grid) and set (--set); the grid's values would always "
                         "win: drop one of them")
    for label, params in (cases or {}).items():
        swept = sorted(set(axes) & set(params))
        if swept:
            raise GenieError(f"--case {label} sets {', '.join(swept)}, which --grid sweeps; the grid's values would "
                             "always win: drop it from the case or from the grid")
    return cases, axes, common


def _sweep_command(args: argparse.Namespace) -> int:
    if args.collect:
        return print_collected(args.collect)
    cases, axes, common = parse_arguments(args)
    if not args.notebook or not args.out:
        raise GenieError("give a notebook and --out (or --collect DIR)")
    runs = plan(cases, axes, common)
    if args.dry_run:
        check_parameters(args.notebook, runs)
        for name, params in runs:
            print(f"{name}: {params}")
        return 0
    records = sweep(args.notebook, runs, args.out, kernel=args.kernel, cwd=args.cwd, fail_fast=args.fail_fast,
                    timeout=args.cell_timeout, workers=args.workers, threads=args.threads, scheduler=args.scheduler,
                    retries=args.retries, rerun=args.rerun, connect_timeout=args.connect_timeout)
    failed = [r["run"] for r in records if r["status"] not in SUCCEEDED]
    print(f"{summary_line(records, len(runs))}; results in {Path(args.out) / 'results.json'} and results.csv")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or len(records) < len(runs) else 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m genie.sweep``: numeric options take their ranges from
    :data:`genie.validate.OPTION_RANGES`; a parse error is a :class:`GenieError`."""
    parser = OneLineParser(prog="python -m genie.sweep", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return apply_option_ranges(parser)


def main(argv=None) -> int:
    return exit_status("genie sweep", lambda: _sweep_command(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
