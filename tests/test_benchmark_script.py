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


def test_paired_top1_script(tmp_path, resnet20, calib64):
    """Two saved runs compared image by image: the counts agree with each model's own top-1 (and,
    against the FP32 model's classes, with each one's agreement with it), and a run compared with
    itself differs nowhere (p = 1)."""
    from genie.data import cifar10_test, evaluate, predict_classes
    from genie.models import model_spec
    from genie.quant import quantize_model, save_quantized

    spec = model_spec("resnet20_cifar10")
    test = cifar10_test(spec.mean, spec.std)
    first = (test.images[:500], test.labels[:500])
    fp_classes = predict_classes(resnet20, first[0])
    runs, agreement = [], []
    for name, bits in (("w4", 4), ("w2", 2)):
        run = tmp_path / name
        run.mkdir()
        qm = quantize_model(resnet20, calib64, w_bits=bits, a_bits=4)
        qm.finalize()  # round to nearest
        save_quantized(qm, run / "qmodel.pt")
        top1 = evaluate(qm, first, progress=False)["top1"]
        agreement.append(evaluate(qm, (first[0], fp_classes), progress=False)["top1"])
        (run / "result.json").write_text(json.dumps({"model": "resnet20_cifar10", "test_file": "cifar10_test.npz",
                                                     "q_top1": top1}))
        runs.append((str(run), top1))
    (a, top1_a), (b, top1_b) = runs
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "paired_top1.py"), a, b, a, a, "--images", "500",
           "--threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cross, same = json.loads((out / "paired_top1.json").read_text())
    assert abs(cross["top1_a"] - top1_a) < 1e-9 and abs(cross["top1_b"] - top1_b) < 1e-9
    assert cross["predictions_differ"] > 0
    assert abs((cross["only_a_right"] - cross["only_b_right"]) / 5 - (top1_a - top1_b)) < 1e-9
    assert same["predictions_differ"] == 0 and same["p_value"] == 1.0
    vs_fp, same_fp = cross["vs_fp32"], same["vs_fp32"]
    assert abs(vs_fp["agree_a"] - agreement[0]) < 1e-9 and abs(vs_fp["agree_b"] - agreement[1]) < 1e-9
    assert abs((vs_fp["only_a_agrees"] - vs_fp["only_b_agrees"]) / 5 - (agreement[0] - agreement[1])) < 1e-9
    assert vs_fp["logit_mse_b"] > vs_fp["logit_mse_a"] > 0 and vs_fp["kl_b"] > vs_fp["kl_a"] > 0  # W2 further off than W4
    assert same_fp["only_a_agrees"] == same_fp["only_b_agrees"] == 0 and same_fp["p_value"] == 1.0
    assert same_fp["logit_mse_a"] == same_fp["logit_mse_b"]
    assert "| w4 | w2 |" in (out / "paired_top1.md").read_text()
