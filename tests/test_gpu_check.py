"""benchmarks/gpu_check.py --tiny on the CPU, as the GPU machine runs it: the system Python with
only torch, torchvision and numpy (tqdm, jupyter and plotly blocked), so the check cannot rot."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_GPU_IMAGE = ("tqdm", "tqdm.auto", "plotly", "ipywidgets", "papermill", "IPython", "nbformat")


def run_tiny_check(out: Path, setup: str = "") -> subprocess.CompletedProcess:
    """``gpu_check.py --tiny --out out`` in a fresh Python with the GPU image's missing packages
    blocked; ``setup``: lines run before it (with the checkout importable)."""
    code = (f"import sys, runpy\nfor m in {ABSENT_ON_THE_GPU_IMAGE!r}:\n    sys.modules[m] = None\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n{setup}"
            f"sys.argv = ['gpu_check.py', '--tiny', '--out', {str(out)!r}]\n"
            f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=out)


def test_gpu_check_tiny_runs_with_a_bare_python(tmp_path):
    done = run_tiny_check(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["setting"] == "tiny" and "CPU" in result["device_name"]
    for stage in ("distill", "recon"):
        assert result[stage]["eager"]["s_per_iter"] >= 0 and result[stage]["eager"]["projected_s"] > 0  # timing noise
        assert result[stage]["full"]["measured_s"] > 0  # tiny runs fit the budget: measured, not projected
    assert result["pipeline"]["q_top1"] > 50.0 and result["pipeline"]["test_file"].startswith("cifar10_test_first100")
    assert "skipped" in result["reference"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("## GPU check on CPU")


def test_a_failing_stage_leaves_the_others_figures(tmp_path):
    """On a GPU lent for minutes, one stage's exception is recorded and the check goes on: the
    later stages are measured, the files are written, and the exit status says it failed."""
    done = run_tiny_check(tmp_path, "import genie.distill\n"
                                    "def broken(*a, **k):\n    raise RuntimeError('simulated | failure')\n"
                                    "genie.distill.distill = broken\n")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "failed stages: distill" in done.stderr and "simulated" in done.stderr  # the traceback is shown
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["distill"] == {"failed": "RuntimeError: simulated | failure"}
    assert result["recon"]["full"]["measured_s"] > 0  # measured all the same
    assert "skipped" in result["pipeline"] and "seconds" in result
    assert "simulated \\| failure" in (tmp_path / "gpu_check.md").read_text()


def test_graph_replay_agreement_allows_the_spread_of_two_eager_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench import within_noise

    assert within_noise(0.005, 0.0, tolerance=1e-2)  # inside the fixed tolerance
    assert not within_noise(0.05, 0.001, tolerance=1e-2)  # outside both
    assert within_noise(0.05, 0.02, tolerance=1e-2)  # eager itself spreads that far: within 3x of it
    assert not within_noise(0.07, 0.02, tolerance=1e-2)
