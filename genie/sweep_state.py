"""What a sweep knows of its runs between invocations: the marker each run leaves in its folder,
the rule that reuses a finished run instead of running it again, and the counts of a sweep.

Each run's folder ``OUT/<run>/`` holds :data:`MARKER` (``sweep-run.json``), written atomically
by the process that executes the run: ``status: running`` with the attempt number when an
attempt starts, then the run's final record (status ``ok``, ``failed`` or ``no result``) with
the sha256 of the ``result.json`` it read. A run is **reused** (not run again, listed in
results.json with status ``reused`` and its earlier result) when its marker says ``ok`` for the
same notebook and the same parameters, its ``result.json`` still has that sha256, and that
result passes :func:`genie.record.validate_record` (what ``--collect`` checks). A run killed at
any point before its marker says ``ok`` is therefore run again, whatever it left behind; so is a
run whose ``result.json`` was deleted or changed. Sweeps written before markers existed are
reused from their ``results.json`` when it lists the run as finished with the same parameters
and exactly the result in ``result.json``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from .errors import GenieError
from .files import write_json
from .record import validate_record
from .sweep_results import RESULT_FILE, SUCCEEDED

MARKER = "sweep-run.json"  # the run's state, in its folder
PARTIAL = RESULT_FILE + ".partial"  # where an unreadable result.json of a failed run is moved


def canonical(params: dict):
    """``params`` as JSON gives them back (tuples become lists): how markers compare them."""
    return json.loads(json.dumps(params))


def read_marker(run_dir: Path) -> Optional[dict]:
    """The run's marker, or None when there is none or it is unreadable (then the run runs)."""
    try:
        data = json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(run_dir: Path, data: dict) -> None:
    write_json(Path(run_dir) / MARKER, data, "the run's sweep marker")


def previous_attempts(marker: Optional[dict], token: str) -> int:
    """How many attempts of this sweep (``token``) started this run and died: a marker still
    ``running`` under the same token means its worker died mid-run."""
    if marker and marker.get("sweep") == token and marker.get("status") == "running":
        attempt = marker.get("attempt")
        return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1
    return 0


def finished_in_this_sweep(marker: Optional[dict], token: str) -> Optional[dict]:
    """The record of a run this sweep already finished (Dask runs a task again when the worker
    holding its return value dies; the run is not repeated)."""
    if marker and marker.get("sweep") == token and marker.get("status") != "running" \
            and isinstance(marker.get("record"), dict):
        return marker["record"]
    return None


def read_result(run_dir: Path) -> tuple:
    """``(bytes, sha256)`` of the run's result.json, ``(None, None)`` without one."""
    try:
        data = (Path(run_dir) / RESULT_FILE).read_bytes()
    except OSError:
        return None, None
    return data, hashlib.sha256(data).hexdigest()


def _valid(result, source: str) -> bool:
    try:
        validate_record(result, source)
    except GenieError:
        return False
    return True


def reused_record(name: str, params: dict, notebook_name: str, run_dir: Path, earlier: dict) -> Optional[dict]:
    """The record of run ``name`` as results.json lists a reused run (status ``reused``, the
    earlier result and seconds), or None when the run must run (see the module's rule).
    ``earlier``: the entries of the folder's previous results.json by run name."""
    data, digest = read_result(run_dir)
    if data is None:
        return None
    try:
        result = json.loads(data)
    except ValueError:
        return None
    marker, wanted = read_marker(run_dir), canonical(params)
    old = None
    if marker and marker.get("status") == "ok" and marker.get("notebook") == notebook_name \
            and marker.get("parameters") == wanted and marker.get("result_sha256") == digest:
        old = marker.get("record") or {}
    elif marker is None:
        entry = earlier.get(name)
        if entry and entry.get("status") in SUCCEEDED and entry.get("parameters") == wanted \
                and entry.get("result") == result:
            old = entry
    if old is None or not _valid(result, str(run_dir / RESULT_FILE)):
        return None
    return {"run": name, "parameters": params, "notebook": str(run_dir / notebook_name), "status": "reused",
            "seconds": old.get("seconds"), "result": result}


def earlier_results(out: Path) -> dict:
    """The previous results.json of the folder as ``{run: entry}`` (empty when unreadable)."""
    try:
        runs = json.loads((out / "results.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return {r["run"]: r for r in runs if isinstance(r, dict) and isinstance(r.get("run"), str)} \
        if isinstance(runs, list) else {}


def counts(records: list) -> dict:
    """``{skipped, finished, retried, failed}`` of ``records`` (disjoint: a run that finished after
    a retry counts as retried, a run that failed after one as failed)."""
    out = dict(skipped=0, finished=0, retried=0, failed=0)
    for r in records:
        if r["status"] == "reused":
            out["skipped"] += 1
        elif r["status"] != "ok":
            out["failed"] += 1
        else:
            out["retried" if r.get("attempts", 1) > 1 else "finished"] += 1
    return out


def summary_line(records: list, total: int) -> str:
    """``8 runs: 2 skipped (earlier results reused), 4 finished, 1 retried, 1 failed``."""
    c = counts(records)
    text = (f"{total} run{'' if total == 1 else 's'}: {c['skipped']} skipped (earlier results reused), "
            f"{c['finished']} finished, {c['retried']} retried (finished after their worker died), "
            f"{c['failed']} failed")
    never = total - len(records)
    return text + (f", {never} not started (--fail-fast)" if never else "")


def event_line(event) -> Optional[str]:
    """The line a sweep prints for ``event`` (None: nothing to print)."""
    from .events import SweepRunEnd, SweepRunStart  # imports torch: not needed by a cluster's workers

    if isinstance(event, SweepRunStart):
        return f"      {event.run}: started on {event.worker}"
    if isinstance(event, SweepRunEnd):
        what = {"reused": "reused (a valid result of an earlier sweep)"}.get(event.status, event.status)
        line = f"[{event.done}/{event.total}] {event.run}: {what}"
        if event.status != "reused" and event.seconds is not None:
            line += f" in {event.seconds:.1f} s"
        if event.attempts > 1:
            line += f" (attempt {event.attempts})"
        return line + (f": {event.error}" if event.error else "")
    return None


def run_end(record: dict, done: int, total: int):
    """The :class:`genie.events.SweepRunEnd` of ``record``, the ``done``-th of ``total`` runs."""
    from .events import SweepRunEnd

    return SweepRunEnd(run=record["run"], status=record["status"], done=done, total=total,
                       seconds=record.get("seconds"), attempts=record.get("attempts", 1), error=record.get("error"),
                       record=record)


def finish(spec: dict, outcome: dict, attempts: int, seconds: Optional[float], worker: str) -> dict:
    """The record of a run that ended with ``outcome`` (``{status, error}``) after ``attempts``,
    and its final marker. An unreadable result.json (a notebook that writes it without
    :func:`genie.record.write_record` and was killed) is moved to :data:`PARTIAL`: no reader takes it."""
    run_dir = Path(spec["run_dir"])
    record = {"run": spec["run"], "parameters": spec["parameters"], "notebook": spec["record_notebook"],
              "status": outcome["status"]}
    if outcome.get("error"):
        record["error"] = outcome["error"]
    record["seconds"] = seconds
    data, digest = read_result(run_dir)
    if data is not None:
        try:
            record["result"] = json.loads(data)
        except ValueError:
            (run_dir / RESULT_FILE).replace(run_dir / PARTIAL)
            record["status"], digest = "failed", None
            record["error"] = (record.get("error", "") + "; " if record.get("error") else "") + \
                f"its {RESULT_FILE} was not complete JSON (moved to {PARTIAL})"
    if record["status"] == "ok" and "result" not in record:
        record["status"] = "no result"
        record["error"] = f"the notebook wrote no {RESULT_FILE} into out_dir"
    if attempts > 1:
        record["attempts"] = attempts
    write_marker(run_dir, {"sweep": spec["token"], "run": spec["run"], "status": record["status"], "attempt": attempts,
                           "worker": worker, "notebook": Path(spec["notebook"]).name,
                           "parameters": canonical(spec["parameters"]),
                           "result_sha256": digest if record["status"] == "ok" else None, "record": record})
    return record


def lost_record(spec: dict, exc: BaseException) -> dict:
    """The record of a run whose task the cluster lost (``exc``: e.g. ``KilledWorker``, when the
    scheduler gave up on it before its retries were used)."""
    attempts = max(1, previous_attempts(read_marker(Path(spec["run_dir"])), spec["token"]))
    text = " ".join(str(exc).split())[:300]
    return finish(spec, {"status": "failed", "error": f"the cluster lost the run ({type(exc).__name__}: {text})"},
                  attempts, None, "the Dask cluster")
