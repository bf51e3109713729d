"""What sweeps leave behind: each sweep's ``results.json`` / ``results.csv`` (one entry per run:
name, parameters, status, the notebook's ``result.json`` record), and ``--collect``'s summary of
every sweep below a folder as one table with the record's columns (:mod:`genie.record`), plus,
for sweeps with a ``seed`` axis, the mean and standard deviation of each cell over its seeds."""
from __future__ import annotations

import csv
import io
import json
import statistics
import typing
from pathlib import Path

from .errors import GenieError
from .files import write_atomically, write_json
from .record import FIELDS, RunRecord, flat_extras, validate_record

RESULT_FILE = "result.json"  # what each notebook run writes into its out_dir
SUCCEEDED = ("ok", "reused")  # statuses of a run with its result: run now, or reused from an earlier sweep
# the record's measured numbers (its float fields): what a cell averages over seeds, with numeric extras
MEASURES = tuple(name for name, hint in typing.get_type_hints(RunRecord).items() if float in typing.get_args(hint))


def _flatten(record: dict) -> dict:
    row = {"run": record["run"], "status": record["status"], "seconds": record.get("seconds")}
    for prefix, values in (("param.", record.get("parameters", {})), ("", record.get("result", {}))):
        for k, v in values.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                row[prefix + k] = v
            elif prefix == "" and k == "extra" and isinstance(v, dict):
                row.update(flat_extras(v))
    if "error" in record:
        row["error"] = record["error"]
    return row


def _write_records(records: list, rows: list, json_path: Path, csv_path: Path) -> None:
    """``records`` as JSON and ``rows`` (flat dicts) as CSV, each written atomically."""
    write_json(json_path, records, "the sweep results")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(csv_path, text.getvalue().encode(), "the sweep results")


def write_results(records: list, out_dir) -> tuple:
    """Write ``results.json`` and ``results.csv`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    json_path, csv_path = out / "results.json", out / "results.csv"
    _write_records(records, [_flatten(r) for r in records], json_path, csv_path)
    return json_path, csv_path


_RUN_COLUMNS = ("sweep", "run", "status", "seconds")
_RECORD_COLUMNS = tuple(f for f in FIELDS if f != "extra")


def _summary_row(sweep_name: str, run: dict, source: str) -> dict:
    """One run of a sweep as a table row: the record's fields and ``extra.<name>`` columns when
    its result is a valid record, else a ``problem`` naming ``source`` and what is wrong."""
    row = {"sweep": sweep_name, "run": run.get("run"), "status": run.get("status"), "seconds": run.get("seconds")}
    if run.get("result") is not None:
        try:
            row.update(validate_record(run["result"], source).row())
        except GenieError as exc:
            row["problem"] = str(exc)
    row.update({f"param.{k}": v for k, v in (run.get("parameters") or {}).items()
                if isinstance(v, (str, int, float, bool)) or v is None})
    if "error" in run:
        row["error"] = run["error"]
    return row


def _sweep_rows(path: Path, root: Path) -> list:
    """The summary rows of one sweep's ``results.json`` (one row naming the problem when the file
    is not a readable list of runs)."""
    name = str(path.parent.relative_to(root))
    try:
        runs = json.loads(path.read_text())
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError("a list of runs was expected")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [{"sweep": name, "status": "unreadable", "problem": f"{path}: {exc}"}]
    return [_summary_row(name, run, f"{path} (run {run.get('run')})") for run in runs]


def collect(root) -> list:
    """Every run of every ``results.json`` below ``root`` (one per sweep) as one table, a list of
    rows with the same columns: sweep, run, status, seconds, the record's fields
    (:data:`genie.record.FIELDS`), ``extra.<name>``, ``param.<name>``, error and problem (a result
    that is not a valid record: its file and what is wrong). Written to ``root/summary.json``
    and ``root/summary.csv``."""
    root = Path(root)
    if not root.is_dir():
        raise GenieError(f"no folder {root} to collect results from")
    rows = []
    for path in sorted(root.rglob("results.json")):
        if path.parent != root:
            rows += _sweep_rows(path, root)
    if not rows:
        raise GenieError(f"no results.json below {root}: run a sweep (or make reproduce) first")
    seen = dict.fromkeys(k for r in rows for k in r)
    extras = [k for k in seen if k.startswith("extra.")]
    params = [k for k in seen if k.startswith("param.")]
    columns = [*_RUN_COLUMNS, *_RECORD_COLUMNS, *extras, *params, "error", "problem"]
    table = [{c: r.get(c) for c in columns} for r in rows]
    _write_records(table, table, root / "summary.json", root / "summary.csv")
    cells = seed_cells(table)
    if cells:
        _write_records(cells, cells, root / "summary_cells.json", root / "summary_cells.csv")
    return table


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seed_cells(table: list) -> list:
    """Per cell of every sweep with a ``seed`` axis (runs of the sweep with two or more values of
    the ``seed`` parameter): the mean and sample standard deviation (n - 1; None for one seed)
    over its seeds of each measured number, ``<name>.mean`` and ``<name>.std`` (the record's float
    fields, :data:`MEASURES`, and numeric ``extra.<name>``). A cell: the runs of one sweep with
    the same parameters but the seed. Only runs that succeeded with a valid record count:
    ``seeds`` says how many did, ``seed values`` which."""
    seeds = {}
    for r in table:
        if r.get("param.seed") is not None:
            seeds.setdefault(r["sweep"], set()).add(json.dumps(r["param.seed"]))
    groups = {}
    for r in table:
        if len(seeds.get(r["sweep"], ())) < 2 or r["status"] not in SUCCEEDED or r.get("problem") \
                or r.get("param.seed") is None:
            continue
        params = tuple((k, json.dumps(v)) for k, v in r.items() if k.startswith("param.") and k != "param.seed")
        groups.setdefault((r["sweep"], params), []).append(r)
    cells = []
    for (sweep_name, params), rows in groups.items():
        cell = {"sweep": sweep_name, **{k: json.loads(v) for k, v in params}, "seeds": len(rows),
                "seed values": " ".join(str(r["param.seed"]) for r in rows)}
        names = [k for k in rows[0] if k in MEASURES or k.startswith("extra.")]
        for name in names:
            values = [r.get(name) for r in rows if _number(r.get(name))]
            if values and len(values) == len(rows):
                cell[f"{name}.mean"] = statistics.fmean(values)
                cell[f"{name}.std"] = statistics.stdev(values) if len(values) > 1 else None
        cells.append(cell)
    columns = list(dict.fromkeys(k for c in cells for k in c))
    return [{c: cell.get(c) for c in columns} for cell in cells]


def load_results(out_dir) -> list:
    """The records of ``out_dir/results.json``."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise GenieError(f"no sweep results at {path}")
    return json.loads(path.read_text())


def print_collected(root) -> int:
    """``python -m genie.sweep --collect ROOT``: :func:`collect`, one line per run (its top-1
    numbers, or why its result is not valid), then one line per cell of a sweep with a seed axis
    (top-1 mean +- standard deviation over its seeds, :func:`seed_cells`); exit status 0 when
    every run succeeded (ok or reused) with a valid result."""
    rows = collect(root)
    for r in rows:
        numbers = ", ".join(f"{k}={v:.2f}" for k, v in r.items()
                            if k.endswith("top1") and isinstance(v, (int, float)) and not isinstance(v, bool))
        where = r["sweep"] if r["run"] is None else f"{r['sweep']}/{r['run']}"
        print(f"{where}: {r['status']}" + (f"  {numbers}" if numbers else "")
              + (f"\n    not a valid result: {r['problem']}" if r["problem"] else ""))
    cells = seed_cells(rows)
    for c in cells:
        where = " ".join([c["sweep"]] + [f"{k[len('param.'):]}={v}" for k, v in c.items() if k.startswith("param.")])
        top1 = [k[:-len(".mean")] for k in c if k.endswith("top1.mean")]
        numbers = ", ".join(f"{k}={c[k + '.mean']:.2f} +- "
                            + ("n/a" if c[k + ".std"] is None else f"{c[k + '.std']:.2f}") for k in top1)
        print(f"{where} over {c['seeds']} seeds ({c['seed values']}): {numbers or 'no top-1 numbers'}")
    invalid = sum(1 for r in rows if r["problem"])
    print(f"{len(rows)} runs" + (f", {invalid} without a valid result" if invalid else "")
          + f"; wrote {Path(root) / 'summary.json'} and summary.csv"
          + (f", mean and standard deviation over seeds of {len(cells)} cells in summary_cells.json and .csv"
             if cells else ""))
    return 0 if all(r["status"] in SUCCEEDED and not r["problem"] for r in rows) else 1
