"""Sweeps that outgrow one process (genie.sweep_exec, genie.sweep_state): local runs at once
(--workers), a Dask cluster on the loopback address (--scheduler), the same records as a
sequential sweep; a rerun reuses what finished and runs what did not; a killed Dask worker loses
no run and leaves no result a rerun would take; --collect's mean and standard deviation over
seeds. The runs execute a tiny notebook (a second or two of kernel start each): 16 executions."""
import copy
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from genie import sweep  # noqa: E402
from genie.record import RunRecord, validate_record, write_record  # noqa: E402
from genie.sweep_exec import available_cores  # noqa: E402
from genie.sweep_results import write_results  # noqa: E402
from genie.sweep_state import MARKER, read_marker, reused_record, write_marker  # noqa: E402

GRID = ["--grid", "x=1,2,3,4"]
SUMMARY = ("{} runs: {} skipped (earlier results reused), {} finished, {} retried (finished after their worker died), "
           "{} failed")


def _tiny(path: Path) -> Path:
    """A notebook with a parameters cell that writes a valid result.json with genie's record
    helpers (no torch import: a second of kernel time), after ``nap`` seconds."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    params = new_code_cell("x = 1\nseed = 0\nnap = 0.0\nout_dir = 'runs/tiny'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(
        "import os, time\nfrom pathlib import Path\nfrom genie.record import RunRecord, write_record\n"
        "time.sleep(nap)\nPath(out_dir).mkdir(parents=True, exist_ok=True)\n"
        "write_record(Path(out_dir) / 'result.json', RunRecord(producer='tiny', model='none', seed=seed,\n"
        "             q_top1=90.0 + x + seed / 10, torch_version='none',\n"
        "             extra={'threads': os.environ.get('OMP_NUM_THREADS')}))")]
    nbformat.write(nb, path)
    return path


def _records(out: Path, drop=("seconds",)) -> list:
    """results.json of ``out`` without ``drop``, each notebook path relative to ``out``."""
    records = json.loads((out / "results.json").read_text())
    for r in records:
        r["notebook"] = str(Path(r["notebook"]).relative_to(out))
        for key in drop:
            r.pop(key, None)
    return records


def _no_partial_results(out: Path) -> None:
    for path in out.rglob("result.json"):
        validate_record(json.loads(path.read_text()), str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("nb") / "tiny.ipynb")


@pytest.fixture(scope="module")
def sequential(tiny, tmp_path_factory):
    """The records of the four-run sweep run one after the other (the reference)."""
    out = tmp_path_factory.mktemp("sequential") / "out"
    assert sweep.main([str(tiny), "--out", str(out), *GRID]) == 0
    records = _records(out, drop=("seconds", "result"))
    assert [(r["run"], r["status"]) for r in records] == [(f"x={x}", "ok") for x in (1, 2, 3, 4)]
    return records, [json.loads((out / f"x={x}" / "result.json").read_text()) for x in (1, 2, 3, 4)]


def _same_records(out: Path, sequential, statuses=("ok",) * 4) -> None:
    """The records of ``out`` equal the sequential ones (with ``statuses``), seconds and the
    kernels' thread count aside."""
    records, results = copy.deepcopy(sequential)
    assert _records(out, drop=("seconds", "result")) == [{**r, "status": s} for r, s in zip(records, statuses)]
    got = [json.loads((out / f"x={x}" / "result.json").read_text()) for x in (1, 2, 3, 4)]
    for r in got + results:
        r["extra"].pop("threads")
    assert got == results and [r["q_top1"] for r in got] == [91.0, 92.0, 93.0, 94.0]


def test_parallel_local_sweep_matches_sequential_and_reruns_only_what_is_missing(tiny, sequential, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert sweep.main([str(tiny), "--out", str(out), *GRID, "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "4 runs on 2 local workers" in text and SUMMARY.format(4, 0, 4, 0, 0) in text
    assert [line for line in text.splitlines() if line.startswith("[")][-1].startswith("[4/4] ")
    _same_records(out, sequential)
    threads = str(max(1, available_cores() // 2))  # 2 workers share the cores out
    assert {json.loads((out / f"x={x}" / "result.json").read_text())["extra"]["threads"] for x in (1, 2, 3, 4)} \
        == {threads}

    # a finished sweep again: nothing runs, every run is listed with its earlier result
    before = {x: (out / f"x={x}" / "result.json").stat().st_mtime_ns for x in (1, 2, 3, 4)}
    assert sweep.main([str(tiny), "--out", str(out), *GRID, "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "nothing to run: all 4 runs have a valid result" in text and SUMMARY.format(4, 4, 0, 0, 0) in text
    assert "started" not in text
    reused = _records(out, drop=())
    assert [r["status"] for r in reused] == ["reused"] * 4
    assert [r["result"]["q_top1"] for r in reused] == [91, 92, 93, 94]
    assert before == {x: (out / f"x={x}" / "result.json").stat().st_mtime_ns for x in (1, 2, 3, 4)}

    # one result deleted: exactly that run runs
    (out / "x=3" / "result.json").unlink()
    assert sweep.main([str(tiny), "--out", str(out), *GRID, "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert [line.split()[0] for line in text.splitlines() if "started on" in line] == ["x=3:"]
    assert "started" not in text.replace("x=3: started", "") and SUMMARY.format(4, 3, 1, 0, 0) in text
    _same_records(out, sequential, ("reused", "reused", "ok", "reused"))


def test_auto_workers_pin_gpus_and_share_the_cores(monkeypatch):
    import genie.sweep_exec as ex

    monkeypatch.setattr(ex, "available_cores", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    slots = ex.local_slots("auto", None, 8)  # one per GPU, each pinned to it
    assert [(name, env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]) for name, env in slots] \
        == [("local 1 (GPU 2)", "2", "8"), ("local 2 (GPU 3)", "3", "8")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: workers x threads <= cores
    assert [env["OMP_NUM_THREADS"] for _, env in ex.local_slots("auto", None, 40)] == ["1"] * 16
    assert [env["OMP_NUM_THREADS"] for _, env in ex.local_slots("auto", None, 3)] == ["5"] * 3
    assert [env["OMP_NUM_THREADS"] for _, env in ex.local_slots(4, 2, 8)] == ["2"] * 4
    assert ex.local_slots(1, None, 8) == [("this machine", {})]  # sequential: the environment as it is


def test_only_a_finished_run_with_its_own_valid_result_is_reused(tmp_path):
    """A killed run leaves its marker 'running' (or nothing): whatever result.json it left, a
    rerun runs it. So does a result that changed, another parameter, or an invalid record."""
    run = tmp_path / "x=1"
    run.mkdir()
    write_record(run / "result.json", RunRecord(producer="tiny", model="none", q_top1=91.0, torch_version="none"))
    base = {"sweep": "t", "run": "x=1", "notebook": "tiny.ipynb", "parameters": {"x": 1}, "attempt": 1}
    write_marker(run, {**base, "status": "running"})
    assert reused_record("x=1", {"x": 1}, "tiny.ipynb", run, {}) is None
    digest = __import__("hashlib").sha256((run / "result.json").read_bytes()).hexdigest()
    write_marker(run, {**base, "status": "ok", "result_sha256": digest, "record": {"seconds": 1.5}})
    record = reused_record("x=1", {"x": 1}, "tiny.ipynb", run, {})
    assert record["status"] == "reused" and record["seconds"] == 1.5 and record["result"]["q_top1"] == 91.0
    assert reused_record("x=1", {"x": 2}, "tiny.ipynb", run, {}) is None  # other parameters
    assert reused_record("x=1", {"x": 1}, "other.ipynb", run, {}) is None  # another notebook
    data = (run / "result.json").read_bytes()
    (run / "result.json").write_bytes(data[: len(data) // 2])  # a half-written file
    assert reused_record("x=1", {"x": 1}, "tiny.ipynb", run, {}) is None
    (run / "result.json").write_text(json.dumps({"square": 1}))  # not a record, and not this digest
    assert reused_record("x=1", {"x": 1}, "tiny.ipynb", run, {}) is None
    # a sweep of an older genie (no marker): its results.json must list this very result as finished
    (run / MARKER).unlink()
    write_record(run / "result.json", RunRecord(producer="tiny", model="none", q_top1=91.0, torch_version="none"))
    result = json.loads((run / "result.json").read_text())
    assert reused_record("x=1", {"x": 1}, "tiny.ipynb", run, {"x=1": {"status": "ok", "parameters": {"x": 1},
                                                                       "result": result}})["status"] == "reused"
    assert reused_record("x=1", {"x": 1}, "tiny.ipynb", run, {"x=1": {"status": "failed", "parameters": {"x": 1},
                                                                       "result": result}}) is None


def test_collect_gives_mean_and_std_over_seeds(tmp_path, capsys):
    runs = sweep.plan(axes={"w_bits": [2, 4], "seed": [0, 1, 2]})
    top1 = {(2, 0): 60.0, (2, 1): 62.0, (2, 2): 64.0, (4, 0): 90.0, (4, 1): 91.0, (4, 2): 92.5}
    records = [{"run": name, "parameters": params, "status": "ok", "seconds": 1.0,
                "result": RunRecord(producer="tiny", model="none", w_bits=params["w_bits"], seed=params["seed"],
                                    q_top1=top1[params["w_bits"], params["seed"]], torch_version="none").to_dict()}
               for name, params in runs]
    (tmp_path / "sweep").mkdir()
    write_results(records, tmp_path / "sweep")
    assert sweep.main(["--collect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "sweep w_bits=2 over 3 seeds (0 1 2): q_top1=62.00 +- 2.00" in text
    assert "sweep w_bits=4 over 3 seeds (0 1 2): q_top1=91.17 +- 1.26" in text
    cells = json.loads((tmp_path / "summary_cells.json").read_text())
    assert [(c["param.w_bits"], c["seeds"]) for c in cells] == [(2, 3), (4, 3)]
    assert cells[1]["q_top1.mean"] == pytest.approx(91.1667, abs=1e-3)
    assert cells[1]["q_top1.std"] == pytest.approx(1.2583, abs=1e-3)  # sample standard deviation (n - 1)
    assert "q_top1.std" in (tmp_path / "summary_cells.csv").read_text().splitlines()[0]


def test_bad_scheduler_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert sweep.main([str(tiny), "--out", str(out), "--grid", "x=1", "--scheduler", "tcp://127.0.0.1:9",
                       "--connect-timeout", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genie sweep: error: --scheduler tcp://127.0.0.1:9: no Dask scheduler answers there")
    assert err.count("\n") == 1 and not out.exists()
    assert sweep.main([str(tiny), "--out", str(out), "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"]) == 2
    assert "--workers and --threads are for runs on this machine" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if Dask were not installed
    assert sweep.main([str(tiny), "--out", str(out), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'genie-zsq[cluster]'" in err and err.count("\n") == 1 and not out.exists()


# ---------------------------------------------------------------------------------------------
# a Dask cluster: a scheduler and two worker processes on the loopback address


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=None)
    client = distributed.Client(local)
    try:
        yield local, client
    finally:
        client.close()
        local.close()


def test_dask_sweep_matches_sequential(tiny, sequential, cluster, tmp_path, capsys):
    local, _ = cluster
    out = tmp_path / "out"
    assert sweep.main([str(tiny), "--out", str(out), *GRID, "--scheduler", local.scheduler_address]) == 0
    text = capsys.readouterr().out
    assert f"Dask scheduler {local.scheduler_address}: 2 workers, 2 threads" in text
    assert SUMMARY.format(4, 0, 4, 0, 0) in text
    _same_records(out, sequential)
    assert all(read_marker(out / f"x={x}")["worker"].startswith("Dask worker tcp://127.0.0.1:") for x in (1, 2, 3, 4))


def test_a_killed_dask_worker_loses_no_run(tiny, cluster, tmp_path, capsys):
    """SIGKILL to the worker executing x=1 once its notebook runs: the run is run again on a
    worker (attempt 2), every run is accounted for, and every result.json is a whole record."""
    local, client = cluster
    out, pids, killed = tmp_path / "out", client.run(os.getpid), []

    def kill_first_running():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            marker = read_marker(out / "x=1")
            if marker and marker["status"] == "running" and (out / "x=1" / "tiny.ipynb").exists():
                address = marker["worker"].split()[-1]
                os.kill(pids[address], signal.SIGKILL)
                killed.append(address)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_running, daemon=True)
    killer.start()
    status = sweep.main([str(tiny), "--out", str(out), "--grid", "x=1,2", "--set", "nap=1.5",
                         "--scheduler", local.scheduler_address])
    killer.join()
    text = capsys.readouterr().out
    assert killed and status == 0, text
    records = json.loads((out / "results.json").read_text())
    assert [(r["run"], r["status"], r.get("attempts", 1)) for r in records] == [("x=1", "ok", 2), ("x=2", "ok", 1)]
    assert SUMMARY.format(2, 0, 1, 1, 0) in text and "x=1: ok in" in text and "(attempt 2)" in text
    assert records[0]["result"]["q_top1"] == 91.0
    _no_partial_results(out)
