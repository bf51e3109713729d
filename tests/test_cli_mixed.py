"""Mixed precision on the command line: `run --w-bits mixed --budget-bits B` and `sensitivity`
write what they promise; every run records its weight memory; bad input exits 2 with one line
before any model is loaded and writes nothing."""
import json

import pytest

from genie.cli import main

FAST = ["--data", "real", "--samples", "16", "--recon-iters", "1", "--batch-size", "8", "--test-source",
        "lossless100", "--device", "cpu", "--no-progress", "--seed", "0"]


def test_a_mixed_run_records_its_bits_memory_and_sensitivity(tmp_path, capsys):
    out = tmp_path / "mixed"
    assert main(["run", "--w-bits", "mixed", "--budget-bits", "3", "--sensitivity", "fisher",
                 "--sensitivity-samples", "8", *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weight memory" in printed and "mixed W (budget 3 bits/weight" in printed
    record = json.loads((out / "result.json").read_text())
    extra = record["extra"]
    assert record["w_bits"] is None
    bits = extra["w_bits_per_layer"]
    assert bits["conv1"] == bits["linear"] == 8 and set(bits.values()) <= {2, 3, 4, 8}
    assert extra["budget_bits"] == 3 and extra["sensitivity"] == "fisher" and extra["sensitivity_samples"] == 8
    assert extra["weight_bytes"] <= extra["budget_weight_bytes"] and extra["sensitivity_seconds"] > 0
    table = json.loads((out / "sensitivity.json").read_text())
    assert table["method"] == "fisher" and table["bits"] == [2, 3, 4, 8] and len(table["layers"]) == 18
    # a uniform run records the same memory fields: any two runs compare at equal memory
    uniform = tmp_path / "w3"
    assert main(["run", "--w-bits", "3", *FAST, "--out", str(uniform)]) == 0
    u_extra = json.loads((uniform / "result.json").read_text())["extra"]
    assert u_extra["weight_bytes"] == extra["budget_weight_bytes"]  # budget 3 = the uniform W3 memory
    assert set(u_extra["w_bits_per_layer"].values()) == {3, 8} and "sensitivity" not in u_extra
    # the saved table drives a second run without measuring again: the same allocation
    again = tmp_path / "again"
    assert main(["run", "--w-bits", "mixed", "--budget-bits", "3", "--sensitivity-file", str(out / "sensitivity.json"),
                 *FAST, "--out", str(again)]) == 0
    assert json.loads((again / "result.json").read_text())["extra"]["w_bits_per_layer"] == bits


def test_sensitivity_writes_the_table_and_prints_an_allocation(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert main(["sensitivity", "--data", "real", "--samples", "8", "--sensitivity", "fisher",
                 "--w-candidates", "2,4", "--budget-bits", "2.5", "--device", "cpu", "--out", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fisher sensitivity of 18 layers x 2 bit widths on 8 images" in out and "budget 2.5" in out
    assert json.loads(path.read_text())["bits"] == [2, 4]


@pytest.mark.parametrize("argv,message", [
    (["run", "--w-bits", "mixed"], "--w-bits mixed needs --budget-bits"),
    (["run", "--w-bits", "4", "--budget-bits", "3"], "add --w-bits mixed"),
    (["run", "--w-bits", "mixed", "--budget-bits", "3", "--w-candidates", "1,3"], "from 2 to 8"),
    (["run", "--w-bits", "mixed", "--budget-bits", "3", "--w-candidates", "3,9"], "from 2 to 8"),
    (["run", "--w-bits", "mixed", "--budget-bits", "1.5"], "below the narrowest candidate"),
    (["run", "--w-bits", "mixed", "--budget-bits", "-1"], "positive number of bits"),
    (["run", "--w-bits", "mixed", "--budget-bits", "nan"], "positive number of bits"),
    (["run", "--w-bits", "mixed", "--budget-bits", "3", "--sensitivity-samples", "0"],
     "--sensitivity-samples must be positive"),
    (["run", "--w-bits", "mixed", "--budget-bits", "3", "--sensitivity-file", "missing.json"],
     "no sensitivity table at missing.json"),
    (["run", "--w-bits", "mixed", "--budget-bits", "3", "--export-onnx", "--onnx-int", "int4"],
     "candidates 2,3,4,8 needs --onnx-int qcdq"),
    (["sensitivity", "--w-candidates", "", "--out", "t.json"], "is empty"),
])
def test_bad_mixed_precision_input_exits_2_before_loading(argv, message, capsys, tmp_path, monkeypatch,
                                                          no_model_loading):
    monkeypatch.chdir(tmp_path)
    if "--out" not in argv:
        argv = argv + ["--out", str(tmp_path / "out")]
    assert main(argv + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genie: error: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_a_table_from_another_model_or_setting_is_refused(tmp_path, capsys, no_model_loading):
    from genie.quant.sensitivity import SensitivityTable

    def write(**change):
        fields = dict(layers=["a"], sources=["a"], params=[8], bits=[2, 3, 4, 8], scores=[[3, 2, 1, 0]], fixed={},
                      method="kl", setting="brecq", fold_bn=True, weight_symmetric=False, images=8, seconds=1.0,
                      model="resnet20_cifar10", fingerprint="0")
        path = tmp_path / "t.json"
        SensitivityTable(**{**fields, **change}).save(path)
        return path

    for change, message in [({"model": "resnet56_cifar10"}, "measured on resnet56_cifar10, not resnet20_cifar10"),
                            ({"setting": "all"}, "measured with setting all"),
                            ({"bits": [2, 4], "scores": [[1, 0]]}, "holds candidates 2,4")]:
        path = write(**change)
        argv = ["run", "--w-bits", "mixed", "--budget-bits", "3", "--sensitivity-file", str(path), "--device", "cpu"]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
