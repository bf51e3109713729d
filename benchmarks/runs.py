"""What the benchmark scripts share: ``python -m genie run`` launched in its own process (one
thread each, several at a time, a finished run not run again) and Markdown tables."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def genie_run(folder: Path, options: list, log: Path) -> None:
    """``python -m genie run --device cpu --no-progress --out FOLDER OPTIONS`` with one thread,
    its output in ``log``; nothing when ``FOLDER/result.json`` exists."""
    if (folder / "result.json").exists():
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "genie", "run", "--device", "cpu", "--no-progress", "--out", str(folder), *options]
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def genie_runs(todo: list, jobs: int) -> None:
    """:func:`genie_run` for each ``(folder, options, log)`` of ``todo``, ``jobs`` at a time."""
    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(genie_run, *t) for t in todo]:
            f.result()


def markdown_table(name: str, rows: list) -> str:
    """``rows`` (dicts with the same keys) as a Markdown table under ``### name``."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
