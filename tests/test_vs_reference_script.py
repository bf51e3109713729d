"""benchmarks/vs_reference.py --tiny: the side-by-side benchmark runs end to end (genie alone when
the authors' code is absent) and writes its JSON and Markdown, so it cannot rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_vs_reference_tiny_without_the_reference(tmp_path):
    # kernels held below any x86-64 CPU's best (ATen's scalar path, oneDNN's SSE4.1): the table
    # must name the kernels its runs used, not the CPU's best
    env = {**os.environ, "OFFICIAL_DIR": "", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_reference.py"), "--tiny", "--threads", "1",
                           "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reference skipped" in done.stdout
    result = json.loads((tmp_path / "vs_reference.json").read_text())
    assert result["setting"] == "tiny" and result["threads"] == 1
    for stage in ("distill16", "recon"):
        assert result[stage]["reference"].startswith("skipped")
        assert result[stage]["genie"]["s_per_iter"] >= 0 and "ratio" not in result[stage]
    assert result["recon"]["genie"]["fixed_s"] > 0
    assert [row["images"] for row in result["scaling"]["distill"]] == [8, 16]
    assert len(result["scaling"]["recon_resnet20"]["units"]) == 11
    assert len(result["scaling"]["recon_resnet56"]["units"]) == 29
    md = (tmp_path / "vs_reference.md").read_text()
    assert md.startswith("## genie vs the authors' code on CPU") and "1 threads each" in md and "| recon |" in md
    assert result["kernels"] == {"aten": "DEFAULT", "onednn_max_isa": "SSE41"}
    assert "ATen DEFAULT, oneDNN up to SSE41" in md


def test_vs_reference_refuses_unknown_stages(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_reference.py"), "--stages", "distil",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown stage(s) distil" in done.stderr
