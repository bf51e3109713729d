"""Executing a sweep's runs: one run (:func:`execute_run`, the task), several at once on this
machine (:func:`run_local`) or as tasks of a Dask cluster (:func:`run_dask`), and the sweep
around them (:func:`execute_sweep`: reuse finished runs, run the rest, record every one).

**A run** is one papermill execution of the notebook, whose kernel (a process of its own) starts
with the run's environment added to its caller's: ``GENIE_LIVE=0``, and on a parallel local
sweep its GPU in ``CUDA_VISIBLE_DEVICES`` and its thread count in ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` (a kernel manager that passes ``env`` to ``start_kernel``). A kernel ends
itself when the process that started it dies (ipykernel watches its parent), so a run never
outlives its worker and never writes into a folder that a retry of it is using.

**Local runs** (``--workers N``): a ``concurrent.futures.ThreadPoolExecutor`` of N threads,
each driving one papermill call at a time. Threads suffice because the work happens in the
kernels; they keep the notebook's one copy of papermill's imports (a process per run would pay
them again, seconds each), they need no extra package (a Dask ``LocalCluster`` would make the
``cluster`` extra a requirement of every parallel sweep and start a scheduler and worker
processes for nothing), and a dead kernel is one failed attempt of one run (a killed
``ProcessPoolExecutor`` worker breaks the pool and every pending run with it). ``auto``: one
worker per visible GPU, each pinned to its GPU; on a CPU-only machine one per core (at most one
per run), the cores shared out as threads.

**Cluster runs** (``--scheduler ADDRESS``): every run is a task of ``dask.distributed``
(:func:`execute_run`, submitted by reference, so workers need genie installed); the workers run
them in their own environment and write into the sweep's ``--out`` folder, which must be shared.

**Retries.** A run whose kernel dies (killed, out of memory) or whose Dask worker dies mid-run
is run again up to ``retries`` times (default once), then recorded as failed; a notebook that
raises an error fails at once (it would fail again). The attempts are counted in the run's
marker (:mod:`genie.sweep_state`), so they are counted across Dask workers too.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import suppress
from pathlib import Path
from typing import Callable, Optional

from .errors import GenieError

RESULT_FILE = "result.json"
_KERNELS: set = set()  # process ids of the runs' kernels alive now
_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# one run


def _kernel_manager(env: dict, pids: list):
    """A jupyter kernel manager class whose kernels start with ``env`` added to this process's
    environment (``start_kernel``'s ``env``, passed on to ``Popen``); their process ids go to
    ``pids`` and :data:`_KERNELS` (ended at an interrupt)."""
    from jupyter_client import AsyncKernelManager

    class RunKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            kw.setdefault("env", {**os.environ, **env})
            started = await super().start_kernel(**kw)
            pid = getattr(self.provisioner, "pid", None)
            if pid is not None:
                pids.append(pid)
                with _LOCK:
                    _KERNELS.add(pid)
            return started

    return RunKernelManager


def _attempt(spec: dict, env: dict) -> dict:
    """One attempt of the run with papermill: ``{status, error, died}`` (``died``: its kernel died)."""
    import papermill as pm

    run_dir, notebook = Path(spec["run_dir"]), Path(spec["notebook"])
    for stale in [run_dir / RESULT_FILE, *run_dir.glob(f".{RESULT_FILE}.*.tmp")]:
        stale.unlink(missing_ok=True)
    pids = []
    try:
        pm.execute_notebook(str(notebook), str(run_dir / notebook.name),
                            parameters={**spec["parameters"], "out_dir": str(run_dir)}, kernel_name=spec["kernel"],
                            cwd=spec["cwd"], progress_bar=False, log_output=False, execution_timeout=spec["timeout"],
                            kernel_manager_class=_kernel_manager(env, pids))
        return {"status": "ok"}
    except pm.PapermillExecutionError as exc:
        return {"status": "failed", "error": f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"}
    except Exception as exc:  # the kernel died, a timeout, ...
        died = type(exc).__name__ == "DeadKernelError"
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "died": died}
    finally:
        with _LOCK:
            _KERNELS.difference_update(pids)


def _dask_worker() -> Optional[str]:
    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return None


def execute_run(spec: dict, env: Optional[dict] = None, worker: Optional[str] = None,
                stop: Optional[threading.Event] = None) -> dict:
    """Run one notebook of a sweep (``spec``: what :func:`execute_sweep` builds) and return its
    record; ``env``: environment of this worker's runs (GPU, threads); ``stop`` set: no retry
    (the sweep was interrupted). The task a Dask worker runs. A run this sweep finished already
    is not run again (its record is returned)."""
    from .sweep_state import canonical, finish, finished_in_this_sweep, previous_attempts, read_marker, write_marker

    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    worker = worker or _dask_worker() or socket.gethostname()
    marker = read_marker(run_dir)
    earlier = finished_in_this_sweep(marker, spec["token"])
    if earlier is not None:
        return earlier
    attempt, limit = previous_attempts(marker, spec["token"]) + 1, 1 + spec["retries"]
    while attempt <= limit:
        write_marker(run_dir, {"sweep": spec["token"], "run": spec["run"], "status": "running", "attempt": attempt,
                               "worker": worker, "notebook": Path(spec["notebook"]).name,
                               "parameters": canonical(spec["parameters"])})
        t0 = time.perf_counter()
        outcome = _attempt(spec, {**spec["env"], **(env or {})})
        if outcome.get("died") and attempt < limit and not (stop is not None and stop.is_set()):
            attempt += 1
            continue
        return finish(spec, outcome, attempt, round(time.perf_counter() - t0, 2), worker)
    return finish(spec, {"status": "failed", "error": f"its worker died in {limit} attempts (--retries "
                                                      f"{spec['retries']}); not run again"}, limit, None, worker)


def _end_kernels() -> None:
    """Kill the kernels of the runs in progress (an interrupt: their papermill calls then return)."""
    with _LOCK:
        for pid in list(_KERNELS):
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# local runs


def visible_gpus() -> list:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (its entries up to
    the first invalid one, when it is set; else torch's device count)."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        gpus = []
        for item in (i.strip() for i in text.split(",")):
            if not item or item.startswith("-"):
                break
            gpus.append(item)
        return gpus
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_slots(workers, threads: Optional[int], runs: int) -> list:
    """``[(name, env)]``, one per local worker: ``workers`` (an int, or ``"auto"``: one per
    visible GPU, else one per core; at most one per run), each pinned to a GPU (round robin)
    when there are GPUs, each run with ``threads`` threads (default: the cores shared out).
    One worker without ``threads`` leaves the environment as it is (a sequential sweep)."""
    if workers == 1 and threads is None:
        return [("this machine", {})]
    gpus, cores = visible_gpus(), available_cores()
    count = max(1, min(len(gpus) or cores if workers == "auto" else workers, runs))
    if count == 1 and threads is None:
        return [("this machine", {})]
    per = str(threads or max(1, cores // count))
    slots = []
    for i in range(count):
        env, name = {"OMP_NUM_THREADS": per, "MKL_NUM_THREADS": per}, f"local {i + 1}"
        if gpus and (count > 1 or workers == "auto"):
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            name += f" (GPU {gpus[i % len(gpus)]})"
        slots.append((name, env))
    return slots


def run_local(specs: list, slots: list, fail_fast: bool, on_start: Callable, on_done: Callable) -> None:
    """Run ``specs`` on ``slots`` (:func:`local_slots`), one run per slot at a time, each in a
    thread of its own; ``on_start(run, slot name)`` and ``on_done(record)`` are called from this
    thread, in the order the runs started and ended. An interrupt kills the runs' kernels."""
    free, news, stop = queue.Queue(), queue.Queue(), threading.Event()
    for slot in slots:
        free.put(slot)

    def task(spec):
        if stop.is_set():  # --fail-fast: a run failed, start no other
            return
        name, env = free.get()
        try:
            news.put((on_start, spec["run"], name))
            record = execute_run(spec, env, name, stop)
        finally:
            free.put((name, env))
        if fail_fast and record["status"] != "ok":
            stop.set()
        news.put((on_done, record))

    with ThreadPoolExecutor(len(slots), thread_name_prefix="genie-sweep") as pool:
        pending = {pool.submit(task, spec) for spec in specs}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not news.empty():
                    call, *args = news.get()
                    call(*args)
                for future in done:
                    future.result()  # a task's own error (a marker that cannot be written) stops the sweep
        except BaseException:
            stop.set()
            _end_kernels()
            raise


# ---------------------------------------------------------------------------------------------
# a Dask cluster


def connect(address: str, timeout: float):
    """A ``distributed.Client`` of the scheduler at ``address``; a one-line :class:`GenieError`
    when Dask is not installed or no scheduler answers there within ``timeout`` seconds."""
    try:
        from distributed import Client
    except ImportError:
        raise GenieError("--scheduler needs Dask's distributed scheduler, which is not installed: "
                         "pip install 'genie-zsq[cluster]' (from a checkout: pip install -e '.[cluster]')") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GenieError(f"--scheduler {address}: no Dask scheduler answers there ({' '.join(str(exc).split())}); "
                         "start one with `dask scheduler` and give the tcp://HOST:PORT it prints") from None


def run_dask(specs: list, client, fail_fast: bool, on_done: Callable, log: Callable) -> None:
    """Submit every run of ``specs`` to the Dask scheduler of ``client`` (:func:`connect`; with
    ``fail_fast``, as many at a time as the workers have threads, none after a failure);
    ``on_done(record)`` per run, from this thread. A run the cluster loses (its task errs, e.g.
    ``KilledWorker``) is recorded as failed."""
    from distributed import as_completed

    from .sweep_state import lost_record

    futures, todo = {}, list(specs)
    threads = client.nthreads()
    log(f"Dask scheduler {client.scheduler.address}: {len(threads)} workers, {sum(threads.values())} threads"
        + ("; the runs wait for workers to join" if not threads else ""))
    running = as_completed()

    def submit():
        spec = todo.pop(0)
        future = client.submit(execute_run, spec, key=f"genie-sweep-{spec['run']}-{spec['token']}", pure=False)
        futures[future.key] = (future, spec)
        running.add(future)

    try:
        for _ in range(min(max(1, sum(threads.values())) if fail_fast else len(todo), len(todo))):
            submit()
        stop = False
        for future in running:
            spec = futures[future.key][1]
            try:
                record = future.result()
            except Exception as exc:  # KilledWorker, a lost connection, ...: the run is accounted for
                record = lost_record(spec, exc)
            on_done(record)
            stop = stop or (fail_fast and record["status"] != "ok")
            if todo and not stop:
                submit()
    except BaseException:
        client.cancel([f for f, _ in futures.values()])
        raise


# ---------------------------------------------------------------------------------------------
# the sweep


def execute_sweep(notebook: Path, runs: list, out: Path, settings: dict, log: Optional[Callable] = print,
                  callback: Optional[Callable] = None, on_record: Optional[Callable] = None) -> list:
    """Every run of ``runs`` (``[(name, parameters)]``, checked) into ``out`` (locked by the
    caller): runs with a valid earlier result are reused (unless ``settings["rerun"]``), the
    others executed locally or on the cluster of ``settings["client"]`` (:func:`connect`);
    results.json / results.csv rewritten as each run ends, in the order of ``runs``. Events
    (:mod:`genie.events`: ``SweepRunStart``, ``SweepRunEnd``, ``SweepEnd``) go to
    ``callback``, their lines to ``log``, each record to ``on_record``. Returns the records of
    the runs accounted for, in the order of ``runs``."""
    from .events import SweepEnd, SweepRunStart
    from .sweep_results import write_results
    from .sweep_state import counts, earlier_results, event_line, reused_record, run_end

    t0, total = time.perf_counter(), len(runs)
    token = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    records = {}

    def send(event):
        line = event_line(event)
        if log is not None and line is not None:
            log(line)
        if callback is not None:
            callback(event)

    def account(record: dict, write: bool = True):
        records[record["run"]] = record
        if write:
            write_results([records[n] for n, _ in runs if n in records], out)
        send(run_end(record, len(records), total))
        if on_record is not None:
            on_record(record)

    earlier, specs = earlier_results(out), []
    for name, params in runs:
        run_dir = out / name
        reused = None if settings["rerun"] else reused_record(name, params, notebook.name, run_dir, earlier)
        if reused is not None:
            account(reused, write=False)
            continue
        specs.append({"run": name, "parameters": params, "notebook": str(notebook.resolve()),
                      "run_dir": str(run_dir.resolve()), "record_notebook": str(run_dir / notebook.name),
                      "kernel": settings["kernel"], "cwd": settings["cwd"], "timeout": settings["timeout"],
                      "env": settings["env"], "token": token, "retries": settings["retries"]})
    if records:
        write_results([records[n] for n, _ in runs if n in records], out)
    if not specs:
        if log is not None:
            log(f"nothing to run: all {total} runs have a valid result from an earlier sweep in {out} "
                "(delete a run's result.json, or give --rerun, to run it again)")
    elif settings["client"] is not None:
        run_dask(specs, settings["client"], settings["fail_fast"], account, log or (lambda line: None))
    else:
        slots = local_slots(settings["workers"], settings["threads"], len(specs))
        if len(slots) > 1 and log is not None:
            threads = slots[0][1]["OMP_NUM_THREADS"]
            each = f"{threads} thread{'' if threads == '1' else 's'} each"
            log(f"{len(specs)} runs on {len(slots)} local workers, {each}")
        run_local(specs, slots, settings["fail_fast"], lambda run, where: send(SweepRunStart(run, where)), account)
    ordered = [records[n] for n, _ in runs if n in records]
    write_results(ordered, out)
    send(SweepEnd(total=total, seconds=round(time.perf_counter() - t0, 2), **counts(ordered)))
    return ordered

