"""``pytest --nbval-lax`` (what CI runs on notebooks/) really fails when a check inside a notebook
fails: an ``assert`` that does not hold, or a ``# NBVAL_CHECK_OUTPUT`` cell whose output changed.
A notebook with the same checks holding passes in the same run, so the failures come from the
checks. (The notebooks call a light genie function so that the run stays fast.)"""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("nbval")
nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_notebook, new_output  # noqa: E402

SETUP = "from genie.sweep import parse_value\nvalue = parse_value('[4, 4]')"
CHECKED = "# NBVAL_CHECK_OUTPUT\nprint('bits', value)"


def _notebook(path, cells):
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = cells
    nbformat.write(nb, path)


def _checked(count, text):
    return new_code_cell(CHECKED, execution_count=count, outputs=[new_output("stream", name="stdout", text=text)])


def test_nbval_lax_fails_on_a_failing_assert_and_a_changed_checked_output(tmp_path):
    _notebook(tmp_path / "checks_hold.ipynb", [
        new_code_cell(SETUP),
        new_code_cell("assert value == [4, 4], 'parse_value must read a list'"),
        _checked(3, "bits [4, 4]\n"),
    ])
    _notebook(tmp_path / "assert_fails.ipynb", [
        new_code_cell(SETUP),
        new_code_cell("assert value == [2, 4], 'deliberately wrong expectation'"),
    ])
    _notebook(tmp_path / "output_changed.ipynb", [
        new_code_cell(SETUP),
        _checked(2, "bits [2, 4]\n"),
    ])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "--nbval-lax", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), cwd=tmp_path, timeout=300,
    )
    out = run.stdout
    assert run.returncode == 1, out[-3000:] + run.stderr[-2000:]
    assert re.search(r"\b2 failed, 5 passed\b", out), out[-3000:]
    failed = set(re.findall(r"^FAILED (\S+\.ipynb::Cell \d+)", out, re.M))
    assert failed == {"assert_fails.ipynb::Cell 1", "output_changed.ipynb::Cell 1"}, out[-3000:]
    assert "deliberately wrong expectation" in out
    assert "bits [2, 4]" in out and "bits [4, 4]" in out  # the output comparison shows both
