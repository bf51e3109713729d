"""Resumable reconstruction (bar 1 of issue 26): a run killed (SIGKILL) in the middle of a unit,
twice, and rerun with the same command ends with the model and top-1 of an uninterrupted run; a
checkpoint made under other settings or images is refused; the API resumes the same way and its
monitors see where it restarts."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie.cli import main
from genie.errors import GenieError
from genie.events import UnitEnd, UnitRestored, UnitStart
from genie.quant import quantize_model, reconstruct
from genie.quant.recon_checkpoints import ReconCheckpoints

# ResNet-20 (11 units), 16 real images, 6 iterations per unit, 100 lossless test images
RUN = ["run", "--model", "resnet20_cifar10", "--w-bits", "3", "--a-bits", "4", "--samples", "16",
       "--batch-size", "8", "--recon-iters", "6", "--seed", "0", "--device", "cpu",
       "--test-source", "lossless100", "--no-progress"]

# the command line, except that the third training step of unit STALL_UNIT announces itself and
# waits to be killed: a kill in the middle of a unit, at a known unit
STALLING_CLI = """
import os, sys, time
import torch
from genie.cli import main
from genie.quant import unit_trainer

stall_unit, steps = int(os.environ["STALL_UNIT"]), {}
torch.set_num_threads(int(os.environ["THREADS"]))  # the test's: the same arithmetic as its own runs
init, step = unit_trainer.UnitTrainer.__init__, unit_trainer.UnitTrainer.step

def counted_init(self, unit, run):
    init(self, unit, run)
    self.test_unit = unit.index

def stalling_step(self):
    step(self)
    done = steps[self.test_unit] = steps.get(self.test_unit, 0) + 1
    if self.test_unit == stall_unit and done == 3:
        print("stalled", flush=True)
        time.sleep(600)

unit_trainer.UnitTrainer.__init__, unit_trainer.UnitTrainer.step = counted_init, stalling_step
sys.exit(main(sys.argv[1:]))
"""


def _killed_in_unit(unit: int, argv: list) -> None:
    env = {**os.environ, "STALL_UNIT": str(unit), "THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", STALLING_CLI, *argv], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line == "stalled", f"the run ended before unit {unit} (exit {proc.wait()})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _tensors(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def test_a_run_killed_twice_resumes_to_the_uninterrupted_model(tmp_path, capsys):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(RUN + ["--out", str(whole), "--keep-checkpoints"]) == 0
    assert len(list((whole / "recon_checkpoints").iterdir())) == 11
    checkpoints = resumed / "recon_checkpoints"
    _killed_in_unit(3, RUN + ["--out", str(resumed)])
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"unit_00{k}.pt" for k in range(3)]
    assert not (resumed / "qmodel.pt").exists()

    # other settings: refused in one line, naming the difference; nothing changes
    def files():  # (the lock a killed run leaves is released by the system, then removed by the next run)
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in resumed.rglob("*")
                if p.is_file() and p.name != ".genie.lock"}

    before = files()
    capsys.readouterr()
    assert main([a if a != "6" else "7" for a in RUN] + ["--out", str(resumed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "unit_000.pt was written by a reconstruction with other reconstruction settings (iters 6 -> 7)" in err
    assert f"delete {checkpoints}" in err
    assert files() == before
    _killed_in_unit(7, RUN + ["--out", str(resumed)])  # resumes at unit 3, killed again in unit 7
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"unit_00{k}.pt" for k in range(7)]
    assert main(RUN + ["--out", str(resumed)]) == 0

    a, b = _tensors(whole / "qmodel.pt"), _tensors(resumed / "qmodel.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (whole, resumed))
    assert (ra["q_top1"], ra["extra"]["q_agree_fp32"]) == (rb["q_top1"], rb["extra"]["q_agree_fp32"])
    assert [u["final_error"] for u in ra["extra"]["units"]] == [u["final_error"] for u in rb["extra"]["units"]]
    assert not checkpoints.exists()  # removed after the successful run


def _build(resnet20, images):
    qm = quantize_model(resnet20, images, w_bits=3, a_bits=4)
    qm.unit_names = qm.unit_names[:4]
    return qm


class _Stop(Exception):
    pass


def test_the_api_resumes_and_tells_the_monitors(resnet20, calib64, tmp_path):
    images = calib64[:16]
    whole = _build(resnet20, images)
    reconstruct(whole, images, iters=4, batch_size=8, progress=False)

    def stop_at_unit_2(event):
        if isinstance(event, UnitStart) and event.index == 2:
            raise _Stop

    folder = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        reconstruct(_build(resnet20, images), images, iters=4, batch_size=8, progress=False,
                    checkpoint_dir=folder, callback=stop_at_unit_2)
    events = []
    resumed = _build(resnet20, images)
    report = reconstruct(resumed, images, iters=4, batch_size=8, progress=False, checkpoint_dir=folder,
                         callback=events.append)
    restored = [e for e in events if isinstance(e, UnitRestored)]
    assert [e.index for e in restored] == [0, 1] and all(e.total == 4 for e in restored)
    assert [e.index for e in events if isinstance(e, UnitStart)] == [2, 3]
    assert isinstance(restored[0], UnitEnd) and len(restored[0].losses) == 4
    assert [u.name for u in report.units] == whole.unit_names
    a, b = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert not folder.exists()  # removed once reconstruction ended


def test_a_checkpoint_of_other_images_names_them(resnet20, calib64, tmp_path):
    images = calib64[:8]
    folder = tmp_path / "ckpt"
    reconstruct(_build(resnet20, images), images, iters=2, batch_size=8, progress=False, checkpoint_dir=folder,
                keep_checkpoints=True)
    other = calib64[8:16]
    with pytest.raises(GenieError, match=r"with other calibration images \(\w+ -> \w+\): delete .*ckpt"):
        reconstruct(_build(resnet20, other), other, iters=2, batch_size=8, progress=False, checkpoint_dir=folder)
    (folder / "unit_000.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GenieError, match="unit_000.pt"):
        ReconCheckpoints(folder, {}).finished()
