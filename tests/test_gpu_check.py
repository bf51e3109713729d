"""benchmarks/gpu_check.py --tiny on the CPU, as the GPU machine runs it: the system Python with
only torch, torchvision and numpy (tqdm, jupyter and plotly blocked), so the check cannot rot."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_GPU_IMAGE = ("tqdm", "tqdm.auto", "plotly", "ipywidgets", "papermill", "IPython", "nbformat")


def test_gpu_check_tiny_runs_with_a_bare_python(tmp_path):
    code = (f"import sys, runpy\nfor m in {ABSENT_ON_THE_GPU_IMAGE!r}:\n    sys.modules[m] = None\n"
            f"sys.argv = ['gpu_check.py', '--tiny', '--out', {str(tmp_path)!r}]\n"
            f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["setting"] == "tiny" and "CPU" in result["device_name"]
    for stage in ("distill", "recon"):
        assert result[stage]["eager"]["s_per_iter"] >= 0 and result[stage]["eager"]["projected_s"] > 0  # timing noise
        assert result[stage]["full"]["measured_s"] > 0  # tiny runs fit the budget: measured, not projected
    assert result["pipeline"]["q_top1"] > 50.0 and result["pipeline"]["test_file"].startswith("cifar10_test_first100")
    assert "skipped" in result["reference"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("## GPU check on CPU")
