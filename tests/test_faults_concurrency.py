"""Two runs into one output folder: the second stops at once (exit 2) instead of silently
replacing the first one's results; a killed run leaves no stale lock."""
import subprocess
import sys
from pathlib import Path

import pytest

from genie.errors import GenieError
from genie.files import folder_lock
from genie.sweep import sweep

from faults import QUICK_RUN, cli_error

HOLD = "import sys, time; from genie.files import folder_lock\n" \
       "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)"


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys, no_model_loading):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = cli_error(QUICK_RUN + ["--samples", "16", "--out", str(out)], capsys)
        assert f"--out {out}: another genie run is writing into this folder" in err
    finally:
        holder.kill()  # as SIGKILL would: the system releases the lock
        holder.wait()
    with folder_lock(out):  # no stale lock after the kill
        pass


def test_the_lock_is_per_folder_and_released(tmp_path):
    with folder_lock(tmp_path / "a"):
        with pytest.raises(GenieError, match="another genie run"):
            with folder_lock(tmp_path / "a"):
                pass
        with folder_lock(tmp_path / "b"):
            pass
    with folder_lock(tmp_path / "a"):
        pass
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []


def test_a_sweep_into_a_busy_folder_is_refused(tmp_path):
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.ipynb"
    with folder_lock(tmp_path / "out"):
        with pytest.raises(GenieError, match="another genie run is writing into this folder"):
            sweep(notebook, [("a", {})], tmp_path / "out")
