"""The benchmark script runs end to end (tiny settings); the real figures come from a GPU run."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_quick(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "pipeline", "--quick", "--device", "cpu",
           "--no-progress", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "pipeline-quick.json").read_text())
    assert result["meta"]["setting"] == "quick" and result["meta"]["device"].startswith("CPU")
    assert [r["bits"] for r in result["rows"]] == ["W4A4", "W2A4"]
    assert all(0 <= r["q_top1"] <= 100 and r["test_file"] == "cifar10_test_first100_lossless.npz" for r in result["rows"])
    assert "| bench | row |" in (tmp_path / "pipeline-quick.md").read_text()
