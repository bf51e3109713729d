"""Every save is atomic: a failure part-way (after the bytes are written, or at the rename into
place) leaves the previous file byte-identical, no temporary file behind, and an error naming
the file and the reason."""
import json
import os

import pytest
import torch

from genie.cli import main
from genie.distill import DistilledSet, load_distilled
from genie.distill.checkpoints import Checkpoints
from genie.files import WriteError, write_json
from genie.quant import quantize_model, reconstruct, save_quantized
from genie.sweep import write_results

from faults import QUICK_RUN, fail_saves, listing

FAILURES = ["write", "rename"]


def _distilled(seed: int) -> DistilledSet:
    g = torch.Generator().manual_seed(seed)
    return DistilledSet(torch.randn(4, 3, 8, 8, generator=g), {"model": None, "seed": seed},
                        torch.rand(3, 1, generator=g), torch.rand(1, 2, generator=g), ["bn1", "bn2"])


@pytest.mark.parametrize("where", FAILURES)
def test_distilled_set(tmp_path, monkeypatch, where):
    path = _distilled(0).save(tmp_path / "set.pt")
    before = path.read_bytes()
    fail_saves(monkeypatch, where)
    with pytest.raises(WriteError, match=rf"could not write the distilled set to {path}: No space left on device; "
                                         "the previous file is unchanged"):
        _distilled(1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_distilled(path).metadata["seed"] == 0
    assert listing(tmp_path) == ["set.pt"]


@pytest.mark.parametrize("where", FAILURES)
def test_distillation_checkpoint(tmp_path, monkeypatch, where):
    checkpoints = Checkpoints(str(tmp_path), {"run": 1})
    checkpoints.save(0, {"images": torch.zeros(2, 3, 4, 4)})
    before = checkpoints.path(0).read_bytes()
    fail_saves(monkeypatch, where)
    with pytest.raises(WriteError, match=r"could not write a distillation checkpoint to .*batch_00000\.pt: No space"):
        checkpoints.save(0, {"images": torch.ones(2, 3, 4, 4)})
    monkeypatch.undo()
    assert checkpoints.path(0).read_bytes() == before
    assert torch.equal(checkpoints.load(0)["images"], torch.zeros(2, 3, 4, 4))
    assert listing(tmp_path) == ["batch_00000.pt"]


@pytest.mark.parametrize("where", FAILURES)
def test_quantized_model(resnet20, calib64, tmp_path, monkeypatch, where):
    models = []
    for bits in (8, 4):
        qm = quantize_model(resnet20, calib64[:16], w_bits=bits, a_bits=bits)
        reconstruct(qm, calib64[:16], iters=0, progress=False)
        models.append(qm)
    path = save_quantized(models[0], tmp_path / "q.pt")
    before = path.read_bytes()
    fail_saves(monkeypatch, where)
    with pytest.raises(WriteError, match=r"could not write the quantized model to .*q\.pt: No space left on device"):
        save_quantized(models[1], path)
    monkeypatch.undo()
    assert path.read_bytes() == before and listing(tmp_path) == ["q.pt"]


@pytest.mark.parametrize("where", FAILURES)
def test_result_and_sweep_files(tmp_path, monkeypatch, where):
    result = write_json(tmp_path / "result.json", {"q_top1": 50.0})
    sweep_json, sweep_csv = write_results([{"run": "a", "status": "ok", "result": {"q_top1": 1.0}}], tmp_path)
    before = {p: p.read_bytes() for p in (result, sweep_json, sweep_csv)}
    fail_saves(monkeypatch, where)
    with pytest.raises(WriteError, match=r"could not write result file to .*result\.json: No space"):
        write_json(result, {"q_top1": 60.0}, "result file")
    with pytest.raises(WriteError, match=r"could not write the sweep results to .*results\.json: No space"):
        write_results([{"run": "b", "status": "failed"}], tmp_path)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in before} == before
    assert listing(tmp_path) == ["result.json", "results.csv", "results.json"]


def test_a_new_file_that_fails_leaves_nothing(tmp_path, monkeypatch):
    fail_saves(monkeypatch, "write")
    with pytest.raises(WriteError, match="nothing was written"):
        write_json(tmp_path / "new.json", {})
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_saved_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_run_prints_its_accuracies_before_a_failed_write(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = QUICK_RUN + ["--samples", "16", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    before = {name: (out / name).read_bytes() for name in ("result.json", "qmodel.pt")}
    real_replace = os.replace

    def replace(src, dst):  # the disk fills up when result.json is renamed into place
        if str(dst).endswith("result.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(argv + ["--w-bits", "8"]) == 2
    captured = capsys.readouterr()
    assert "quantized top-1 / top-5" in captured.out and "W8A4" in captured.out
    assert f"could not write result file to {out / 'result.json'}: No space left on device; the previous file " \
           "is unchanged" in captured.err
    assert (out / "result.json").read_bytes() == before["result.json"]
    assert json.loads((out / "result.json").read_text())["w_bits"] == 4
    # the failed run's reconstruction checkpoints stay: rerun once there is space, it reconstructs nothing again
    assert listing(out) == ["qmodel.pt", "recon_checkpoints", "result.json"]
